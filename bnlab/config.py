"""Run configuration: what a training run does, as plain JSON-able dataclasses.

A `TrainConfig` is stored in `config.json` of every run and inside every checkpoint; the
analyses rebuild the model and find the data from it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from . import validate as check
from .errors import BnlabError
from .models import DEFAULT_ACT_PARAM, DEFAULT_CLASSIFIER_SCALE, ModelSpec
from .norms import DEFAULT_AFFINE
from .options import load, opt, units_table

# --variant presets: the normalisation each one means (the first is the default). Other options
# stay free. The simple net of the batch-norm post keeps BN's affine frozen (gamma=1, beta=0).
VARIANTS = {"bn": ("bn", "bn_fixed_affine"), "no_bn": ("none",), "frozen_bn": ("frozen",),
            "ghost_bn": ("ghost",)}
# Default peak lr per normalisation when --lr is not given (mean-loss SGD units, as TrainConfig.lr).
# BN makes the convs before it scale-invariant, so DavidNet tolerates Page's 0.4: a large step grows
# ||w|| and so shrinks the next effective step. Without batch statistics nothing bounds the step; at
# 0.4 a no-BN DavidNet dies and a frozen-BN one diverges within the warm-up. A frozen norm's fixed
# 1/std would also multiply the step on the normalised weights (lr/var, 4-12x lr with the default
# init); its DavidNet convs are He-scaled for that reason (bnlab.models), which gives it the no-BN lr.
# Chosen from CIFAR-10 lr scans (README, "Presets").
PRESET_LR = {"bn": 0.4, "bn_fixed_affine": 0.4, "ghost": 0.4, "none": 0.05, "frozen": 0.05}
DATASETS = ("cifar10", "synthetic")
CIFAR_SIZES = (50000, 10000)  # training and test images of the official release
MAX_SYNTHETIC = 1_000_000  # images of the synthetic task (held in memory as uint8)
MAX_EPOCHS = 100_000
SCHEDULES = ("piecewise", "exp", "const")
# The largest lr a schedule may name (--lr, and --lr times the largest --lr-mults). A diverging lr is a
# result (status "diverged"; tests drive runs into divergence with lr up to 1e12); one near 1e308 is a
# typo whose updates overflow even float64 before divergence can be detected, so it is refused up front.
MAX_LR = 1e30


@dataclass(frozen=True)
class DataSpec:
    dataset: str = opt("cifar10", help="cifar10, or synthetic (a small learnable task held in memory).",
                       choices=DATASETS)
    data_dir: str | None = opt(None, help="CIFAR-10 folder or tarball.", path=True,
                               default_text="$BNLAB_DATA or ~/.cache/bnlab, downloaded if missing")
    subset: int | None = opt(None, help="Class-balanced training subset size.", unit="images",
                             domain="multiple of 10, at most the training set", default_text="all")
    test_subset: int | None = opt(None, help="Class-balanced test subset size.", unit="images",
                                  domain="multiple of 10, at most the test set", default_text="all")
    crop: bool = opt(True, help="Reflect-pad 4 + random 32x32 crop.", flag="--crop/--no-crop")
    flip: bool = opt(True, help="Random horizontal flip.", flag="--flip/--no-flip")
    cutout: int = opt(8, help="Cutout box size (0: off).", unit="pixels (side of the square)", domain="0..32")
    synthetic_train: int = opt(5000, help="Training images of the synthetic task.", unit="images",
                               domain=f"10..{MAX_SYNTHETIC}", cli=False)
    synthetic_test: int = opt(1000, help="Test images of the synthetic task.", unit="images",
                              domain=f"10..{MAX_SYNTHETIC}", cli=False)

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise BnlabError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        check.integer("--cutout", self.cutout, 0, 32)
        check.integer("synthetic_train", self.synthetic_train, 10, MAX_SYNTHETIC)
        check.integer("synthetic_test", self.synthetic_test, 10, MAX_SYNTHETIC)
        for name, whole in zip(("subset", "test_subset"), self.full_sizes()):
            n = check.optional_integer(f"--{name.replace('_', '-')}", getattr(self, name))
            if n is not None and (n < 10 or n % 10):
                raise BnlabError(f"--{name.replace('_', '-')} must be a positive multiple of 10 "
                                 f"(class-balanced), got {n}")
            if n is not None and n > whole:
                raise BnlabError(f"--{name.replace('_', '-')} {n} is larger than the {self.dataset} "
                                 f"{'training' if name == 'subset' else 'test'} set ({whole} images)")

    def full_sizes(self) -> tuple[int, int]:
        """(training, test) images of the whole dataset (an upper bound for a CIFAR-10 folder)."""
        return CIFAR_SIZES if self.dataset == "cifar10" else (self.synthetic_train, self.synthetic_test)

    def train_size(self) -> int:
        """Training images a run sees at most (the subset, else the whole set)."""
        return self.subset or self.full_sizes()[0]

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse a batch larger than the training set can be (known before the data are loaded)."""
        if batch_size > self.train_size():
            raise BnlabError(f"--batch-size {batch_size} is larger than the training set ({self.train_size()} "
                             "images)")


@dataclass(frozen=True)
class TrainConfig:
    # Hyper-parameters with their units, airbench-style; torch.optim.SGD's conventions on the mean batch loss.
    variant: str = opt("bn", help="Preset normalisation and default lr (docs/presets-and-units.md).",
                       choices=tuple(sorted(VARIANTS)), default_text="bn (custom when --norm is given)")
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    epochs: int = opt(24, help="Epochs.", unit="passes over the training set", domain=f"1..{MAX_EPOCHS}")
    batch_size: int = opt(512, help="Batch size (under torchrun, the global batch).", unit="images per step",
                          domain=f"1..{MAX_SYNTHETIC}, at most the training set")
    lr: float = opt(0.4, help="Peak lr (piecewise), lr0 (exp) or the constant lr (const).",
                    unit="per step, on the batch-mean loss (torch SGD; Page's code: lr / batch on the summed loss)",
                    domain=f"(0, {MAX_LR:g}]", default_text="the variant's: " + ", ".join(
                        f"{v} {PRESET_LR[VARIANTS[v][0]]:g}" for v in VARIANTS))
    lr_schedule: str = opt("piecewise", help="piecewise: linear between knots; exp: x2 every 2 epochs; const.",
                           choices=SCHEDULES)
    lr_knots: tuple[float, ...] | None = opt(None, help="Piecewise knots, comma-separated (e.g. 0,5,24).",
                                             unit="epochs", domain="finite, increasing",
                                             default_text="0,5/24 x epochs,epochs")
    lr_mults: tuple[float, ...] | None = opt(None, help="lr multiples at the knots, comma-separated (e.g. 0,1,0).",
                                             unit="x --lr", domain=">= 0, one per knot", default_text="0,1,0")
    momentum: float = opt(0.9, help="SGD momentum μ.", unit="per step (torch SGD buffer: b = μb + g)",
                          domain="[0, 1)")
    nesterov: bool = opt(True, help="Nesterov momentum.", flag="--nesterov/--no-nesterov")
    weight_decay: float = opt(5e-4, help="Weight decay λ.", flag="--wd",
                              unit="λw added to the gradient of the batch-mean loss (torch SGD; Page's code: "
                              "λ x batch on the summed loss)", domain=">= 0")
    label_smoothing: float = opt(0.0, help="Label smoothing of the cross-entropy.",
                                 unit="probability mass spread over the classes", domain="[0, 1)")
    seed: int = opt(0, help="Seed of init, data order, augmentation.", domain="0..2^32-1")
    log_every: int = opt(1, help="Dynamics log every k steps (0: off).", unit="steps", domain=">= 0")
    log_channels: bool = opt(False, help="Also log per-output-channel dynamics.")
    log_grad_lags: int = opt(0, help="Also log cos(g_t, g_{t-k}), k = 1..K, per tensor at each logged step "
                             "(dynamics_gradcorr.csv; keeps K gradient copies): the autocorrelation the "
                             "correlated equilibrium angle reads.", unit="optimizer steps", domain="0..32")
    save_every: int = opt(0, help="ckpt_epoch_NNN.pt every k epochs (0: only last.pt and final.pt).",
                          unit="epochs", domain=">= 0")
    amp: str = opt("auto", help="auto: bf16 autocast on CUDA, fp32 on CPU; off forces fp32.",
                   choices=("auto", "off", "bf16"))
    # Under torchrun: BN statistics over the global batch (the function of one process) instead of
    # each rank's rows (ghost BN of world-size splits); see bnlab.ddp. No effect in one process.
    sync_bn: bool = opt(False, help="Under torchrun: BN statistics over the global batch (as one process) "
                        "instead of each process's rows (= ghost BN with one split per process).")
    # Bag-of-tricks options (bnlab.recipes), each off by default (bnlab.ema for the EMA).
    bias_scale: float = opt(1.0, help="Biases train with lr x this and weight decay / this (Page: 64).",
                            unit="x --lr (and / --wd) for biases", domain="> 0")
    ema_momentum: float = opt(0.0, help="Evaluate an EMA of the weights with this momentum (0: off; Page: 0.99).",
                              flag="--ema", unit="per step (applied as momentum^k every k steps)", domain="[0, 1)")
    ema_every: int = opt(5, help="Update the EMA every k steps.", unit="steps", domain=">= 1")
    tta: bool = opt(False, help="Evaluate the mean logits of each image and its mirror.", flag="--tta/--no-tta")
    recipe: str | None = opt(None, help="A whole recipe: baseline (24 epochs, 94%) or bag-of-tricks (Page's post 8, "
                             "10 epochs); options given too override its settings.",
                             default_text="none (options only)")  # recorded: the recipe this config was made from

    def knots(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # Default: DavidNet's [0, 5, 24] shape, stretched to the run's length.
        default = (0.0, 5.0 * self.epochs / 24.0, float(self.epochs))
        knots = self.lr_knots if self.lr_knots is not None else default
        mults = self.lr_mults if self.lr_mults is not None else (0.0, 1.0, 0.0)
        return tuple(float(k) for k in knots), tuple(float(m) for m in mults)

    def validate(self) -> None:
        if self.variant not in (*VARIANTS, "custom"):
            raise BnlabError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        if self.variant in VARIANTS and self.model.norm not in VARIANTS[self.variant]:
            raise BnlabError(f"variant {self.variant} means norm {' or '.join(VARIANTS[self.variant])}, "
                             f"but norm {self.model.norm!r} was asked for; drop one of the two")
        self.model.validate()
        self.data.validate()
        check.integer("--epochs", self.epochs, 1, MAX_EPOCHS)
        check.integer("--batch-size", self.batch_size, 1, MAX_SYNTHETIC)  # no dataset here holds more images
        check.seed("--seed", self.seed)
        if self.model.norm == "ghost" and self.batch_size % self.model.ghost_splits:
            raise BnlabError(f"ghost BN with {self.model.ghost_splits} splits needs a batch size divisible "
                             f"by it, got {self.batch_size}")
        if self.lr_schedule not in SCHEDULES:
            raise BnlabError(f"unknown lr schedule {self.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
        check.in_range("--lr", self.lr, 0.0, MAX_LR, low_open=True)
        if self.lr_knots is not None:
            check.all_finite("--lr-knots", self.lr_knots)
        if self.lr_mults is not None:
            check.all_finite("--lr-mults", self.lr_mults, minimum=0.0)
        knots, mults = self.knots()
        if mults and self.lr * max(mults) > MAX_LR:
            raise BnlabError(f"--lr-mults {','.join(f'{m:g}' for m in mults)} with --lr {self.lr:g} peak at lr "
                             f"{self.lr * max(mults):g}; the largest lr allowed is {MAX_LR:g}")
        if len(knots) != len(mults) or len(knots) < 2:
            raise BnlabError("--lr-knots and --lr-mults need the same number (>= 2) of values")
        if any(b <= a for a, b in zip(knots, knots[1:])):
            raise BnlabError(f"--lr-knots must increase strictly, got {list(knots)}")
        if self.lr_schedule == "exp" and math.log2(self.lr) + self.epochs / 2 > 1000:  # 2^1024 overflows
            raise BnlabError(f"--lr-schedule exp doubles the lr every 2 epochs: {self.epochs} epochs overflow it; "
                             "use fewer epochs")
        if self.lr_schedule == "piecewise" and max(mults) == 0:
            raise BnlabError("--lr-mults are all zero: the lr would be 0 throughout")
        check.in_range("--momentum", self.momentum, 0.0, 1.0, high_open=True)
        if self.nesterov and self.momentum == 0:
            raise BnlabError("Nesterov needs momentum > 0; pass --no-nesterov for plain SGD")
        check.non_negative("--wd", self.weight_decay)
        check.in_range("--label-smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)
        check.integer("--log-every", self.log_every, 0)
        check.integer("--log-grad-lags", self.log_grad_lags, 0, 32)
        if self.log_grad_lags and not self.log_every:
            raise BnlabError("--log-grad-lags needs the dynamics log: give --log-every >= 1")
        check.integer("--save-every", self.save_every, 0)
        check.positive("--bias-scale", self.bias_scale)
        check.in_range("--ema", self.ema_momentum, 0.0, 1.0, high_open=True)
        check.integer("--ema-every", self.ema_every, 1)
        if self.amp not in ("auto", "off", "bf16"):
            raise BnlabError(f"--amp must be auto, off or bf16, got {self.amp!r}")
        if self.sync_bn and self.model.norm not in ("bn", "bn_fixed_affine"):
            raise BnlabError(f"--sync-bn needs a model with batch norm (norm bn or bn_fixed_affine); this one has "
                             f"norm {self.model.norm!r}" + (" (ghost BN keeps its own splits per rank)"
                                                             if self.model.norm == "ghost" else ""))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """The config stored in a config.json or checkpoint; fields of the wrong type are refused, unknown
        keys (of other versions) ignored."""
        # Configs written before defaults were resolved hold nulls; they mean the same values.
        return resolve_defaults(load(cls, d, what="run configuration"))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def make_config(variant: str | None = None, **options: Any) -> TrainConfig:
    """A validated TrainConfig from a variant preset plus flat options.

    Model options (`width`, `norm`, `act`, ...) and data options (`dataset`, `subset`, ...) may be
    given flat; anything else is a TrainConfig field. None values mean "default".
    """
    options = {k: v for k, v in options.items() if v is not None}
    model_keys = {f.name for f in dataclasses.fields(ModelSpec)}
    data_keys = {f.name for f in dataclasses.fields(DataSpec)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "data"}
    unknown = set(options) - model_keys - data_keys - train_keys
    if unknown:
        raise BnlabError(f"unknown option(s): {', '.join(sorted(unknown))}")
    model = {k: v for k, v in options.items() if k in model_keys}
    data = {k: v for k, v in options.items() if k in data_keys}
    train = {k: v for k, v in options.items() if k in train_keys}
    if variant is None:
        variant = "custom" if "norm" in model else "bn"
    simple = model.get("model") == "simple"
    if variant in VARIANTS and "norm" not in model:
        model["norm"] = "bn_fixed_affine" if simple and variant == "bn" else VARIANTS[variant][0]
    if simple and model["norm"] in ("ghost", "frozen"):
        model.setdefault("affine", False)
    train.setdefault("lr", PRESET_LR[model["norm"]] if model.get("norm") in PRESET_LR else TrainConfig.lr)
    cfg = TrainConfig(variant=variant, model=ModelSpec(**model), data=DataSpec(**data), **train)
    cfg.validate()
    return resolve_defaults(cfg)


def resolve_defaults(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with every "None = default" field replaced by the value a run uses, so that config.json
    records what ran (older configs with nulls still load and mean the same)."""
    m = cfg.model
    # .get: an unknown model/norm/act stays None here and is reported by validate()
    model = dataclasses.replace(
        m, affine=DEFAULT_AFFINE.get(m.norm) if m.affine is None else m.affine,
        act_param=DEFAULT_ACT_PARAM.get(m.act) if m.act_param is None else m.act_param,
        classifier_scale=(DEFAULT_CLASSIFIER_SCALE.get(m.model) if m.classifier_scale is None
                          else m.classifier_scale))
    changes: dict[str, Any] = {"model": model}
    knots_given = cfg.lr_knots is not None and cfg.lr_mults is not None
    if cfg.lr_schedule == "piecewise" and not knots_given:  # the exp and const schedules use no knots
        changes["lr_knots"], changes["lr_mults"] = cfg.knots()
    return cfg.replace(**changes)


def units_doc() -> str:
    """The table of every training option with a unit (docs/presets-and-units.md holds it as generated here)."""
    return units_table(TrainConfig, ModelSpec, DataSpec)
