"""The bag-of-tricks ablation: Page's nine steps (`bnlab.recipes.STEPS`), each trained with several seeds.

`run_ablation(out, options)` trains every (step, seed) into OUT/runs/NN_STEP/seed_S, an ordinary run
directory (a finished run is reused, an interrupted one resumed: rerunning the same command continues),
then writes ablation.json and ablation.csv: per step its accuracy (mean ± standard error over the
seeds, plus each seed's), its training wall time (seconds per run and ms per optimizer step, the
evaluation excluded, as the post's times) and the post's V100 time. `bnlab ablate` is a thin CLI over it.

Scale: `overrides` replace the steps' data/model options (width, dataset, subset, batch size, ...);
`epoch_scale` multiplies every step's epochs (rounded, at least 1), the lr knots stretching with them.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import validate as check
from .config import TrainConfig
from .errors import BnlabError
from .io.folder import result_folder
from .io.jsonfile import read_json, write_json
from .io.textfile import write_dict_rows
from .options import opt
from .progress import Progress
from .recipes import STEP_NAMES, STEPS, Step, recipe_config
from .rundir import LOCK_NAME, check_out_dir
from .sweep.runner import DONE, run_point

RESULT_JSON = "ablation.json"
RESULT_CSV = "ablation.csv"
CSV_COLUMNS = ("index", "step", "trick", "epochs", "seeds", "finished", "test_acc_mean", "test_acc_se",
               "train_s_mean", "train_s_se", "ms_per_step_mean", "post_seconds")


@dataclass(frozen=True)
class AblationOptions:
    steps: tuple[str, ...] | None = opt(None, help=f"Comma-separated steps, in order: {', '.join(STEP_NAMES)}.",
                                        default_text="all nine, in the post's order")
    seeds: tuple[int, ...] = opt((0, 1, 2), help="Comma-separated seeds, one run per step each.", domain=">= 0, "
                                 "each once")
    epoch_scale: float = opt(1.0, help="Multiply every step's epochs (rounded, at least 1); the lr knots stretch "
                             "with them.", unit="x each step's epochs", domain="> 0")
    overrides: dict[str, Any] = field(default_factory=dict)  # flat make_config options applied to every step
    retries: int = opt(0, help="Retries of a run that crashed.", domain=">= 0")
    # The post's 0.99 every 5 steps spans ~5 epochs of 97 steps; on a subset with fewer steps per epoch the
    # average reaches back to the early weights, so small-scale ablations need a shorter horizon.
    ema_momentum: float | None = opt(None, help="EMA momentum of the steps that average the weights (ema, tta); "
                                     "on a subset of S steps per epoch, 0.99^(97/S) keeps the post's horizon.",
                                     unit="per step", domain="(0, 1)",
                                     default_text="the recipe's 0.99")

    def chosen(self) -> list[tuple[int, Step]]:
        names = self.steps or STEP_NAMES
        unknown = [n for n in names if n not in STEP_NAMES]
        if unknown:
            raise BnlabError(f"unknown ablation step {unknown[0]!r}; choose from {', '.join(STEP_NAMES)}")
        return [(i, s) for i, s in enumerate(STEPS) if s.name in names]

    def validate(self) -> None:
        self.chosen()
        if not self.seeds:
            raise BnlabError("--seeds needs at least one seed")
        for s in self.seeds:
            check.integer("--seeds", s, 0)
        if len(set(self.seeds)) != len(self.seeds):
            raise BnlabError(f"--seeds repeats a seed: {list(self.seeds)}")
        check.positive("--epoch-scale", self.epoch_scale)
        check.integer("--retries", self.retries, 0)
        if self.ema_momentum is not None:
            check.in_range("--ema-momentum", self.ema_momentum, 0.0, 1.0, low_open=True, high_open=True)
        hints = {"epochs": "(use --epoch-scale)", "ema_momentum": "(use --ema-momentum)"}
        for key in ("epochs", "lr_knots", "seed", "recipe", "ema_momentum"):
            if key in self.overrides:
                raise BnlabError(f"the ablation sets {key} per step; it cannot be overridden " + hints.get(key, ""))

    def config(self, step: Step, seed: int) -> TrainConfig:
        epochs = max(1, round(step.epochs * self.epoch_scale))
        ema = ({"ema_momentum": self.ema_momentum}
               if self.ema_momentum is not None and step.options.get("ema_momentum") else {})
        return recipe_config(step.name, epochs=epochs, seed=seed, **{"log_every": 0, **self.overrides, **ema})


def run_dir(out: Path, index: int, step: Step, seed: int) -> Path:
    return out / "runs" / f"{index:02d}_{step.name}" / f"seed_{seed}"


@dataclass
class AblationResult:
    rows: list[dict[str, Any]]
    settings: dict[str, Any]

    def write(self, out: str | os.PathLike) -> list[Path]:
        out = result_folder(out)
        return [write_dict_rows(out / RESULT_CSV, CSV_COLUMNS, self.rows),
                write_json(out / RESULT_JSON, {"settings": self.settings, "steps": self.rows})]


def _prepare(out: Path) -> None:
    check_out_dir(out, force=True)  # a path that is a file, a dangling link, an unwritable folder
    if out.exists() and not (out / "runs").is_dir() and any(c.name != LOCK_NAME for c in out.iterdir()):
        raise BnlabError(f"{out} is not empty and holds no ablation (runs/); choose another --out")
    (out / "runs").mkdir(parents=True, exist_ok=True)


def run_ablation(out: str | os.PathLike, options: AblationOptions, *, device: str = "cpu",
                 quiet: bool = False) -> AblationResult:
    """Train what is not done yet, then summarise every chosen step (see the module docs)."""
    options.validate()
    out = Path(out)
    plan = [(i, s, seed, options.config(s, seed)) for i, s in options.chosen() for seed in options.seeds]
    _prepare(out)
    bar = Progress(len(plan), "ablation runs", quiet=quiet, unit="run")
    for i, s, seed, config in plan:
        rd = run_dir(out, i, s, seed)
        rd.parent.mkdir(parents=True, exist_ok=True)
        status, msg = run_point(config.to_dict(), str(rd), device, torch.get_num_threads(), options.retries, True)
        if status not in DONE:
            raise BnlabError(f"ablation run {rd} did not finish ({status}: {msg}); rerun the command to resume it")
        bar.update(1, f"{s.name} seed {seed}: {status}")
    bar.close()
    rows = [summarise_step(out, i, s, options) for i, s in options.chosen()]
    settings = {"seeds": list(options.seeds), "epoch_scale": options.epoch_scale, "overrides": options.overrides,
                "ema_momentum": options.ema_momentum,
                "device": str(device), "torch_threads": torch.get_num_threads(),
                "timing": "training time only (evaluation excluded), summed over the run's epochs"}
    return AblationResult(rows, settings)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n); NaN for one value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    if n == 1:
        return m, math.nan
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def summarise_step(out: Path, index: int, step: Step, options: AblationOptions) -> dict[str, Any]:
    runs = []
    for seed in options.seeds:
        rd = run_dir(out, index, step, seed)
        st = read_json(rd / "status.json", "run status")
        metrics = _metrics(rd)
        last = metrics[-1] if metrics else {}
        train_s = sum(float(m["train_time"]) for m in metrics)
        steps = int(float(last.get("step", 0))) if last else 0
        runs.append({"seed": seed, "status": st.get("status"), "test_acc": float(last.get("test_acc", "nan")),
                     "train_s": train_s, "steps": steps, "ms_per_step": 1000 * train_s / steps if steps else math.nan})
    finished = [r for r in runs if r["status"] == "finished"]
    acc, acc_se = mean_se([r["test_acc"] for r in finished])
    t, t_se = mean_se([r["train_s"] for r in finished])
    ms, _ = mean_se([r["ms_per_step"] for r in finished])
    config = options.config(step, options.seeds[0])
    return {"index": index, "step": step.name, "trick": step.trick, "epochs": config.epochs,
            "seeds": len(runs), "finished": len(finished), "test_acc_mean": acc, "test_acc_se": acc_se,
            "train_s_mean": t, "train_s_se": t_se, "ms_per_step_mean": ms, "post_seconds": step.post_seconds,
            "config": {"lr": config.lr, "lr_knots": list(config.lr_knots or ()),
                       "lr_mults": list(config.lr_mults or ()),
                       "model": asdict(config.model), "label_smoothing": config.label_smoothing,
                       "bias_scale": config.bias_scale, "ema_momentum": config.ema_momentum, "tta": config.tta,
                       "cutout": config.data.cutout},
            "runs": runs}


def _metrics(rd: Path) -> list[dict[str, str]]:
    try:
        with open(rd / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []
