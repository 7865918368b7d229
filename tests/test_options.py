"""One source for every option: the typed loader (config.json, grid files, option dicts) against hand-made
mappings whose right answer is known, old config.json files of main, and the version in one module."""
from __future__ import annotations

import ast
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import bnlab
from bnlab import version
from bnlab.config import DataSpec, TrainConfig, make_config
from bnlab.errors import BnlabError
from bnlab.models import ModelSpec
from bnlab.options import (
    flat_classes,
    load,
    load_fields,
    load_flat,
    load_flat_into,
    opt,
    option_meta,
    type_name,
    units_table,
)
from bnlab.recipes import recipe_config
from bnlab.sweep import Grid, parse_value

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Inner:
    n: int = 1
    xs: tuple[float, ...] = (0.5,)


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    rate: float = opt(0.1, help="A rate.", unit="per step", domain="> 0")
    name: str | None = None
    on: bool = False
    pair: tuple[int, str] = (1, "a")
    extra: dict[str, float] = field(default_factory=dict)


def test_values_are_converted_to_their_hints() -> None:
    got = load(Outer, {"inner": {"n": 3, "xs": [1, 2.5]}, "rate": 2, "name": None, "on": True, "pair": [4, "b"],
                       "extra": {"k": 1}})
    assert got == Outer(Inner(3, (1.0, 2.5)), 2.0, None, True, (4, "b"), {"k": 1.0})
    assert type(got.rate) is float and type(got.inner.xs[0]) is float and type(got.extra["k"]) is float
    assert load(Outer, {}) == Outer()  # a missing key keeps the default


@pytest.mark.parametrize("d,message", [
    ({"rate": "fast"}, "field rate: expected float, got 'fast'"),
    ({"rate": True}, "field rate: expected float, got True"),  # a bool is not a number here
    ({"inner": {"n": 2.0}}, "field inner.n: expected int, got 2.0"),
    ({"inner": {"xs": [1, "x"]}}, "field inner.xs: expected tuple[float, ...], got [1, 'x']"),
    ({"inner": 3}, "field inner: expected Inner, got 3"),
    ({"name": 5}, "field name: expected str | None, got 5"),
    ({"on": 1}, "field on: expected bool, got 1"),
    ({"pair": [1, "a", 2]}, "field pair: expected tuple[int, str]"),
    ({"extra": {"k": "v"}}, "field extra: expected dict[str, float]"),
    ([1, 2], "(a list, not an object)"),
])
def test_a_wrong_type_is_one_line_naming_the_field_and_the_type(d: object, message: str) -> None:
    with pytest.raises(BnlabError) as e:
        load(Outer, d, what="test options")
    assert message in str(e.value) and "\n" not in str(e.value) and "bnlab test options" in str(e.value)


def test_unknown_keys_are_dropped_or_refused() -> None:
    assert load_fields(Outer, {"rate": 1.0, "later_field": 3}) == {"rate": 1.0}
    with pytest.raises(BnlabError, match="unknown field later_field"):
        load_fields(Outer, {"later_field": 3}, unknown="refuse")
    with pytest.raises(BnlabError, match=r"unknown field inner\.m"):
        load_fields(Outer, {"inner": {"m": 3}}, unknown="refuse")


def test_flat_option_dicts_are_typed_by_the_class_that_declares_each_key() -> None:
    got = load_flat((TrainConfig, ModelSpec, DataSpec), {"lr": 1, "width": 8, "lr_knots": [0, 2, 8],
                                                         "subset": None}, what="options")
    assert got == {"lr": 1.0, "width": 8, "lr_knots": (0.0, 2.0, 8.0), "subset": None}
    assert type(got["lr"]) is float
    with pytest.raises(BnlabError, match="unknown option 'model'"):  # a nested spec is no flat option
        load_flat((TrainConfig,), {"model": {}}, what="options")
    with pytest.raises(BnlabError, match="field width: expected int, got '8'"):
        load_flat((TrainConfig, ModelSpec), {"width": "8"}, what="options")
    with pytest.raises(BnlabError, match=r"unknown option 'widht'; did you mean 'width'\?\)"):
        load_flat((TrainConfig, ModelSpec), {"widht": 8}, what="options")
    with pytest.raises(BnlabError, match="unknown option 'lr'"):  # a field the reader does not read
        load_flat((TrainConfig, ModelSpec), {"lr": 0.1}, what="options", only=("width",))


@dataclass(frozen=True)
class Needs:
    count: int = opt(help="A count without a default.")
    inner: Inner = field(default_factory=Inner)
    rate: float = 0.5


def test_a_flat_dict_loads_into_its_class_and_its_nested_ones() -> None:
    assert flat_classes(Needs) == (Needs, Inner)
    got = load_flat_into(Needs, {"count": 3, "n": 2, "xs": [1, 2]}, what="options")
    assert got == Needs(count=3, inner=Inner(n=2, xs=(1.0, 2.0)), rate=0.5)
    assert type(got.inner.xs[0]) is float
    with pytest.raises(BnlabError, match=r"^not a valid bnlab options \(option 'count' missing\)$"):
        load_flat_into(Needs, {"n": 2}, what="options")
    with pytest.raises(BnlabError, match=r"field n: expected int, got 2\.5"):
        load_flat_into(Needs, {"count": 1, "n": 2.5}, what="options")
    with pytest.raises(BnlabError, match="unknown option 'inner'"):  # given flat, never nested
        load_flat_into(Needs, {"count": 1, "inner": {"n": 2}}, what="options")
    with pytest.raises(BnlabError, match=r"^not a valid bnlab options \(field count missing\)$"):
        load(Needs, {"inner": {"n": 2}}, what="options")  # `load` (nested, not flat) refuses it too
    assert load(Needs, {"count": 2, "inner": {"n": 3}}, what="options") == Needs(count=2, inner=Inner(n=3))


def test_type_names_read_as_the_source_writes_them() -> None:
    hints = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    assert hints["lr_knots"] == "tuple[float, ...] | None"  # the annotation string, which type_name reproduces
    from bnlab.options import type_hints
    assert type_name(type_hints(TrainConfig)["lr_knots"]) == "tuple[float, ...] | None"
    assert type_name(type_hints(TrainConfig)["model"]) == "ModelSpec"


# A config.json as `bnlab train --recipe bag-of-tricks --width 4` wrote it on main (commit 8b49c15), before
# the typed loader: it must load to the same config.
MAIN_CONFIG = """{"amp": "auto", "batch_size": 512, "bias_scale": 64.0, "data": {"crop": true, "cutout": 0,
 "data_dir": null, "dataset": "cifar10", "flip": true, "subset": null, "synthetic_test": 1000,
 "synthetic_train": 5000, "test_subset": null}, "ema_every": 5, "ema_momentum": 0.99, "epochs": 10,
 "label_smoothing": 0.2, "log_channels": false, "log_every": 1, "lr": 1.0, "lr_knots": [0.0, 2.0, 8.0],
 "lr_mults": [0.0, 1.0, 0.1], "lr_schedule": "piecewise", "model": {"act": "celu", "act_param": 0.3,
 "affine": true, "classifier_scale": 0.0625, "frozen_scales": true, "ghost_splits": 16, "model": "davidnet",
 "norm": "ghost", "num_classes": 10, "pool_first": true, "whiten": true, "width": 4}, "momentum": 0.9,
 "nesterov": true, "recipe": "bag-of-tricks", "save_every": 0, "seed": 0, "sync_bn": false, "tta": true,
 "variant": "ghost_bn", "weight_decay": 0.0005}"""


def test_a_config_written_by_main_loads_to_the_same_config() -> None:
    d = json.loads(MAIN_CONFIG)
    cfg = TrainConfig.from_dict(d)
    assert cfg == recipe_config("bag-of-tricks", None, width=4)
    # and writes back the same file, plus the fields added since with their defaults (old runs did not log them)
    assert json.loads(cfg.to_json()) == {**d, "log_grad_lags": 0}
    # older files: integers where floats are meant, a key this version does not know, nulls for defaults
    d.update(lr=1, lr_knots=[0, 2, 8], written_by="0.0.9")
    d["model"].update(classifier_scale=None)
    again = TrainConfig.from_dict(d)
    assert again == cfg.replace(model=dataclasses.replace(cfg.model, classifier_scale=0.125))  # DavidNet's
    assert type(again.lr) is float and again.lr_knots == (0.0, 2.0, 8.0)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(lr="0.4"), "field lr: expected float, got '0.4'"),
    (lambda d: d["model"].update(width=True), "field model.width: expected int, got True"),
    (lambda d: d.update(lr_mults=[0, "x", 0]), "field lr_mults: expected tuple[float, ...] | None"),
    (lambda d: d.update(data=[]), "field data: expected DataSpec, got []"),
])
def test_a_corrupt_config_names_the_field(change, message: str) -> None:
    d = make_config("bn", width=4).to_dict()
    change(d)
    with pytest.raises(BnlabError, match=re.escape(message)):
        TrainConfig.from_dict(d)


def test_grid_files_and_values_are_typed_by_the_config_fields() -> None:
    assert parse_value("lr_knots", "0:5:24") == (0.0, 5.0, 24.0) and parse_value("affine", "none") is None
    assert parse_value("nesterov", "off") is False and parse_value("width", "8") == 8
    with pytest.raises(BnlabError, match=r"bad value 'x' for grid key width \(expects int\)"):
        parse_value("width", "x")
    grid = {"format": "bnlab-sweep-grid", "version": 2, "variant": None, "base": {"width": 4, "lr_knots": [0, 1, 2]},
            "axes": [["lr", [1, 0.5]]], "threads": 1}
    g = Grid.from_dict(grid)
    assert g.base == {"width": 4, "lr_knots": (0.0, 1.0, 2.0)} and g.axes == [("lr", [1.0, 0.5])]
    grid["base"] = {"width": "4"}
    with pytest.raises(BnlabError, match="grid file .*field width: expected int, got '4'"):
        Grid.from_dict(grid)


def test_every_config_field_with_a_unit_is_documented_in_the_table() -> None:
    table = units_table(TrainConfig)
    for name in ("lr", "weight_decay", "momentum", "batch_size", "epochs", "label_smoothing"):
        f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
        assert option_meta(f).unit and f"`TrainConfig.{name}`" in table
    assert "| `--wd` | `TrainConfig.weight_decay` | 0.0005 |" in table


def test_the_version_is_declared_once() -> None:
    assert bnlab.__version__ == version.__version__
    setup = (ROOT / "setup.py").read_text()
    assert "bnlab/version.py" in setup.replace('" / "', "/") and version.__version__ not in setup


def test_no_module_imports_the_version_from_the_package_root() -> None:
    offenders = []
    for path in (ROOT / "bnlab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and any(a.name == "__version__" for a in node.names):
                if node.module in (None, "bnlab"):  # `from .. import __version__`: upward, through the root
                    offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
