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
    dataset: str = "cifar10"
    data_dir: str | None = None  # None: $BNLAB_DATA or ~/.cache/bnlab (downloaded if missing)
    subset: int | None = None  # class-balanced training subset size
    test_subset: int | None = None  # class-balanced test subset size
    crop: bool = True  # reflect-pad 4 + random 32x32 crop
    flip: bool = True  # random horizontal flip
    cutout: int = 8  # Cutout box size (0: off)
    synthetic_train: int = 5000  # sizes of the synthetic task
    synthetic_test: int = 1000

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
    variant: str = "bn"
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    epochs: int = 24
    batch_size: int = 512
    lr: float = 0.4  # peak lr (piecewise), lr0 (exp), or the lr (const)
    lr_schedule: str = "piecewise"
    lr_knots: tuple[float, ...] | None = None  # epochs; None: (0, 5/24 * epochs, epochs)
    lr_mults: tuple[float, ...] | None = None  # multiples of lr at the knots; None: (0, 1, 0)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    seed: int = 0
    log_every: int = 1  # dynamics log every k steps
    log_channels: bool = False  # also log per-output-channel norms
    save_every: int = 0  # ckpt_epoch_NNN.pt every k epochs (0: only last.pt and final.pt)
    amp: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; "off" forces fp32
    # Under torchrun: BN statistics over the global batch (the function of one process) instead of
    # each rank's rows (ghost BN of world-size splits); see bnlab.ddp. No effect in one process.
    sync_bn: bool = False
    # Bag-of-tricks options (bnlab.recipes), each off by default. bias_scale k: every bias trains with
    # lr x k and weight decay / k (Page: 64). ema_momentum > 0: evaluate an EMA of the weights updated
    # every ema_every steps (bnlab.ema). tta: evaluate the mean logits of each image and its mirror.
    bias_scale: float = 1.0
    ema_momentum: float = 0.0
    ema_every: int = 5
    tta: bool = False
    recipe: str | None = None  # the --recipe this config was made from (None: options only), for the record

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
        """The config stored in a config.json or checkpoint; fields of the wrong type are refused."""
        if not isinstance(d, dict):
            raise BnlabError(f"not a bnlab run configuration (a {type(d).__name__}, not an object)")
        d = dict(d)
        for key, spec in (("model", ModelSpec), ("data", DataSpec)):
            sub = d.get(key, {})
            if not isinstance(sub, (dict, spec)):
                raise BnlabError(f"not a bnlab run configuration ({key}: expected an object)")
            d[key] = sub if isinstance(sub, spec) else spec(**_typed(spec, sub))
        for k in ("lr_knots", "lr_mults"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        # Configs written before defaults were resolved hold nulls; they mean the same values.
        return resolve_defaults(cls(**_typed(cls, d)))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _type_ok(value: Any, hint: str) -> bool:
    """Does a JSON-loaded value fit a dataclass field's annotation (as written in this module)?"""
    options = [h.strip() for h in hint.split("|")]
    for h in options:
        if h == "None" and value is None:
            return True
        if h == "bool" and isinstance(value, bool):
            return True
        if h == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if h == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if h == "str" and isinstance(value, str):
            return True
        if h.startswith("tuple") and isinstance(value, (tuple, list)) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return True
    return False


def _typed(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The known fields of d, each checked against cls's annotation (unknown keys are dropped)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in d or f.name in ("model", "data"):
            if f.name in ("model", "data") and f.name in d:
                out[f.name] = d[f.name]
            continue
        value = d[f.name]
        if not _type_ok(value, str(f.type)):
            raise BnlabError(f"not a valid bnlab run configuration (field {f.name}: expected {f.type}, "
                             f"got {value!r})")
        out[f.name] = float(value) if str(f.type).startswith("float") and isinstance(value, int) else value
    return out


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
