"""Every option a dataclass owns is generated from its field: the same default (or, for a preset's
overrides, None and the field's default in --help), and no command declares a default of its own."""
from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest

from bnlab.ablate import AblationOptions
from bnlab.cli import main
from bnlab.cli.options import FieldOption, pop_fields
from bnlab.config import DataSpec, TrainConfig, make_config
from bnlab.context import EvalSpec
from bnlab.curvature.hessian import HessianOptions
from bnlab.dynamics.options import DynamicsOptions
from bnlab.models import ModelSpec
from bnlab.options import field_default, shown_default
from bnlab.outstats.collapse import CollapseOptions
from bnlab.outstats.run import OutstatsOptions
from bnlab.reproduce.run import ReproduceOptions
from bnlab.sweep import Grid

TRAIN = {TrainConfig, ModelSpec, DataSpec}
# The dataclasses whose fields each command's options mirror.
SOURCES: dict[str, set[type]] = {
    "train": TRAIN, "hessian": {HessianOptions, EvalSpec}, "outstats": {OutstatsOptions, EvalSpec},
    "dynamics": {DynamicsOptions}, "collapse": {CollapseOptions}, "sweep": {Grid, *TRAIN}, "freeze": {EvalSpec},
    "ablate": {AblationOptions, *TRAIN}, "reproduce": {ReproduceOptions},
}


def _field(p: FieldOption) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(p.source) if f.name == p.field_name)


def _generated(name: str) -> list[FieldOption]:
    return [p for p in main.commands[name].params if isinstance(p, FieldOption)]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_generated_defaults_are_the_fields_defaults(name: str) -> None:
    cmd = main.commands[name]
    ctx = click.Context(cmd)
    options = _generated(name)
    assert {p.source for p in options} == SOURCES[name]
    for p in options:
        f = _field(p)
        help_record = p.get_help_record(ctx)[1]
        if p.override:  # None: the preset or recipe decides; --help states the field's default
            assert p.default is None, p.name
            single_flag = p.is_flag and not p.secondary_opts  # off unless given, as a flag always is
            assert f"[default: {shown_default(f)}]" in help_record or single_flag or f.default is None, p.name
        else:  # the value click passes when the option is not given, converted as a given one would be
            value = p.type_cast_value(ctx, p.get_default(ctx)) if not p.multiple else p.callback(ctx, p, ())
            assert value == field_default(f), (name, p.name, value)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_no_command_declares_a_default_for_an_option_a_dataclass_owns(name: str) -> None:
    owned = {f.name for cls in SOURCES[name] for f in dataclasses.fields(cls)}
    ctx = click.Context(main.commands[name])
    for p in main.commands[name].params:
        # hand-written options may share a field's name (freeze's --batch-size: the run's), not declare a default
        if isinstance(p, click.Option) and not isinstance(p, FieldOption) and p.name in owned:
            default = p.get_default(ctx)
            assert default in (None, ()), f"bnlab {name} {p.opts[0]} declares default {default!r}"


def _parsed(name: str, *args: str) -> dict[str, Any]:
    return dict(main.commands[name].make_context(name, list(args)).params)


def test_options_not_given_build_the_dataclass_defaults() -> None:
    p = _parsed("hessian", "ckpt.pt", "-o", "out")
    assert HessianOptions(eval=EvalSpec(**pop_fields(EvalSpec, p)), **pop_fields(HessianOptions, p)) \
        == HessianOptions()
    p = _parsed("outstats", "ckpt.pt", "-o", "out")
    assert OutstatsOptions(eval=EvalSpec(**pop_fields(EvalSpec, p)), **pop_fields(OutstatsOptions, p)) \
        == OutstatsOptions()
    for name, cls, args in (("dynamics", DynamicsOptions, ["run"]), ("collapse", CollapseOptions, []),
                            ("reproduce", ReproduceOptions, ["all"])):
        assert cls(**pop_fields(cls, _parsed(name, *args, "-o", "out"))) == cls(), name
    p = _parsed("train", "--out", "run")  # every training option None: the preset's values
    given = {k: v for k, v in p.items() if k not in ("out_dir", "resume_dir", "force", "progress_every", "device",
                                                     "quiet", "variant", "recipe")}
    assert set(given.values()) == {None} and make_config(None, **given) == make_config("bn")


def test_given_options_reach_the_dataclass_as_typed_values() -> None:
    p = _parsed("hessian", "ckpt.pt", "-o", "out", "--no-verify", "--params", "layer3*, !prep", "--top-k", "3",
                "--bn-mode", "running", "--num-samples", "40")
    opts = HessianOptions(eval=EvalSpec(**pop_fields(EvalSpec, p)), **pop_fields(HessianOptions, p))
    assert (opts.verify, opts.params, opts.top_k, opts.eval.bn_mode, opts.eval.num_samples) == (
        False, ("layer3*", "!prep"), 3, "running", 40)
    p = _parsed("outstats", "ckpt.pt", "-o", "out", "--stats", "mean", "--channels", "0,3", "--no-histograms")
    assert (p["stats"], p["channels"], p["histograms"], p["hist_layers"]) == (("mean",), (0, 3), False, None)
    p = _parsed("train", "--out", "r", "--wd", "1e-4", "--ema", "0.9", "--lr-knots", "0,4,20", "--no-crop")
    assert (p["weight_decay"], p["ema_momentum"], p["lr_knots"], p["crop"]) == (1e-4, 0.9, (0.0, 4.0, 20.0), False)
    assert _parsed("dynamics", "run", "-o", "o", "--layers", "a,b", "--layers", "c")["layers"] == ("a", "b", "c")
    p = _parsed("reproduce", "-o", "o", "--no-figures", "-j", "2")
    assert (p["figures"], p["jobs"]) == (False, 2)
    assert _parsed("collapse", "-o", "o", "--inputs", "7", "--hist-layers", "1,3")["hist_layers"] == (1, 3)
