"""The kinds of stage `bnlab reproduce` runs, one class each. `settings_type` is the dataclass a stage's
settings are (the option class of the command the stage runs, given flat: a nested option class's fields
beside the outer one's); `check` loads them through `bnlab.options` (unknown keys and wrong types refused,
then the class's `validate()`: what the stage's command would refuse, refused when the plan is built); `run`
calls the package's own entry point (`train`, `freeze_checkpoint`, `bnlab.hessian`, `bnlab.output_stats`,
`run_dynamics`, `run_hessian_series`, `run_sweep`, `run_collapse`, the exact simulations, the init shares)
and writes what that command writes into the stage's ``out`` folder, `describe` is the report's line for it
and `cost` its estimated seconds on one idle CPU core (only the ETA uses it).

`cost` gets the settings of the stages it reads (`inputs`, by role) and of the training run it analyses
(`run`, followed through freezes; None for a stage that reads no run).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import validate as check
from ..checkpoint import file_hash
from ..config import MAX_SYNTHETIC, DataSpec, TrainConfig, make_config
from ..context import EvalSpec, batch_sizes
from ..curvature.hessian import HessianOptions
from ..dynamics.options import DynamicsOptions
from ..errors import BnlabError
from ..io.jsonfile import read_json, write_json
from ..models import MAX_WIDTH
from ..options import flat_classes, flat_fields, load_flat, load_flat_into, opt
from ..outstats.collapse import CollapseOptions
from ..outstats.run import OutstatsOptions
from ..sweep.grid import Grid, parse_grid

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


@contextlib.contextmanager
def _in_stage(what: str) -> Iterator[None]:
    """A refusal raised inside names the stage it concerns ("stage exact_invariant: width must be ...")."""
    try:
        yield
    except BnlabError as e:
        raise BnlabError(f"{what}: {e}") from None


class StageKind:
    """One kind of stage; subclasses set `name` and `settings_type` and implement `run`, `describe` and `cost`."""

    name: ClassVar[str]
    # The dataclass a stage's settings are, given flat: its fields and, beside them, those of its nested
    # option dataclasses (HessianOptions's top_k beside its eval's num_samples). `check` loads them into it.
    settings_type: ClassVar[type]
    # The option names the kind reads (None: every one of settings_type): any other is refused, not ignored.
    accepts: ClassVar[tuple[str, ...] | None] = None
    # Bump when the kind's code changes what it writes: cached outputs of the old code are then recomputed.
    version: ClassVar[int] = 1

    def load(self, settings: Settings, stage: str | None = None) -> Any:
        """The settings as a checked `settings_type` instance: an unknown key, a value of the wrong type, a missing
        required one and (through the instance's `validate()`) a value out of its domain are each refused in one
        line naming the stage (`stage`, default the kind) and the field."""
        what = f"stage {stage or self.name}"
        obj = self.typed(settings, what)
        validate = getattr(obj, "validate", None)
        if validate is not None:
            with _in_stage(what):
                validate()
        return obj

    def typed(self, settings: Settings, what: str) -> Any:
        """The settings as a `settings_type` instance, every value type-checked (domains are `validate`'s)."""
        return load_flat_into(self.settings_type, settings, what=what, only=self.accepts)

    def check(self, settings: Settings, stage: str | None = None) -> None:
        """Refuse (BnlabError) what the stage's command would refuse, before anything runs (see `load`)."""
        self.load(settings, stage)

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, settings: Settings) -> str:
        raise NotImplementedError

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        raise NotImplementedError


def _all_but(cls: type, *names: str) -> tuple[str, ...]:
    """Every flat option of `cls` except `names` (which the kind sets itself or refuses)."""
    return tuple(n for n in flat_fields(flat_classes(cls)) if n not in names)


class Train(StageKind):
    name = "train"
    settings_type = TrainConfig  # make_config's flat options: TrainConfig's, ModelSpec's and DataSpec's fields

    def typed(self, settings: Settings, what: str) -> TrainConfig:
        values = load_flat(flat_classes(TrainConfig), settings, what=what)
        with _in_stage(what):  # the variant's presets (norm, lr), then TrainConfig.validate
            return make_config(**values)

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..train import train

        cfg = self.load(with_data(settings, env))
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


@dataclass(frozen=True)
class FreezeSettings:
    """A freeze reads only its run's checkpoint: it has no settings."""


class Freeze(StageKind):
    name = "freeze"
    settings_type = FreezeSettings

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


def _evaluation_set(s: Settings) -> str:
    return (f"{s['num_samples']} training images in fixed batches of {s['batch_size']}"
            f"{', loss ' + s['loss_scale'] if s.get('loss_scale') else ''}, tol {s.get('tol')}")


class Hessian(StageKind):
    name = "hessian"
    settings_type = HessianOptions  # bnlab hessian's options, the evaluation set's (EvalSpec) beside them
    MATRICES: ClassVar[dict[str, str]] = {"ggn": "Gauss-Newton", "residual": "residual (Hessian - Gauss-Newton)"}

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
    settings_type = OutstatsOptions
    accepts = _all_but(OutstatsOptions, "eigvecs")  # the eigenvectors are its hessian input's

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
    settings_type = HessianOptions
    accepts = _all_but(HessianOptions, "warm_start")  # each checkpoint starts from the previous one's vectors

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..curvature.series import run_hessian_series

        res = run_hessian_series(inputs["run"], self.load(settings), device=env["device"], quiet=env["quiet"])
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
    settings_type = HessianOptions  # with top_k 1; of the rest, what lambda1_halves reads
    accepts = (*(f.name for f in dataclasses.fields(EvalSpec)), "loss_scale", "tol", "seed", "params")

    def typed(self, settings: Settings, what: str) -> HessianOptions:
        return dataclasses.replace(super().typed(settings, what), top_k=1)

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..context import build_context
        from ..curvature.halves import lambda1_halves

        o = self.load(settings)
        rec = lambda1_halves(build_context(str(checkpoint_of(inputs)), o.eval, device=env["device"]),
                             loss_scale=o.loss_scale, tol=o.tol, seed=o.seed, params=o.params, quiet=env["quiet"])
        write_json(fresh(out) / "halves.json", rec)
        return {"lambda1": rec["lambda1"], "spread": rec["spread"]}

    def describe(self, s: Settings) -> str:
        return f"Hessian lambda1 on two disjoint halves of the evaluation set; {_evaluation_set(s)}"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        assert run is not None  # two k = 1 solves on half the images each
        return hessian_cost(run.get("model", "davidnet"), run["width"], 1, settings["num_samples"])


class Dynamics(StageKind):
    name = "dynamics"
    settings_type = DynamicsOptions

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..dynamics.options import run_dynamics

        res = run_dynamics(inputs["run"], self.load(settings))
        res.write(fresh(out))
        return {"aggregate": res.report.aggregate}

    def describe(self, s: Settings) -> str:
        return f"bnlab dynamics (per layer{' and channel' if s.get('channels') else ''})"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        assert run is not None
        return 5 + 3e-6 * train_steps(run) / run["log_every"] * (30 + 35 * run["width"])


class Sweep(StageKind):
    name = "sweep"
    # Its settings are a Grid's: "grid" its axes as the --grid spec ("lr=0.1,0.2 wd=5e-4"), "base" make_config's
    # flat options (a train stage's), "variant"; its threads are the reproduction's (--threads, at run time).
    settings_type = Grid

    def typed(self, settings: Settings, what: str) -> Grid:
        rest = {k: v for k, v in settings.items() if k != "grid"} if isinstance(settings, Mapping) else settings
        values = load_flat((Grid,), rest, what=what, only=("base", "variant"))
        spec = settings.get("grid")
        if not isinstance(spec, str):
            raise BnlabError(f"not a valid bnlab {what} (field grid: expected the --grid spec as a str, got "
                             f"{spec!r})")
        base = load_flat(flat_classes(TrainConfig), values.get("base", {}), what=f"{what} base")
        with _in_stage(what):
            return Grid(axes=parse_grid(spec), base=base, variant=values.get("variant"))

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..sweep import run_sweep, summarise_sweep
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
    settings_type = CollapseOptions

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..device import resolve_device
        from ..outstats.collapse import run_collapse

        res = run_collapse(self.load(settings), device=resolve_device(env["device"]))
        res.write(fresh(out))
        return {}

    def describe(self, s: Settings) -> str:
        return f"fully connected ReLU net at init: depth {s['depth']}, width {s['width']}, {s['n_inputs']} inputs"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        return 2 * 2 * settings["depth"] * settings["width"] ** 2 * settings["n_inputs"] / 2e10 + 2


MAX_STEPS = 100_000  # of an exact simulation: far above any useful count; a larger one is a typo (days of float64)


def _check_batches(n: int, batch_size: int) -> None:
    """n images in fixed batches of batch_size, the last one smaller: each batch needs 2 images (BN statistics)."""
    check.integer("batch_size", batch_size, 2, n)
    if min(batch_sizes(n, batch_size)) < 2:
        raise BnlabError(f"batch_size {batch_size} leaves a last batch of 1 image of the {n}; batch statistics "
                         "need 2")


@dataclass(frozen=True)
class InitSharesSettings:
    """DavidNet at init, with and without BN: the channel-mean share per layer on a fixed set of training images."""

    width: int = opt(help="DavidNet width (channels of the prep layer).", unit="channels", domain=f"1..{MAX_WIDTH}")
    num_samples: int = opt(help="Fixed class-balanced training images.", unit="images",
                           domain="multiple of 10, at most the training set")
    batch_size: int = opt(help="Fixed batches of them (the last one smaller).", unit="images per batch",
                          domain="2..num_samples, the last batch too")
    data: DataSpec = dataclasses.field(default_factory=DataSpec)  # given flat: dataset, subset, synthetic_train...

    def validate(self) -> None:
        check.integer("width", self.width, 1, MAX_WIDTH)
        self.data.validate()
        EvalSpec(num_samples=self.num_samples, batch_size=self.batch_size).validate()
        if self.num_samples > self.data.train_size():
            raise BnlabError(f"num_samples {self.num_samples} is larger than the training set "
                             f"({self.data.train_size()} images)")
        _check_batches(self.num_samples, self.batch_size)


class InitShares(StageKind):
    name = "init_shares"
    settings_type = InitSharesSettings

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..data import load_data
        from ..device import resolve_device
        from ..outstats.init_shares import davidnet_init_shares

        o = self.load(with_data(settings, env))
        data = load_data(o.data, resolve_device(env["device"]))
        shares = davidnet_init_shares(o.width, data, o.num_samples, o.batch_size)
        write_json(fresh(out) / "init_shares.json", {"width": o.width, "num_samples": o.num_samples,
                                                     "batch_size": o.batch_size, "data_source": data.source,
                                                     "shares": shares})
        return {}

    def describe(self, s: Settings) -> str:
        return f"DavidNet width {s['width']} at init, {s['num_samples']} images in batches of {s['batch_size']}"

    def cost(self, settings: Settings, inputs: dict[str, Settings], run: Settings | None) -> float:
        return 4 * settings["num_samples"] * image_cost("davidnet", settings["width"]) + 3


@dataclass(frozen=True)
class ExactSettings:
    """The float64 simulations of `bnlab.dynamics.exact` (F1's Pythagoras check, F4b's wd vs exponential lr)."""

    width: int = opt(help="Width of the scale-invariant float64 DavidNet.", unit="channels",
                     domain=f"1..{MAX_WIDTH}")
    images: int = opt(help="Synthetic training images (cycled in fixed batches).", unit="images",
                      domain=f"10..{MAX_SYNTHETIC}")
    batch_size: int = opt(help="Images per step.", unit="images per step", domain="2..images, the last batch too")
    pythagoras_steps: int = opt(help="Plain SGD steps of the Pythagoras check.", unit="steps",
                                domain=f"1..{MAX_STEPS}")
    exp_steps: int = opt(help="Steps of weight decay vs exponential lr.", unit="steps", domain=f"1..{MAX_STEPS}")

    def validate(self) -> None:
        check.integer("width", self.width, 1, MAX_WIDTH)
        check.integer("images", self.images, 10, MAX_SYNTHETIC)  # the synthetic task's training set
        _check_batches(self.images, self.batch_size)
        check.integer("pythagoras_steps", self.pythagoras_steps, 1, MAX_STEPS)
        check.integer("exp_steps", self.exp_steps, 1, MAX_STEPS)


class Exact(StageKind):
    name = "exact"
    settings_type = ExactSettings

    def run(self, settings: Settings, out: Path, inputs: dict[str, Path], env: dict[str, Any]) -> dict[str, Any]:
        from ..dynamics.exact import exp_lr_equivalence, pythagoras_check

        o = self.load(settings)
        common = {"width": o.width, "n": o.images, "batch_size": o.batch_size}
        rec = {"pythagoras": pythagoras_check(steps=o.pythagoras_steps, **common),
               "exp_lr": exp_lr_equivalence(steps=o.exp_steps, **common)}
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
