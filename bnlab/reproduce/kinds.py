"""The kinds of stage `bnlab reproduce` runs, one class each: `check` refuses settings the stage's command
would refuse (before anything runs), `run` calls the package's own entry point (`train`,
`freeze_checkpoint`, `bnlab.hessian`, `bnlab.output_stats`, `run_dynamics`, `run_hessian_series`,
`run_sweep`, `run_collapse`, the exact simulations, the init shares) and writes what that command writes
into the stage's ``out`` folder, `describe` is the report's line for it and `cost` its estimated seconds on
one idle CPU core (only the ETA uses it).

`cost` gets the settings of the stages it reads (`inputs`, by role) and of the training run it analyses
(`run`, followed through freezes; None for a stage that reads no run).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..checkpoint import file_hash
from ..errors import BnlabError
from ..io.jsonfile import read_json, write_json

OUT = "out"
CHECKPOINT = {"run": "final.pt", "frozen": "frozen.pt"}  # where each kind leaves the file later stages read
Settings = dict[str, Any]

# -- cost model (seconds on one idle CPU core; measured on an AMD EPYC core, fp32) ----------------------
_SEC_PER_IMAGE_W16 = {"davidnet": 1 / 400, "simple": 1 / 340}  # one forward+backward at width 16
_HVP_FACTOR = 3.5  # a double-backward HVP against one forward+backward


def image_cost(model: str, width: int) -> float:
    return _SEC_PER_IMAGE_W16[model] * (width / 16) ** 1.7 + 2e-5


def train_images(s: Settings) -> int:
    return s.get("subset") or (s.get("synthetic_train", 5000) if s.get("dataset") == "synthetic" else 50000)


def train_steps(s: Settings) -> int:
    return s["epochs"] * (train_images(s) // s["batch_size"])


def train_cost(s: Settings) -> float:
    per = image_cost(s.get("model", "davidnet"), s["width"])
    log = 1.15 if s.get("log_every", 1) else 1.0
    test = s.get("test_subset") or (s.get("synthetic_test", 1000) if s.get("dataset") == "synthetic" else 10000)
    return train_steps(s) * s["batch_size"] * per * log + s["epochs"] * test * per / 3 + 3


def hvps(k: int) -> int:
    return 6 * k + 30 + k  # thick-restart Lanczos to tol 1e-3..1e-4, plus k to verify


def hessian_cost(model: str, width: int, k: int, samples: int) -> float:
    return hvps(k) * samples * _HVP_FACTOR * image_cost(model, width) + 3


# -- helpers of the runners --------------------------------------------------------------------------------

def fresh(out: Path) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def tuples(settings: Settings) -> Settings:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}


def with_data(settings: Settings, env: dict[str, Any]) -> Settings:
    s = tuples(settings)
    if s.get("dataset") == "cifar10" and env.get("data_dir"):
        s["data_dir"] = env["data_dir"]
    return s


def checkpoint_of(inputs: dict[str, Path]) -> Path:
    role = next(r for r in inputs if r in CHECKPOINT)
    return inputs[role] / CHECKPOINT[role]


def read_json_roundtrip(obj: Any) -> Any:
    """obj as it reads back from a JSON file (tuples become lists, ...)."""
    import json

    from ..io.jsonfile import dumps

    return json.loads(dumps(obj))


class StageKind:
    """One kind of stage; subclasses set `name` and implement `run`, `describe` and `cost`."""

    name: ClassVar[str]
    # Bump when the kind's code changes what it writes: cached outputs of the old code are then recomputed.
    version: ClassVar[int] = 1

    def check(self, settings: Settings) -> None:
        """Refuse (BnlabError) what the stage's command would refuse; nothing to check by default."""

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, settings: Settings) -> str:
        raise NotImplementedError

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        raise NotImplementedError


class Train(StageKind):
    name = "train"

    def check(self, settings: Settings) -> None:
        from ..config import make_config

        s = tuples(settings)
        make_config(s.pop("variant"), **s)

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..config import TrainConfig, make_config
        from ..train import train

        s = with_data(settings, env)
        cfg = make_config(s.pop("variant"), **s)
        resume = False
        if (out / "last.pt").is_file() and (out / "config.json").is_file():
            try:  # a run killed half-way: continue it if it is this very run
                resume = TrainConfig.from_dict(read_json(out / "config.json")) == cfg
            except BnlabError:
                resume = False
        if not resume and out.exists():
            fresh(out)
        res = train(None if resume else cfg, out, device=env["device"], resume=resume, force=not resume,
                    quiet=env["quiet"])
        return {"status": res.status, "diverged": res.diverged, "final_sha256": file_hash(out / "final.pt"),
                "last_metrics": res.metrics}

    def describe(self, s: Settings) -> str:
        data = ((f"CIFAR-10 subset {s['subset']}" if s.get("subset") else "CIFAR-10") if s.get("dataset") == "cifar10"
                else f"synthetic {s.get('synthetic_train')} images")
        n = s.get("subset") or s.get("synthetic_train") or 50000
        sched = {"const": "constant lr", "exp": "lr x 2^(epoch/2) from",
                 "piecewise": "peak lr"}[s.get("lr_schedule", "piecewise")]
        return (f"{s.get('model', 'davidnet')} width {s['width']} ({s['variant']}), batch {s['batch_size']}, "
                f"{s['epochs']} epochs = {s['epochs'] * (n // s['batch_size'])} steps, {sched} {s['lr']:g}, "
                f"wd {s['weight_decay']:g}, momentum {s['momentum']:g}{' Nesterov' if s['nesterov'] else ''}, {data}")

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        return train_cost(settings)


class Freeze(StageKind):
    name = "freeze"

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..freeze import freeze_checkpoint

        fresh(out)
        summary = freeze_checkpoint(inputs["run"] / CHECKPOINT["run"], out / CHECKPOINT["frozen"], device=env["device"])
        return {**summary, "frozen_sha256": file_hash(out / CHECKPOINT["frozen"])}

    def describe(self, settings: Settings) -> str:
        return "BN replaced by its running-statistics affine map (statistics refreshed over one epoch)"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        assert run is not None
        return (run.get("subset") or 50000) * image_cost(run.get("model", "davidnet"), run["width"]) / 3 + 3


def _eval_options(kind: str, settings: Settings) -> Any:
    """The options object of a curvature stage (`HessianOptions` or `OutstatsOptions`), validated."""
    from ..context import EvalSpec
    from ..curvature.hessian import HessianOptions
    from ..outstats.run import OutstatsOptions

    s = tuples(settings)
    spec = EvalSpec(num_samples=s.pop("num_samples"), batch_size=s.pop("batch_size"))
    opts = (OutstatsOptions if kind == "outstats" else HessianOptions)(eval=spec, **s)
    opts.validate()
    return opts


def _evaluation_set(s: Settings) -> str:
    return (f"{s['num_samples']} training images in fixed batches of {s['batch_size']}"
            f"{', loss ' + s['loss_scale'] if s.get('loss_scale') else ''}, tol {s.get('tol')}")


class Hessian(StageKind):
    name = "hessian"
    MATRICES: ClassVar[dict[str, str]] = {"ggn": "Gauss-Newton", "residual": "residual (Hessian - Gauss-Newton)"}

    def check(self, settings: Settings) -> None:
        _eval_options(self.name, settings)

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..api import hessian

        res = hessian(checkpoint_of(inputs), device=env["device"], quiet=env["quiet"], **settings)
        res.write(fresh(out))
        e = res.record["eigen"]
        return {"eigenvalues": e["eigenvalues"], "all_converged": e["all_converged"],
                "hvps": res.record["hvp_count_total"],
                "checkpoint_sha256": res.record["settings"].get("checkpoint_sha256")}

    def describe(self, s: Settings) -> str:
        return f"top-{s.get('top_k')} {self.MATRICES.get(s.get('matrix'), 'Hessian')} eigenpairs; {_evaluation_set(s)}"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        assert run is not None
        one = hessian_cost(run.get("model", "davidnet"), run["width"], settings["top_k"], settings["num_samples"])
        return 2 * one if settings.get("matrix") == "residual" else one  # R = H - G: two products per vector


class Outstats(StageKind):
    name = "outstats"

    def check(self, settings: Settings) -> None:
        _eval_options(self.name, settings)

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..api import output_stats

        res = output_stats(checkpoint_of(inputs), device=env["device"], quiet=env["quiet"],
                           eigvecs=str(inputs["hessian"]), **settings)
        res.write(fresh(out))
        return {"checkpoint_sha256": res.summary["settings"].get("checkpoint_sha256")}

    def describe(self, s: Settings) -> str:
        return f"output-statistic gradients, perturbations, spans, projected Hessian; {_evaluation_set(s)}"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        assert run is not None
        model, width, n = run.get("model", "davidnet"), run["width"], settings["num_samples"]
        k = settings.get("project_k") or inputs["hessian"]["top_k"]  # the projected Hessian's eigenpairs
        return hessian_cost(model, width, k, n) + 40 * n * image_cost(model, width)


class Series(StageKind):
    name = "series"

    def check(self, settings: Settings) -> None:
        _eval_options(self.name, settings)

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..curvature.series import run_hessian_series

        res = run_hessian_series(inputs["run"], _eval_options(self.name, settings), device=env["device"],
                                 quiet=env["quiet"])
        res.write(fresh(out))
        return {"hvps_total": res.record["hvps_total"], "checkpoints": len(res.record["checkpoints"])}

    def describe(self, s: Settings) -> str:
        return (f"top-{s.get('top_k')} Hessian eigenpairs of every saved checkpoint (warm-started); "
                f"{_evaluation_set(s)}")

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        assert run is not None
        n_ckpt = run["epochs"] // run["save_every"]
        return n_ckpt * 0.7 * hessian_cost(run.get("model", "davidnet"), run["width"], settings["top_k"],
                                           settings["num_samples"])


class Halves(StageKind):
    """lambda1 on two disjoint halves of the evaluation set (`bnlab.curvature.halves`): a sample check."""

    name = "halves"

    def check(self, settings: Settings) -> None:
        _eval_options("hessian", {**settings, "top_k": 1})

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..context import EvalSpec, build_context
        from ..curvature.halves import lambda1_halves

        s = dict(settings)
        spec = EvalSpec(num_samples=s.pop("num_samples"), batch_size=s.pop("batch_size"))
        rec = lambda1_halves(build_context(str(checkpoint_of(inputs)), spec, device=env["device"]),
                             quiet=env["quiet"], **s)
        write_json(fresh(out) / "halves.json", rec)
        return {"lambda1": rec["lambda1"], "spread": rec["spread"]}

    def describe(self, s: Settings) -> str:
        return f"Hessian lambda1 on two disjoint halves of the evaluation set; {_evaluation_set(s)}"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        assert run is not None  # two k = 1 solves on half the images each
        return hessian_cost(run.get("model", "davidnet"), run["width"], 1, settings["num_samples"])


class Dynamics(StageKind):
    name = "dynamics"

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..dynamics.options import DynamicsOptions, run_dynamics

        res = run_dynamics(inputs["run"], DynamicsOptions(**tuples(settings)))
        res.write(fresh(out))
        return {"aggregate": res.report.aggregate}

    def describe(self, s: Settings) -> str:
        return f"bnlab dynamics (per layer{' and channel' if s.get('channels') else ''})"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        assert run is not None
        return 5 + 3e-6 * train_steps(run) / run["log_every"] * (30 + 35 * run["width"])


class Sweep(StageKind):
    name = "sweep"

    def check(self, settings: Settings) -> None:
        from ..sweep import Grid, parse_grid

        s = tuples(settings)
        Grid(axes=parse_grid(s["grid"]), base=tuples(s["base"]), variant=s["variant"]).validate()

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..sweep import Grid, parse_grid, run_sweep, summarise_sweep
        from ..sweep.runner import GRID_FILE

        grid = Grid(axes=parse_grid(settings["grid"]), base=with_data(settings["base"], env),
                    variant=settings["variant"], threads=int(env.get("threads") or torch.get_num_threads()))
        if (out / GRID_FILE).is_file() and read_json(out / GRID_FILE) != read_json_roundtrip(grid.to_dict()):
            fresh(out)  # a sweep of other threads or another data path: start it again
        outcome = run_sweep(grid, out, jobs=1, device=env["device"], quiet=env["quiet"])
        if outcome.failed:
            raise BnlabError(f"sweep point(s) failed: {'; '.join(outcome.failed.values())}")
        summary = summarise_sweep(out, grid)
        return {"points": {p["name"]: p["status"] for p in summary["points"]}}

    def describe(self, s: Settings) -> str:
        b = s["base"]
        return (f"sweep {s['grid']}: davidnet width {b['width']}, batch {b['batch_size']}, {b['epochs']} epochs, "
                f"constant lr")

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        n_points = math.prod(len(item.split("=")[1].split(",")) for item in settings["grid"].split())
        return n_points * train_cost({**settings["base"], "lr": 0.1}) + 5


class Collapse(StageKind):
    name = "collapse"

    def check(self, settings: Settings) -> None:
        from ..outstats.collapse import CollapseOptions

        CollapseOptions(**tuples(settings)).validate()

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..device import resolve_device
        from ..outstats.collapse import CollapseOptions, run_collapse

        res = run_collapse(CollapseOptions(**settings), device=resolve_device(env["device"]))
        res.write(fresh(out))
        return {}

    def describe(self, s: Settings) -> str:
        return f"fully connected ReLU net at init: depth {s['depth']}, width {s['width']}, {s['n_inputs']} inputs"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        return 2 * 2 * settings["depth"] * settings["width"] ** 2 * settings["n_inputs"] / 2e10 + 2


class InitShares(StageKind):
    name = "init_shares"

    def check(self, settings: Settings) -> None:
        from ..context import EvalSpec

        EvalSpec(num_samples=settings["num_samples"], batch_size=settings["batch_size"]).validate()

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..config import DataSpec
        from ..data import load_data
        from ..device import resolve_device
        from ..outstats.init_shares import davidnet_init_shares

        s = with_data(settings, env)
        width, n, bs = s.pop("width"), s.pop("num_samples"), s.pop("batch_size")
        spec = DataSpec(**{k: v for k, v in s.items() if k in {f.name for f in dataclasses.fields(DataSpec)}})
        data = load_data(spec, resolve_device(env["device"]))
        shares = davidnet_init_shares(width, data, n, bs)
        write_json(fresh(out) / "init_shares.json", {"width": width, "num_samples": n, "batch_size": bs,
                                                     "data_source": data.source, "shares": shares})
        return {}

    def describe(self, s: Settings) -> str:
        return f"DavidNet width {s['width']} at init, {s['num_samples']} images in batches of {s['batch_size']}"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        return 4 * settings["num_samples"] * image_cost("davidnet", settings["width"]) + 3


class Exact(StageKind):
    name = "exact"

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..dynamics.exact import exp_lr_equivalence, pythagoras_check

        common = {"width": settings["width"], "n": settings["images"], "batch_size": settings["batch_size"]}
        rec = {"pythagoras": pythagoras_check(steps=settings["pythagoras_steps"], **common),
               "exp_lr": exp_lr_equivalence(steps=settings["exp_steps"], **common)}
        write_json(fresh(out) / "exact.json", rec)
        return {}

    def describe(self, s: Settings) -> str:
        return (f"float64 DavidNet width {s['width']}, every parameter scale-invariant: {s['pythagoras_steps']} plain "
                f"SGD steps, {s['exp_steps']} steps wd vs exponential lr")

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        s = settings
        return (3 * s["exp_steps"] + s["pythagoras_steps"]) * s["batch_size"] * 0.005  # float64: slow kernels


KINDS: dict[str, StageKind] = {k.name: k for k in (Train(), Freeze(), Hessian(), Outstats(), Series(), Halves(),
                                                   Dynamics(), Sweep(), Collapse(), InitShares(), Exact())}


def kind(name: str) -> StageKind:
    """The stage kind called `name` (BnlabError for an unknown one)."""
    try:
        return KINDS[name]
    except KeyError:
        raise BnlabError(f"unknown stage kind {name!r}") from None
