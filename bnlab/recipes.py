"""Named training recipes: DavidNet's 24-epoch baseline and Page's "bag of tricks", built up step by step.

Page's post 8 (https://myrtle.ai/learn/how-to-train-your-resnet-8-bag-of-tricks/, code in
davidcpage/cifar10-fast, bag_of_tricks.ipynb) adds nine changes one at a time and, after each, trims
the epochs until the accuracy is back at 94%. `STEPS` is that sequence as bnlab options: each step
holds the whole cumulative recipe (its epochs, peak lr, lr knots as fractions of its epochs) and the
post's V100 time. Every trick is an option of its own (see docs/background.md), so any subset trains:

- ``pool_first`` (model): conv -> max-pool -> BN -> act;
- ``label_smoothing`` 0.2;
- ``act`` celu, ``act_param`` 0.075 with learnable BN scales (0.3 once the scales are frozen at 1,
  Page's rescaling: γ ≈ 1/4 moved into CELU's α together with a logit scale of 1/16);
- ``norm`` ghost, ``ghost_splits`` 16;
- ``frozen_scales`` (model), ``bias_scale`` 64 (bias lr x64, wd /64), ``classifier_scale`` 1/16;
- ``whiten`` (model): fixed 3x3 patch whitening then a learnable 1x1 conv; Cutout 8 -> 5 and peak lr 1.0;
- ``ema_momentum`` 0.99, ``ema_every`` 5, with the schedule [0, E/5, E-2] -> [0, 1, 0.1];
- ``tta``; Cutout off, 10 epochs: [0, 2, 8] -> [0, 1, 0.1].

`recipe_config("bag-of-tricks", width=16, epochs=4)` builds a validated TrainConfig; options given
explicitly override the recipe's, and a recipe's lr knots stretch with an --epochs override.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import TrainConfig, make_config
from .errors import BnlabError


@dataclass(frozen=True)
class Step:
    """One row of the post's ablation: everything up to and including `trick`."""

    name: str
    trick: str  # what this step adds, in words
    post_seconds: float  # the post's time to 94% on a V100
    epochs: int
    lr: float
    knots: tuple[float, ...]  # lr knots as fractions of `epochs`
    mults: tuple[float, ...]
    variant: str = "bn"
    options: dict[str, Any] = field(default_factory=dict)  # model/data/train options beyond the schedule

    def config_options(self, epochs: int | None = None) -> dict[str, Any]:
        """The flat make_config options of this step, its knots stretched to `epochs` (default: its own)."""
        e = self.epochs if epochs is None else epochs
        return {"epochs": e, "lr": self.lr, "lr_knots": tuple(k * e for k in self.knots),
                "lr_mults": self.mults, **self.options}


def _steps() -> tuple[Step, ...]:
    linear, ema_mults = (0.0, 1.0, 0.0), (0.0, 1.0, 0.1)
    acc: dict[str, Any] = {}
    rows = []
    for name, trick, secs, epochs, lr, knots, mults, variant, add in (
        ("baseline", "24-epoch DavidNet, preprocessing on the device", 70, 24, 0.4, (0, 5 / 24, 1), linear, "bn", {}),
        ("pool_first", "max-pool before BN", 64, 25, 0.4, (0, 0.2, 1), linear, "bn", {"pool_first": True}),
        ("label_smoothing", "label smoothing 0.2", 59, 23, 0.4, (0, 0.2, 1), linear, "bn",
         {"label_smoothing": 0.2}),
        ("celu", "CELU activations", 52, 20, 0.4, (0, 0.2, 1), linear, "bn", {"act": "celu", "act_param": 0.075}),
        ("ghost_bn", "ghost BN, 16 splits", 46, 18, 0.6, (0, 0.2, 1), linear, "ghost_bn",
         {"norm": "ghost", "ghost_splits": 16}),
        ("frozen_scales", "frozen BN scales, bias lr x64 / wd /64", 43, 17, 0.6, (0, 0.2, 1), linear, "ghost_bn",
         {"frozen_scales": True, "act_param": 0.3, "classifier_scale": 1 / 16, "bias_scale": 64.0}),
        ("whitening", "input patch whitening", 36, 14, 1.0, (0, 0.2, 1), linear, "ghost_bn",
         {"whiten": True, "cutout": 5}),
        ("ema", "EMA of the weights", 34, 13, 1.0, (0, 0.2, 11 / 13), ema_mults, "ghost_bn",
         {"ema_momentum": 0.99, "ema_every": 5}),
        ("tta", "test-time augmentation (flip)", 26, 10, 1.0, (0, 0.2, 0.8), ema_mults, "ghost_bn",
         {"tta": True, "cutout": 0}),
    ):
        acc = {**acc, **add}
        rows.append(Step(name, trick, float(secs), epochs, lr, tuple(float(k) for k in knots), mults, variant,
                         dict(acc)))
    return tuple(rows)


STEPS: tuple[Step, ...] = _steps()
STEP_NAMES = tuple(s.name for s in STEPS)
RECIPES = {"baseline": STEPS[0], "bag-of-tricks": STEPS[-1]}


def step(name: str) -> Step:
    for s in STEPS:
        if s.name == name:
            return s
    raise BnlabError(f"unknown ablation step {name!r}; choose from {', '.join(STEP_NAMES)}")


def recipe_config(recipe: str, variant: str | None = None, **options: Any) -> TrainConfig:
    """A validated TrainConfig of `recipe` (a name of RECIPES or STEPS) with `options` (None: unset) on top.

    An explicit variant replaces the recipe's normalisation unless `norm` is given too. An `epochs`
    option stretches the recipe's lr knots unless `lr_knots` is given.
    """
    if recipe in RECIPES:
        s = RECIPES[recipe]
    elif recipe in STEP_NAMES:
        s = step(recipe)
    else:
        raise BnlabError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    given = {k: v for k, v in options.items() if v is not None}
    base = s.config_options(given.get("epochs"))
    if variant is not None and "norm" not in given:
        base.pop("norm", None)
        base.pop("ghost_splits", None)
    if "lr_mults" in given and "lr_knots" not in given and len(given["lr_mults"]) != len(base["lr_knots"]):
        base.pop("lr_knots")
    return make_config(variant if variant is not None else s.variant, recipe=recipe, **{**base, **given})
