"""`bnlab reproduce` as a function: options -> `run_reproduce(options, out)` -> `ReproduceResult.write(out)`.

The stages a selection of findings needs are run in dependency order, `jobs` at a time (worker processes
with a fixed share of the CPU threads each; one process on a GPU), reusing every stage already finished in
OUT (`bnlab.reproduce.cache`). Each stage start and end is one line with the overall progress and an
estimate of the time left (the plan's cost estimates, rescaled by how long the finished stages took here).
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import scipy
import torch

from .. import validate as check
from ..data import cifar
from ..device import resolve_device
from ..errors import BnlabError
from ..findings.record import VERDICTS, FindingRecord
from ..findings.registry import BY_ID, FINDING_STAGES, IDS, in_group
from ..io.folder import result_folder
from ..io.jsonfile import read_json, write_json
from ..models import MAX_WIDTH
from ..rundir import claim_out_dir, output_path
from ..runtime import worker_pool
from ..version import __version__
from .cache import STAGE_FILE, STAGE_FORMAT, data_fingerprint, finished, stage_dir, stage_keys
from .kinds import kind
from .plan import SCALES, SETTINGS, Stage, build_plan, eigenpair_budget, needed_stages, with_deps
from .report import hms as _hms
from .report import write_report
from .stages import OUT, run_stage

MANIFEST = "reproduce.json"
MANIFEST_FORMAT = "bnlab-reproduce"
MANIFEST_VERSION = 1
REPORT_FORMAT = "bnlab-reproduce-report"
TARGET_GROUPS = ("all", "weight-decay", "batch-norm")


def resolve_targets(targets: tuple[str, ...]) -> tuple[str, ...]:
    """Finding ids (in report order) of `all`, a post's group, or ids (case-insensitive)."""
    if not targets:
        targets = ("all",)
    lower = {i.lower(): i for i in IDS}
    chosen: set[str] = set()
    for t in targets:
        t = t.strip()
        if t.lower() == "all":
            chosen.update(IDS)
        elif t.lower() in ("weight-decay", "batch-norm"):
            chosen.update(in_group(t.lower()))
        elif t.lower() in lower:
            chosen.add(lower[t.lower()])
        else:
            raise BnlabError(f"unknown finding or group {t!r}; choose all, weight-decay, batch-norm or ids "
                             f"{', '.join(IDS)}")
    return tuple(i for i in IDS if i in chosen)


@dataclass(frozen=True)
class ReproduceOptions:
    targets: tuple[str, ...] = ("all",)
    scale: str = "cpu"
    data_dir: str | None = None  # CIFAR-10 folder/tarball; None: as training finds it ($BNLAB_DATA, download)
    device: str = "auto"
    jobs: int | None = None  # None: 1 on CUDA, else the CPU cores / threads
    figures: bool = True
    # Torch threads of every stage, whatever `jobs` is: CPU kernels reduce in an order that depends on
    # the thread count, so a fixed count (part of every stage key) makes a stage's result independent of -j.
    threads: int = 1
    # The batch-norm post's simple nets at this width instead of the scale's (None: the scale's); the width
    # trend (`bnlab.reproduce.trend`) runs one reproduction per width. Part of the settings, so of the keys.
    simple_width: int | None = None

    def validate(self) -> None:
        check.choice("--scale", self.scale, SCALES)
        resolve_targets(self.targets)
        if self.simple_width is not None:
            check.integer("simple_width", self.simple_width, 1, MAX_WIDTH)
        if self.jobs is not None:
            check.integer("--jobs", self.jobs, 1, check.MAX_WORKERS)
        check.integer("--threads", self.threads, 1, check.MAX_WORKERS)
        if self.data_dir is not None and self.scale != "smoke":
            cifar.locate(self.data_dir)  # a named folder or tarball is checked, never downloaded

    @property
    def findings(self) -> tuple[str, ...]:
        return resolve_targets(self.targets)

    def overrides(self) -> dict[str, Any]:
        """The scale's settings this reproduction replaces ("group.field": value); empty when none."""
        return {} if self.simple_width is None else {"bn_post.width": self.simple_width}

    def settings(self) -> dict[str, Any]:
        """The scale's settings (`SETTINGS[scale]`) with the overrides in place (a copy; SETTINGS is untouched)."""
        s = dict(SETTINGS[self.scale])
        for path, value in self.overrides().items():
            group, name = path.split(".")
            s[group] = {**s[group], name: value}
        return s


@dataclass
class StageOutcome:
    name: str
    kind: str
    key: str
    folder: str  # relative to the reproduction folder
    status: str  # cached | ran | failed | skipped (an input failed)
    settings: dict[str, Any]
    deps: dict[str, str]
    wall_time: float | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    estimate: float = 0.0


@dataclass
class ReproduceResult:
    record: dict[str, Any]  # what report.json holds
    findings: list[FindingRecord]
    draw_figures: bool = True
    started: float | None = None  # time.perf_counter() when the invocation began: the report's "took" ends
    # after the figures are drawn, and the closing stderr line prints that same span

    def write(self, out: str | Path) -> list[Path]:
        """report.json, the figures (DIR/figures/*.png), report.md and the self-contained report.html."""
        return write_report(self, result_folder(out))


def _context(opts: ReproduceOptions, dev: torch.device) -> dict[str, Any]:
    """What outside a stage's settings changes its result (part of every key): data, device type, threads."""
    if opts.scale == "smoke":
        return {"data": "synthetic", "device_type": dev.type, "threads": opts.threads}
    folder = cifar.locate(opts.data_dir)
    return {"data": data_fingerprint(folder), "device_type": dev.type, "threads": opts.threads,
            "data_folder": str(folder)}


def _is_reproduction(out: Path) -> bool:
    try:
        return read_json(out / MANIFEST, "reproduction manifest").get("format") == MANIFEST_FORMAT
    except (BnlabError, AttributeError):
        return False


def read_manifest(out: Path) -> dict[str, Any]:
    """The reproduce.json of a reproduction folder, refused (one line) unless of the documented shape."""
    path = out / MANIFEST
    m = read_json(path, "reproduction manifest")
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise BnlabError(f"{path} is not a bnlab reproduction manifest")
    version = m.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BnlabError(f"{path} has no valid \"version\" (got {version!r}); restore it or use --force")
    if version > MANIFEST_VERSION:
        raise BnlabError(f"{path} was written by a newer bnlab (version {version}); upgrade bnlab")
    runs = m.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise BnlabError(f"{path} is damaged (\"runs\" must be a list of run records, got "
                         f"{type(runs).__name__}); restore it or rerun with --force")
    return m


def run_reproduce(opts: ReproduceOptions, out: str | Path, *, force: bool = False, quiet: bool = False,
                  stream: TextIO | None = None) -> ReproduceResult:
    """Run (or continue) the reproduction of `opts.findings` at `opts.scale` in `out`; writes the report.

    A folder holding an earlier reproduction is continued (its stages reused); any other non-empty folder
    is refused unless `force` (which empties it first).
    """
    t_start = time.perf_counter()
    opts.validate()
    dev = resolve_device(opts.device)
    out = output_path(out)
    context = _context(opts, dev)
    data_folder = context.pop("data_folder", None)
    resume = out.is_dir() and _is_reproduction(out) and not force
    plan = build_plan(opts.scale, opts.settings())  # every stage's settings checked: refused now, not mid-run
    wanted = opts.findings
    names = needed_stages(plan, wanted)
    keys = stage_keys(plan, list(plan), context)
    jobs = opts.jobs or (1 if dev.type == "cuda" else max(1, (os.cpu_count() or 1) // opts.threads))
    log = _Log(None if quiet else (stream or sys.stderr))
    inputs = [] if opts.scale == "smoke" else [("data folder", p) for p in cifar.input_paths(opts.data_dir)]
    if resume:
        read_manifest(out)  # a damaged or newer manifest is refused before the folder is touched
    with claim_out_dir(out, force=force, resume=resume, inputs=inputs):
        manifest = read_manifest(out) if resume else {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                                       "runs": []}
        manifest["runs"].append({"started": _now(), "scale": opts.scale, "findings": list(wanted),
                                 "argv": sys.argv, "device": str(dev), "jobs": jobs, "threads": opts.threads,
                                 **({"overrides": opts.overrides()} if opts.overrides() else {})})
        write_json(out / MANIFEST, manifest)
        env = {"data_dir": str(data_folder) if data_folder else None, "device": str(dev), "quiet": quiet or jobs > 1,
               "threads": opts.threads}
        outcomes = _run_stages(plan, names, keys, out, env, jobs, log)
        outs = {n: out / o.folder / OUT for n, o in outcomes.items() if o.status in ("cached", "ran")}
        # Findings not asked for are still reported when this folder already holds their stages.
        for name in plan:
            if name not in outcomes:
                rec = finished(stage_dir(out, name, keys[name]), keys[name])
                if rec is not None:
                    outs[name] = stage_dir(out, name, keys[name]) / OUT
        records = [_evaluate(fid, outs, plan, opts, outcomes, keys, out) for fid in IDS]
        record = _report_record(opts, wanted, records, outcomes, plan, keys, out, dev, jobs, context, data_folder,
                                time.perf_counter() - t_start)
        result = ReproduceResult(record, records, draw_figures=opts.figures, started=t_start)
        result.write(out)
        manifest["runs"][-1].update(finished=_now(), wall_time=time.perf_counter() - t_start,
                                    verdicts={r.id: r.verdict for r in records})
        write_json(out / MANIFEST, manifest)
    failed = [o for o in outcomes.values() if o.status == "failed"]
    log.line(f"report: {out / 'report.md'} ({', '.join(f'{k} {v}' for k, v in record['summary'].items() if v)}); "
             f"took {_hms(record['provenance']['wall_time_total'])}")
    if failed:
        raise BnlabError(f"{len(failed)} stage(s) failed ({'; '.join(f'{o.name}: {o.error}' for o in failed)}); "
                         "the report marks what they feed as NOT RUN; rerun the same command to retry them")
    return result


def _evaluate(fid: str, outs: dict[str, Path], plan: dict[str, Stage], opts: ReproduceOptions,
              outcomes: dict[str, StageOutcome], keys: dict[str, str], out: Path) -> FindingRecord:
    rec = BY_ID[fid].evaluate(outs)
    rec.setting = {"scale": opts.scale,
                   "stages": {n: {"folder": str(stage_dir(Path("."), n, keys[n])), "key": keys[n],
                                  "summary": describe(plan[n]), "settings": plan[n].settings}
                              for n in with_deps(plan, BY_ID[fid].reads(plan))}}
    failed = [n for n in FINDING_STAGES[fid] if n in outcomes and outcomes[n].status in ("failed", "skipped")]
    if failed and rec.verdict == "NOT RUN":
        rec.reason = "stage(s) failed: " + "; ".join(f"{n}: {outcomes[n].error}" for n in failed)
    return rec


def describe(stage: Stage) -> str:
    """One line saying what a stage computes, for the report."""
    return kind(stage.kind).describe(stage.settings)


def _critical_path(plan: dict[str, Stage], names: list[str]) -> dict[str, float]:
    """Per stage, its cost plus the longest chain of stages that wait for it (scheduling priority)."""
    children: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for d in plan[n].deps.values():
            if d in children:
                children[d].append(n)
    memo: dict[str, float] = {}

    def chain(n: str) -> float:
        if n not in memo:
            memo[n] = plan[n].cost + max((chain(c) for c in children[n]), default=0.0)
        return memo[n]

    return {n: chain(n) for n in names}


def _run_stages(plan: dict[str, Stage], names: list[str], keys: dict[str, str], root: Path, env: dict[str, Any],
                jobs: int, log: _Log) -> dict[str, StageOutcome]:
    """Run the unfinished stages of `names` (deps first, the longest chains first), `jobs` at a time; every
    stage's outcome: cached, ran, failed or skipped (an input failed)."""
    outcomes: dict[str, StageOutcome] = {}
    for n in names:
        folder = stage_dir(root, n, keys[n])
        st = plan[n]
        rec = finished(folder, keys[n])
        outcomes[n] = StageOutcome(n, st.kind, keys[n], str(folder.relative_to(root)), "cached" if rec else "todo",
                                   st.settings, dict(st.deps), rec.get("wall_time") if rec else None,
                                   rec.get("outputs", {}) if rec else {}, estimate=st.cost)
    runner = _Runner(plan, names, outcomes, root, env, jobs, log)
    runner.serial() if jobs == 1 else runner.parallel()
    return outcomes


class _Runner:
    """The scheduling of one `_run_stages` call: which stage may start, and the bookkeeping of each end."""

    def __init__(self, plan: dict[str, Stage], names: list[str], outcomes: dict[str, StageOutcome], root: Path,
                 env: dict[str, Any], jobs: int, log: _Log) -> None:
        self.plan, self.names, self.outcomes, self.root, self.env, self.jobs, self.log = \
            plan, names, outcomes, root, env, jobs, log
        self.pending = [n for n in names if outcomes[n].status == "todo"]
        self.eta = _Eta(plan, self.pending, jobs)
        self.priority = _critical_path(plan, names)
        self.done_count = len(names) - len(self.pending)
        log.line(f"reproduce: {len(names)} stages, {self.done_count} reused, {len(self.pending)} to run on {jobs} "
                 f"worker(s); about {_hms(self.eta.remaining())} (estimate)")

    def ready(self, n: str) -> bool:
        return all(self.outcomes[d].status in ("cached", "ran") for d in self.plan[n].deps.values())

    def blocked(self, n: str) -> bool:
        return any(self.outcomes[d].status in ("failed", "skipped") for d in self.plan[n].deps.values())

    def args(self, n: str) -> tuple[Any, ...]:
        folder = self.root / self.outcomes[n].folder
        folder.mkdir(parents=True, exist_ok=True)
        inputs = {role: str(self.root / self.outcomes[d].folder / OUT) for role, d in self.plan[n].deps.items()}
        return self.plan[n].kind, self.plan[n].settings, str(folder), inputs, self.env

    def skip(self, n: str) -> None:
        self.pending.remove(n)
        _skip(self.outcomes, self.plan, n, self.log)
        self.done_count += 1

    def start(self, n: str) -> None:
        self.pending.remove(n)
        self.eta.started(n)
        width = 2 * len(str(len(self.names))) + 3
        self.log.line(f"{'':>{width}} start   {n} ({self.plan[n].kind}, estimate {_hms(self.eta.estimate(n))})")

    def finish(self, n: str, result: dict[str, Any] | None, error: str | None) -> None:
        o = self.outcomes[n]
        self.done_count += 1
        progress = f"[{self.done_count}/{len(self.names)}]"
        if error is None and result is not None:
            o.status, o.wall_time, o.outputs = "ran", result["wall_time"], result["outputs"]
            write_json(self.root / o.folder / STAGE_FILE, {
                "format": STAGE_FORMAT, "name": n, "kind": o.kind, "key": o.key, "settings": o.settings,
                "deps": {role: {"name": d, "key": self.outcomes[d].key} for role, d in o.deps.items()},
                "wall_time": o.wall_time, "threads": result.get("threads"), "finished": _now(),
                "outputs": o.outputs, "files": result.get("files"), "versions": versions()})
            self.eta.finished(n, o.wall_time)
            self.log.line(f"{progress} done    {n} in {_hms(o.wall_time)} | about {_hms(self.eta.remaining())} left")
        else:
            o.status, o.error = "failed", error
            self.eta.finished(n, None)
            self.log.line(f"{progress} FAILED  {n}: {error}")

    def serial(self) -> None:
        while self.pending:
            self.pending.sort(key=lambda n: -self.priority[n])
            n = next((n for n in self.pending if self.ready(n) or self.blocked(n)), None)
            if n is None:  # pragma: no cover - the plan is a DAG of known stages
                raise BnlabError("internal error: no runnable stage")
            if self.blocked(n):
                self.skip(n)
                continue
            self.start(n)
            try:
                self.finish(n, run_stage(*self.args(n)), None)
            except (BnlabError, RuntimeError, ValueError, OSError) as e:
                self.finish(n, None, _one_line(e))

    def parallel(self) -> None:
        with worker_pool(self.jobs) as pool:
            running: dict[cf.Future, str] = {}
            while self.pending or running:
                self.pending.sort(key=lambda n: -self.priority[n])
                for n in [n for n in self.pending if self.blocked(n)]:
                    self.skip(n)
                for n in [n for n in self.pending if self.ready(n)][:self.jobs - len(running)]:
                    self.start(n)
                    running[pool.submit(run_stage, *self.args(n))] = n
                if not running:
                    continue
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    n = running.pop(fut)
                    try:
                        self.finish(n, fut.result(), None)
                    except Exception as e:  # the stage raised, or its worker died
                        self.finish(n, None, _one_line(e))


def _skip(outcomes: dict[str, StageOutcome], plan: dict[str, Stage], n: str, log: _Log) -> None:
    bad = [d for d in plan[n].deps.values() if outcomes[d].status in ("failed", "skipped")]
    outcomes[n].status, outcomes[n].error = "skipped", f"input stage {', '.join(bad)} failed"
    log.line(f"skipped {n}: {outcomes[n].error}")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:300]}" if not isinstance(e, BnlabError) else text[:300]


class _Eta:
    """Time left = the estimates of unfinished stages, rescaled by (measured / estimated) of finished ones,
    divided among the workers."""

    def __init__(self, plan: dict[str, Stage], todo: list[str], jobs: int) -> None:
        self.cost = {n: plan[n].cost for n in todo}
        self.jobs = jobs
        self.started_at: dict[str, float] = {}
        self.done: dict[str, float | None] = {}

    def factor(self) -> float:
        pairs = [(w, self.cost[n]) for n, w in self.done.items() if w is not None]
        return sum(w for w, _ in pairs) / sum(c for _, c in pairs) if pairs else 1.0

    def estimate(self, n: str) -> float:
        return self.cost[n] * self.factor()

    def started(self, n: str) -> None:
        self.started_at[n] = time.perf_counter()

    def finished(self, n: str, wall: float | None) -> None:
        self.done[n] = wall

    def remaining(self) -> float:
        f, now = self.factor(), time.perf_counter()
        left = 0.0
        for n, c in self.cost.items():
            if n in self.done:
                continue
            spent = now - self.started_at[n] if n in self.started_at else 0.0
            left += max(c * f - spent, 0.1 * c * f)
        return left / self.jobs


class _Log:
    def __init__(self, stream: TextIO | None, prefix: str = "") -> None:
        self.stream, self.prefix = stream, prefix

    def line(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(f"{dt.datetime.now():%H:%M:%S} {self.prefix}{text}\n")
            self.stream.flush()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def versions() -> dict[str, str]:
    return {"bnlab": __version__, "torch": torch.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "python": platform.python_version()}


def _report_record(opts: ReproduceOptions, wanted: tuple[str, ...], records: list[FindingRecord],
                   outcomes: dict[str, StageOutcome], plan: dict[str, Stage], keys: dict[str, str], out: Path,
                   dev: torch.device, jobs: int, context: dict[str, Any], data_folder: Path | None,
                   wall: float) -> dict[str, Any]:
    summary = {v: sum(r.verdict == v for r in records) for v in VERDICTS}
    stages = []
    for n, o in outcomes.items():
        stages.append({"name": n, "kind": o.kind, "key": o.key, "folder": o.folder, "status": o.status,
                       "wall_time": o.wall_time, "estimate_one_core": round(o.estimate, 1),
                       "summary": describe(plan[n]),
                       "settings": o.settings, "deps": o.deps, "outputs": o.outputs, "error": o.error})
    checkpoints = {n: o.outputs.get("final_sha256") or o.outputs.get("frozen_sha256")
                   for n, o in outcomes.items() if o.outputs.get("final_sha256") or o.outputs.get("frozen_sha256")}
    return {
        "format": REPORT_FORMAT, "version": 1, "scale": opts.scale, "requested": list(wanted),
        **({"overrides": opts.overrides()} if opts.overrides() else {}),
        "summary": summary, "findings": [r.to_dict() for r in records], "stages": stages,
        "provenance": {
            "created": _now(), "versions": versions(), "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
            "cpu_count": os.cpu_count(), "jobs": jobs, "threads": opts.threads,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "data": {"folder": str(data_folder) if data_folder else None, "fingerprint": context["data"]},
            "seeds": "every run and analysis uses seed 0 (training, data subsets, evaluation sets, probes)",
            "checkpoint_sha256": checkpoints, "wall_time_total": wall,
            "wall_time_stages_run": sum(o.wall_time or 0 for o in outcomes.values() if o.status == "ran"),
            "wall_time_stages_all": sum(o.wall_time or 0 for o in outcomes.values()),
            "scale_settings": opts.settings(), "eigenpairs": eigenpair_budget(opts.scale),
            "command": " ".join(sys.argv),
        },
    }

