"""Running one stage: each kind calls the package's own entry point (`train`, `freeze_checkpoint`,
`bnlab.hessian`, `bnlab.output_stats`, `run_dynamics`, `run_hessian_series`, `run_sweep`, `run_collapse`,
the F1/F4b simulations) and writes what that command writes into the stage's ``out`` folder.

`run_stage` takes and returns plain data, so it runs the same in this process or in a worker process.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import file_hash
from ..errors import BnlabError
from ..io.jsonfile import read_json, write_json

OUT = "out"
# Where each kind leaves the file later stages read.
CHECKPOINT = {"run": "final.pt", "frozen": "frozen.pt"}


def _fresh(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def _tuples(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


def _with_data(settings: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    s = _tuples(settings)
    if s.get("dataset") == "cifar10" and env.get("data_dir"):
        s["data_dir"] = env["data_dir"]
    return s


def run_stage(kind: str, settings: dict[str, Any], folder: str, inputs: dict[str, str],
              env: dict[str, Any]) -> dict[str, Any]:
    """Run one stage into FOLDER/out; returns its outputs summary (for stage.json) and wall time.

    inputs: role -> the `out` folder of the stage it names. env: data_dir, device, threads, quiet.
    """
    before = torch.get_num_threads()
    if env.get("threads"):  # fixed per stage (part of its key), so its result does not depend on -j
        torch.set_num_threads(int(env["threads"]))
    try:
        t0 = time.perf_counter()
        out = Path(folder) / OUT
        outputs = _RUNNERS[kind](settings, out, {k: Path(v) for k, v in inputs.items()}, env)
        return {"outputs": outputs, "wall_time": time.perf_counter() - t0, "threads": torch.get_num_threads(),
                "files": output_files(out)}
    finally:
        torch.set_num_threads(before)


def output_files(out: Path) -> dict[str, int]:
    """Every file a stage wrote (relative path -> size; lock and temp files left out), for its record:
    a cached stage whose files were deleted or changed since is redone."""
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _train(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..config import TrainConfig, make_config
    from ..train import train

    s = _with_data(settings, env)
    cfg = make_config(s.pop("variant"), **s)
    resume = False
    if (out / "last.pt").is_file() and (out / "config.json").is_file():
        try:  # a run killed half-way: continue it if it is this very run
            resume = TrainConfig.from_dict(read_json(out / "config.json")) == cfg
        except BnlabError:
            resume = False
    if not resume and out.exists():
        _fresh(out)
    res = train(None if resume else cfg, out, device=env["device"], resume=resume, force=not resume,
                quiet=env["quiet"])
    return {"status": res.status, "diverged": res.diverged, "final_sha256": file_hash(out / "final.pt"),
            "last_metrics": res.metrics}


def _freeze(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..freeze import freeze_checkpoint

    _fresh(out)
    summary = freeze_checkpoint(inputs["run"] / CHECKPOINT["run"], out / CHECKPOINT["frozen"],
                                device=env["device"])
    return {**summary, "frozen_sha256": file_hash(out / CHECKPOINT["frozen"])}


def _checkpoint(inputs: dict[str, Path]) -> Path:
    role = next(r for r in inputs if r in CHECKPOINT)
    return inputs[role] / CHECKPOINT[role]


def _hessian(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..api import hessian

    res = hessian(_checkpoint(inputs), device=env["device"], quiet=env["quiet"], **settings)
    res.write(_fresh(out))
    e = res.record["eigen"]
    return {"eigenvalues": e["eigenvalues"], "all_converged": e["all_converged"], "hvps": res.record["hvp_count_total"],
            "checkpoint_sha256": res.record["settings"].get("checkpoint_sha256")}


def _outstats(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..api import output_stats

    res = output_stats(_checkpoint(inputs), device=env["device"], quiet=env["quiet"], eigvecs=str(inputs["hessian"]),
                       **settings)
    res.write(_fresh(out))
    return {"checkpoint_sha256": res.summary["settings"].get("checkpoint_sha256")}


def _dynamics(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..dynamics.options import DynamicsOptions, run_dynamics

    res = run_dynamics(inputs["run"], DynamicsOptions(**_tuples(settings)))
    res.write(_fresh(out))
    return {"aggregate": res.report.aggregate}


def _series(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..context import EvalSpec
    from ..curvature.hessian import HessianOptions
    from ..curvature.series import run_hessian_series

    s = dict(settings)
    spec = EvalSpec(num_samples=s.pop("num_samples"), batch_size=s.pop("batch_size"))
    res = run_hessian_series(inputs["run"], HessianOptions(eval=spec, **s), device=env["device"], quiet=env["quiet"])
    res.write(_fresh(out))
    return {"hvps_total": res.record["hvps_total"], "checkpoints": len(res.record["checkpoints"])}


def _sweep(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..sweep import Grid, parse_grid, run_sweep, summarise_sweep
    from ..sweep.runner import GRID_FILE

    grid = Grid(axes=parse_grid(settings["grid"]), base=_with_data(settings["base"], env), variant=settings["variant"],
                threads=int(env.get("threads") or torch.get_num_threads()))
    if (out / GRID_FILE).is_file() and read_json(out / GRID_FILE) != read_json_roundtrip(grid.to_dict()):
        _fresh(out)  # a sweep of other threads or another data path: start it again
    outcome = run_sweep(grid, out, jobs=1, device=env["device"], quiet=env["quiet"])
    if outcome.failed:
        raise BnlabError(f"sweep point(s) failed: {'; '.join(outcome.failed.values())}")
    summary = summarise_sweep(out, grid)
    return {"points": {p["name"]: p["status"] for p in summary["points"]}}


def read_json_roundtrip(obj: Any) -> Any:
    """obj as it reads back from a JSON file (tuples become lists, ...)."""
    import json

    from ..io.jsonfile import dumps

    return json.loads(dumps(obj))


def _collapse(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..device import resolve_device
    from ..outstats.collapse import CollapseOptions, run_collapse

    res = run_collapse(CollapseOptions(**settings), device=resolve_device(env["device"]))
    res.write(_fresh(out))
    return {}


def _init_shares(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..config import DataSpec
    from ..data import load_data
    from ..device import resolve_device
    from ..findings.collapse import davidnet_init_shares

    s = _with_data(settings, env)
    width, n, bs = s.pop("width"), s.pop("num_samples"), s.pop("batch_size")
    spec = DataSpec(**{k: v for k, v in s.items() if k in {f.name for f in dataclasses.fields(DataSpec)}})
    data = load_data(spec, resolve_device(env["device"]))
    shares = davidnet_init_shares(width, data, n, bs)
    write_json(_fresh(out) / "init_shares.json", {"width": width, "num_samples": n, "batch_size": bs,
                                                  "data_source": data.source, "shares": shares})
    return {}


def _exact(settings: dict[str, Any], out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
    from ..findings.invariant import exp_lr_equivalence, pythagoras_check

    common = {"width": settings["width"], "n": settings["images"], "batch_size": settings["batch_size"]}
    rec = {"pythagoras": pythagoras_check(steps=settings["pythagoras_steps"], **common),
           "exp_lr": exp_lr_equivalence(steps=settings["exp_steps"], **common)}
    write_json(_fresh(out) / "exact.json", rec)
    return {}


def check_stage(kind: str, settings: dict[str, Any]) -> None:
    """Refuse (BnlabError) settings the stage's command would refuse, before anything runs."""
    from ..config import make_config
    from ..context import EvalSpec
    from ..curvature.hessian import HessianOptions
    from ..outstats.collapse import CollapseOptions
    from ..outstats.run import OutstatsOptions
    from ..sweep import Grid, parse_grid

    s = _tuples(settings)
    if kind == "train":
        make_config(s.pop("variant"), **s)
    elif kind in ("hessian", "series", "outstats"):
        spec = EvalSpec(num_samples=s.pop("num_samples"), batch_size=s.pop("batch_size"))
        (OutstatsOptions if kind == "outstats" else HessianOptions)(eval=spec, **s).validate()
    elif kind == "sweep":
        Grid(axes=parse_grid(s["grid"]), base=_tuples(s["base"]), variant=s["variant"]).validate()
    elif kind == "collapse":
        CollapseOptions(**s).validate()
    elif kind == "init_shares":
        EvalSpec(num_samples=s["num_samples"], batch_size=s["batch_size"]).validate()
    elif kind not in _RUNNERS:
        raise BnlabError(f"unknown stage kind {kind!r}")


_RUNNERS = {"train": _train, "freeze": _freeze, "hessian": _hessian, "outstats": _outstats, "dynamics": _dynamics,
            "series": _series, "sweep": _sweep, "collapse": _collapse, "init_shares": _init_shares, "exact": _exact}
