"""Hyper-parameter sweeps: a grid of training runs, resumable and parallel, summarised by lr*wd groups.

Grid spec (``--grid``): whitespace-separated ``key=v1,v2,...`` axes, e.g.
``"lr=0.1,0.2,0.4 wd=1.25e-4,2.5e-4,5e-4 momentum=0.9"``. Keys are `bnlab.config.make_config`'s flat
options (``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``width``, ``epochs``, ``seed``, ...) or the
aliases in `ALIASES` (``wd``, ``bs``). Points are the Cartesian product, last axis fastest.

Sweep directory layout::

    OUT/grid.json            the grid file (format below); written once, checked on every rerun
    OUT/points/NAME/         one ordinary run directory per point (`bnlab dynamics` works on it)
    OUT/summary.csv, OUT/summary.json

Grid file format (``grid.json``, JSON object)::

    {"format": "bnlab-sweep-grid", "version": 1,
     "variant": "bn" | null,
     "base": {flat make_config options shared by every point},
     "axes": [["lr", [0.1, 0.2]], ["weight_decay", [0.0005]], ...],
     "points": [{"index": 0, "name": "lr=0.1_weight_decay=0.0005", "overrides": {"lr": 0.1, ...}}, ...]}

"points" is derived from "axes" (and rewritten identically); a cluster job array runs one point per
task with ``bnlab sweep --grid-file OUT/grid.json --out OUT --point $TASK_ID --no-summary`` and a last
``bnlab sweep --grid-file OUT/grid.json --out OUT --summary-only`` writes the summary.

Resume: a point whose status.json says finished or diverged is skipped; a point with a last.pt
(crashed or interrupted) is resumed from it; anything else is started afresh.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import math
import multiprocessing as mp
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import theory
from .config import DataSpec, TrainConfig, make_config
from .dynamics.analysis import MIN_RELAXATION_TIMES
from .errors import BnlabError
from .models import ModelSpec

GRID_FORMAT = "bnlab-sweep-grid"
GRID_VERSION = 1
ALIASES = {"wd": "weight_decay", "bs": "batch_size"}
DONE = ("finished", "diverged")


def _field_types() -> dict[str, str]:
    out = {}
    for cls in (ModelSpec, DataSpec, TrainConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in ("model", "data"):
                out[f.name] = str(hints[f.name])
    return out


FIELD_TYPES = _field_types()


def canonical_key(key: str) -> str:
    key = ALIASES.get(key, key).replace("-", "_")
    if key not in FIELD_TYPES:
        raise BnlabError(f"unknown grid key {key!r}; use a training option such as lr, wd, momentum, nesterov, "
                         f"width, epochs, seed, batch_size")
    return key


def parse_value(key: str, text: str) -> Any:
    """A grid/option value converted to its config field's type (key already canonical)."""
    kind = FIELD_TYPES[key]
    text = text.strip()
    if text.lower() in ("none", "null") and "None" in kind:
        return None
    try:
        if "bool" in kind:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if "tuple" in kind:
            return tuple(float(v) for v in text.split(":"))
        if "float" in kind:
            return float(text)
        if "int" in kind:
            return int(text)
    except ValueError:
        raise BnlabError(f"bad value {text!r} for grid key {key} (expects {kind})") from None
    return text


def parse_grid(spec: str) -> list[tuple[str, list[Any]]]:
    """``"lr=0.1,0.2 wd=5e-4"`` -> [("lr", [0.1, 0.2]), ("weight_decay", [0.0005])]."""
    axes: list[tuple[str, list[Any]]] = []
    for item in spec.replace(";", " ").split():
        if "=" not in item:
            raise BnlabError(f"bad grid spec item {item!r}: expected key=v1,v2,...")
        key, _, values = item.partition("=")
        key = canonical_key(key.strip())
        if any(k == key for k, _ in axes):
            raise BnlabError(f"grid key {key} given twice")
        vals = [parse_value(key, v) for v in values.split(",") if v.strip()]
        if not vals:
            raise BnlabError(f"grid key {key} has no values")
        axes.append((key, vals))
    if not axes:
        raise BnlabError("empty grid spec; expected e.g. \"lr=0.1,0.2 wd=5e-4\"")
    return axes


def _fmt(v: Any) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


@dataclass
class Point:
    index: int
    name: str
    overrides: dict[str, Any]


@dataclass
class Grid:
    axes: list[tuple[str, list[Any]]]
    base: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None

    def points(self) -> list[Point]:
        keys = [k for k, _ in self.axes]
        out = []
        for i, combo in enumerate(itertools.product(*(v for _, v in self.axes))):
            ov = dict(zip(keys, combo))
            out.append(Point(i, "_".join(f"{k}={_fmt(v)}" for k, v in ov.items()), ov))
        return out

    def config(self, point: Point) -> TrainConfig:
        clash = set(self.base) & set(point.overrides)
        if clash:
            raise BnlabError(f"option(s) {', '.join(sorted(clash))} given both as a grid axis and as a train option")
        options = {**self.base, **point.overrides}
        return make_config(options.pop("variant", self.variant), **options)

    def to_dict(self) -> dict[str, Any]:
        return {"format": GRID_FORMAT, "version": GRID_VERSION, "variant": self.variant, "base": self.base,
                "axes": [[k, v] for k, v in self.axes],
                "points": [dataclasses.asdict(p) for p in self.points()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        if d.get("format") != GRID_FORMAT:
            raise BnlabError(f"not a bnlab grid file (no \"format\": \"{GRID_FORMAT}\")")
        if d.get("version", 0) > GRID_VERSION:
            raise BnlabError("grid file written by a newer bnlab; upgrade bnlab")
        base = {canonical_key(k): (tuple(v) if isinstance(v, list) else v) for k, v in d.get("base", {}).items()}
        axes = [(canonical_key(k), list(v)) for k, v in d["axes"]]
        return cls(axes=axes, base=base, variant=d.get("variant"))


def read_grid_file(path: str | os.PathLike) -> Grid:
    p = Path(path)
    try:
        return Grid.from_dict(json.loads(p.read_text()))
    except OSError as e:
        raise BnlabError(f"cannot read grid file {p} ({e.strerror})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BnlabError(f"{p} is not a valid grid file ({e})") from None


def _json_default(x: Any) -> Any:
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))


def prepare_sweep_dir(grid: Grid, out: Path) -> list[Point]:
    """Create OUT, write grid.json, refuse a directory that holds a different grid; check every point."""
    points = grid.points()
    for p in points:
        grid.config(p)  # validates options before anything runs
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grid.json"
    text = json.dumps(grid.to_dict(), indent=2, default=_json_default) + "\n"
    if path.exists():
        old = read_grid_file(path)
        if json.dumps(old.to_dict(), default=_json_default) != json.dumps(grid.to_dict(), default=_json_default):
            raise BnlabError(f"{out} holds a sweep with a different grid (see {path}); use another --out")
    else:
        tmp = path.with_name(".grid.json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return points


def point_dir(out: Path, point: Point) -> Path:
    return out / "points" / point.name


def point_state(run_dir: Path) -> str:
    """finished | diverged | resumable (has last.pt) | new."""
    try:
        status = json.loads((run_dir / "status.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        status = None
    if status in DONE:
        return status
    return "resumable" if (run_dir / "last.pt").is_file() else "new"


def run_point(config_dict: dict[str, Any], run_dir: str, device: str, threads: int, retries: int,
              quiet: bool) -> tuple[str, str]:
    """Train one point to completion in this process: (status, message). Top-level for process pools.

    Uses `threads` torch threads for the point and restores the caller's setting afterwards.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return _run_point(config_dict, run_dir, device, retries, quiet)
    finally:
        torch.set_num_threads(before)


def _run_point(config_dict: dict[str, Any], run_dir: str, device: str, retries: int,
               quiet: bool) -> tuple[str, str]:
    from .train import train

    config = TrainConfig.from_dict(config_dict)
    rd = Path(run_dir)
    last_error = ""
    for _attempt in range(retries + 1):
        state = point_state(rd)
        if state in DONE:
            return state, "done"
        if (rd / "config.json").is_file():
            old = TrainConfig.from_dict(json.loads((rd / "config.json").read_text()))
            if old != config:
                return "error", f"{rd} holds a run with a different config"
        try:
            if state == "resumable":
                res = train(None, rd, device=device, resume=True, quiet=quiet)  # type: ignore[arg-type]
            else:
                res = train(config, rd, device=device, force=True, quiet=quiet)
            return res.status, "ran"
        except Exception as e:  # a crashed point is retried (resumed from last.pt when there is one)
            last_error = f"{type(e).__name__}: {e}"
    return "crashed", last_error


@dataclass
class SweepOutcome:
    ran: dict[int, str]  # index -> status of points run now
    skipped: list[int]  # indices already finished/diverged
    failed: dict[int, str]  # index -> error message


def run_sweep(grid: Grid, out: str | os.PathLike, *, jobs: int = 1, device: str = "cpu", retries: int = 1,
              only: list[int] | None = None, quiet: bool = False) -> SweepOutcome:
    """Run every (or only the listed) point not yet done, `jobs` at a time in separate processes."""
    from .progress import Progress

    out = Path(out)
    points = prepare_sweep_dir(grid, out)
    if only is not None:
        bad = [i for i in only if not 0 <= i < len(points)]
        if bad:
            raise BnlabError(f"--point {bad[0]} out of range: the grid has {len(points)} points (0..{len(points) - 1})")
        points = [points[i] for i in only]
    skipped = [p.index for p in points if point_state(point_dir(out, p)) in DONE]
    todo = [p for p in points if p.index not in skipped]
    outcome = SweepOutcome(ran={}, skipped=skipped, failed={})
    if not todo:
        return outcome
    jobs = max(1, min(jobs, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    args = [(grid.config(p).to_dict(), str(point_dir(out, p)), device, threads, retries, quiet or jobs > 1)
            for p in todo]
    bar = Progress(len(todo), "sweep points", quiet=quiet)
    for p in todo:
        point_dir(out, p).parent.mkdir(parents=True, exist_ok=True)

    def record(p: Point, status: str, msg: str) -> None:
        if status in DONE:
            outcome.ran[p.index] = status
        else:
            outcome.failed[p.index] = msg or status
        bar.update(1, f"{p.name}: {status}")

    if jobs == 1:
        for p, a in zip(todo, args):
            record(p, *run_point(*a))
    else:
        # spawn: no forked copies of torch's thread pools; each worker owns `threads` cores
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_point, *a): p for p, a in zip(todo, args)}
            for fut in cf.as_completed(futures):
                try:
                    record(futures[fut], *fut.result())
                except Exception as e:  # the worker process itself died
                    record(futures[fut], "crashed", f"{type(e).__name__}: {e}")
    bar.close()
    return outcome


# ---------------------------------------------------------------------------------------------- summary

SUMMARY_COLUMNS = ("index", "name", "status", "lr", "weight_decay", "momentum", "nesterov", "lr_wd", "lr_wd_eff",
                   "epochs_done", "train_loss", "train_acc", "test_loss", "test_acc", "n_invariant", "angle",
                   "angle_pred", "angle_ratio", "rel_step", "rel_step_pred", "norm_gmean", "norm_min", "norm_max",
                   "relaxation_times")


def _last_metrics(run_dir: Path) -> dict[str, float]:
    import csv
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)} if rows else {}


def summarise_point(out: Path, grid: Grid, point: Point) -> dict[str, Any]:
    """One summary row: final metrics (metrics.csv) and equilibrium stats (`bnlab.dynamics`) of a point."""
    from .dynamics import analyse_run

    config = grid.config(point)
    rd = point_dir(out, point)
    lr, wd, mu = config.lr, config.weight_decay, config.momentum
    row: dict[str, Any] = {"index": point.index, "name": point.name, "status": _status(rd), "lr": lr,
                           "weight_decay": wd, "momentum": mu, "nesterov": config.nesterov, "lr_wd": lr * wd,
                           "lr_wd_eff": lr * wd / (1 - mu)}
    m = _last_metrics(rd)
    row.update({"epochs_done": m.get("epoch"), **{k: m.get(k) for k in ("train_loss", "train_acc", "test_loss",
                                                                        "test_acc")}})
    row["layers"] = {}
    try:
        rep = analyse_run(rd, check_checkpoint=False)
    except BnlabError:
        return row
    inv = [r for r in rep.layers if r.scale_invariant]
    row["n_invariant"] = len(inv)
    row["relaxation_times"] = rep.relaxation_times
    row["compare_to"] = rep.compare_to
    row["layers"] = {r.param: {"w_norm": r.w_norm_final, "angle": r.angle, "angle_pred": r.angle_pred,
                               "ratio": r.ratio, "grad_scale": r.grad_scale, "scale_invariant": r.scale_invariant}
                     for r in rep.layers}
    if inv:
        norms = np.array([r.w_norm_final for r in inv])
        # the prediction the run is compared with: the equilibrium (const lr) or the lagged one (schedules)
        row.update({"angle": float(np.mean([r.angle for r in inv])), "angle_pred": inv[0].angle_ref,
                    "rel_step": float(np.mean([r.rel_step for r in inv])), "rel_step_pred": inv[0].rel_step_pred,
                    "norm_gmean": float(np.exp(np.mean(np.log(norms)))), "norm_min": float(norms.min()),
                    "norm_max": float(norms.max())})
        if row["angle_pred"]:
            row["angle_ratio"] = row["angle"] / row["angle_pred"]
    return row


def _status(rd: Path) -> str:
    if not rd.exists():
        return "missing"
    s = point_state(rd)
    return {"resumable": "incomplete", "new": "incomplete"}.get(s, s)


def _group_key(x: float) -> str:
    return format(float(f"{x:.6g}"), "g")


def group_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Points with equal `key` (lr_wd or lr_wd_eff): how alike are their angles, norms and accuracies?"""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_group_key(r[key]), []).append(r)
    out = []
    for k, rs in sorted(groups.items(), key=lambda kv: float(kv[0])):
        ang = [r["angle"] for r in rs if r.get("angle") is not None]
        acc = [r["test_acc"] for r in rs if r.get("test_acc") is not None]
        nrm = [r["norm_gmean"] for r in rs if r.get("norm_gmean") is not None]
        out.append({key: float(k), "points": [r["name"] for r in rs], "n": len(rs),
                    "angle_mean": float(np.mean(ang)) if ang else None,
                    "angle_spread": float(max(ang) / min(ang)) if len(ang) > 1 else None,
                    "angle_pred": rs[0].get("angle_pred"),
                    "test_acc_min": min(acc) if acc else None, "test_acc_max": max(acc) if acc else None,
                    "norm_gmean_range": [min(nrm), max(nrm)] if nrm else None})
    return out


def norm_exponents(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per invariant layer, the slope of log ||w|| against log(lr/wd) across points (theory: 1/4).

    'raw' fits ||w|| itself; 'grad_scale_corrected' fits ||w|| / L^(1/4), removing the part of the
    norm change that comes from a different gradient scale L = ||g||^2 ||w||^2 at that point.
    Only points with the same momentum as the first are used (the theory's norm also has 1/(1-mu)).
    """
    done = [r for r in rows if r.get("layers") and r["status"] in DONE and r["weight_decay"] > 0]
    if done:
        done = [r for r in done if r["momentum"] == done[0]["momentum"]]
    x = np.log([r["lr"] / r["weight_decay"] for r in done]) if done else np.array([])
    if len(done) < 2 or np.ptp(x) == 0:
        return {}
    out = {}
    for name, info in done[0]["layers"].items():
        if not info["scale_invariant"]:
            continue
        w = np.array([r["layers"].get(name, {}).get("w_norm", np.nan) for r in done], dtype=float)
        L = np.array([r["layers"].get(name, {}).get("grad_scale", np.nan) for r in done], dtype=float)
        ok = np.isfinite(w) & np.isfinite(L) & (w > 0) & (L > 0)
        if ok.sum() < 2 or np.ptp(x[ok]) == 0:
            continue
        out[name] = {"raw": float(np.polyfit(x[ok], np.log(w[ok]), 1)[0]),
                     "grad_scale_corrected": float(np.polyfit(x[ok], np.log(w[ok] / L[ok] ** 0.25), 1)[0])}
    return out


def summarise_sweep(out: str | os.PathLike, grid: Grid | None = None) -> dict[str, Any]:
    """Summary of every point of the sweep in OUT; writes summary.csv and summary.json there."""
    from .dynamics.report import _clean, write_columns

    out = Path(out)
    grid = grid or read_grid_file(out / "grid.json")
    rows = [summarise_point(out, grid, p) for p in grid.points()]
    summary = {"grid": grid.to_dict(), "theory": {"nesterov_factor_at_0.9": theory.nesterov_factor(0.9)},
               "points": rows, "groups_lr_wd": group_rows(rows, "lr_wd"),
               "groups_lr_wd_eff": group_rows(rows, "lr_wd_eff"), "norm_exponents": norm_exponents(rows)}
    write_columns(out / "summary.csv", {c: np.array([_cell(r.get(c)) for r in rows], dtype=object)
                                        for c in SUMMARY_COLUMNS})
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(_clean(summary), indent=2, default=_json_default) + "\n")
    os.replace(tmp, out / "summary.json")
    return summary


def _cell(x: Any) -> Any:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return int(x) if isinstance(x, bool) else x


def format_summary(summary: dict[str, Any]) -> str:
    """Points grouped by lr*wd, then the lr*wd/(1-mu) groups and the norm exponents."""
    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    head = (f"{'lr*wd':>9s} {'point':40s} {'status':>9s} {'test_acc':>8s} {'train_loss':>10s} {'angle':>9s} "
            f"{'pred':>9s} {'ratio':>6s} {'|w| gmean':>9s}")
    lines = [head, "-" * len(head)]
    for g in summary["groups_lr_wd"]:
        for name in g["points"]:
            r = next(r for r in summary["points"] if r["name"] == name)
            lines.append(f"{g['lr_wd']:9.3g} {name:40s} {r['status']:>9s} {f(r.get('test_acc'), '.4f'):>8s} "
                         f"{f(r.get('train_loss'), '.4f'):>10s} {f(r.get('angle'), '.3e'):>9s} "
                         f"{f(r.get('angle_pred'), '.3e'):>9s} {f(r.get('angle_ratio'), '.3f'):>6s} "
                         f"{f(r.get('norm_gmean'), '.3g'):>9s}")
        if g["n"] > 1:
            lines.append(f"{'':9s} -> angle spread {f(g['angle_spread'], '.3f')}x within the lr*wd group")
    short = [r for r in summary["points"] if r.get("relaxation_times") is not None
             and r["relaxation_times"] < MIN_RELAXATION_TIMES]
    if short:
        times = [r["relaxation_times"] for r in short]
        lines.append(f"warning: {len(short)} point(s) ran fewer than {MIN_RELAXATION_TIMES:g} relaxation times "
                     f"((1 - momentum) / (4 lr wd) steps each; here {min(times):.1f}..{max(times):.1f}): their "
                     "norms are still relaxing, so their angle ratios are not equilibrium values; train longer")
    lines.append("")
    lines.append("groups by lr*wd/(1-momentum): " + "; ".join(
        f"{g['lr_wd_eff']:.3g}: n={g['n']}, angle {f(g['angle_mean'], '.3e')}"
        + (f" (spread {g['angle_spread']:.3f}x)" if g["angle_spread"] else "") for g in summary["groups_lr_wd_eff"]))
    ex = summary["norm_exponents"]
    if ex:
        raw = np.array([v["raw"] for v in ex.values()])
        cor = np.array([v["grad_scale_corrected"] for v in ex.values()])
        lines.append(f"||w|| ~ (lr/wd)^b over {len(ex)} invariant layers: b = {raw.mean():.3f} "
                     f"({raw.min():.3f}..{raw.max():.3f}); with L^(1/4) removed {cor.mean():.3f} (theory 0.25)")
    return "\n".join(lines)
