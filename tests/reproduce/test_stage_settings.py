"""A stage's settings are its kind's `settings_type`, loaded through bnlab.options when the plan is built: every
stage of every scale loads (to what the stage's command would build by hand), and a typo'd key, a wrong type, a
missing or an out-of-domain value is refused at plan time in one line naming the stage and the field."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.config import make_config
from bnlab.context import EvalSpec
from bnlab.curvature.hessian import HessianOptions
from bnlab.errors import BnlabError
from bnlab.options import option_meta
from bnlab.outstats.collapse import CollapseOptions
from bnlab.reproduce.kinds import KINDS, ExactSettings, InitSharesSettings, kind
from bnlab.reproduce.plan import SCALES, SETTINGS, build_plan


def _by_hand(kind_name: str, s: dict) -> object:
    """What the stage kinds built from their settings before the typed loader (their check() and run())."""
    s = {k: tuple(v) if isinstance(v, list) else v for k, v in s.items()}
    if kind_name == "train":
        return make_config(s.pop("variant"), **s)
    if kind_name in ("hessian", "series", "halves"):
        spec = EvalSpec(num_samples=s.pop("num_samples"), batch_size=s.pop("batch_size"))
        return HessianOptions(eval=spec, **{**s, "top_k": 1} if kind_name == "halves" else s)
    if kind_name == "collapse":
        return CollapseOptions(**s)
    return None


@pytest.mark.parametrize("scale", SCALES)
def test_every_stage_of_every_scale_loads_into_its_settings_type(scale: str) -> None:
    plan = build_plan(scale)
    compared = set()
    for st in plan.values():
        k = kind(st.kind)
        loaded = k.load(st.settings, st.name)
        assert isinstance(loaded, k.settings_type), st.name
        expected = _by_hand(st.kind, st.settings)
        if expected is not None:
            assert loaded == expected, st.name
            compared.add(st.kind)
    assert compared == {"train", "hessian", "series", "collapse"} | ({"halves"} if scale != "full" else set())
    exact = kind("exact").load(plan["exact_invariant"].settings)
    assert dataclasses.asdict(exact) == SETTINGS[scale]["exact"]
    shares = kind("init_shares").load(plan["init_shares"].settings)
    assert (shares.width, shares.num_samples, shares.data.dataset) == (
        SETTINGS[scale]["init_shares"]["width"], SETTINGS[scale]["init_shares"]["num_samples"],
        SETTINGS[scale]["init_shares"]["dataset"])
    grid = kind("sweep").load(plan["sweep_wd"].settings)
    assert len(grid.points()) == 4 and grid.base == plan["sweep_wd"].settings["base"]


def test_every_kind_declares_a_dataclass_and_the_new_ones_describe_their_fields() -> None:
    assert all(dataclasses.is_dataclass(k.settings_type) for k in KINDS.values())
    for cls in (ExactSettings, InitSharesSettings):
        for f in dataclasses.fields(cls):
            if f.name != "data":  # the DataSpec fields, described where they are declared
                meta = option_meta(f)
                assert meta is not None and meta.help and meta.unit and meta.domain, f.name


def _patched(monkeypatch: pytest.MonkeyPatch, entry: str, change: dict, drop: str = "") -> None:
    new = {**SETTINGS["smoke"][entry], **change}
    new.pop(drop, None)
    monkeypatch.setitem(SETTINGS["smoke"], entry, new)


# (SETTINGS["smoke"] entry, its change, a key it drops, the stage, what the one line says)
BAD_ENTRIES = [
    ("exact", {"widht": 2}, "width", "exact_invariant", "unknown option 'widht'; did you mean 'width'?"),
    ("exact", {}, "exp_steps", "exact_invariant", "option 'exp_steps' missing"),
    ("exact", {"batch_size": 1}, "", "exact_invariant", "stage exact_invariant: batch_size must be at least 2"),
    ("exact", {"batch_size": 9}, "", "exact_invariant", "batch_size 9 leaves a last batch of 1 image of the 64"),
    ("exact", {"images": 64.0}, "", "exact_invariant", "field images: expected int, got 64.0"),
    ("wd_main", {"epochs": "6"}, "", "train_wd_main", "field epochs: expected int, got '6'"),
    ("wd_main", {"batch_size": 0}, "", "train_wd_main", "stage train_wd_main: --batch-size must be at least 1"),
    ("wd_main", {"lr": "0.2"}, "", "train_wd_main", "field lr: expected float, got '0.2'"),
    ("stress", {"widht": 2}, "", "train_stress_bn", "unknown option 'widht'; did you mean 'width'?"),
    ("bn_post", {"subset": 25}, "", "train_simple_bn", "--subset must be a positive multiple of 10"),
    ("eos_series", {"top_k": "2"}, "", "series_eos", "field top_k: expected int, got '2'"),
    ("eos_series", {"tol": 0}, "", "series_eos", "stage series_eos: --tol must be in (0, 1)"),
    ("eos_series", {"warm_start": "x"}, "", "series_eos", "unknown option 'warm_start'"),
    ("bn_eval", {"num_samples": 45}, "", "hessian_bn", "stage hessian_bn: --num-samples must be a positive multiple"),
    ("collapse", {"depth": 0}, "", "collapse_fc", "stage collapse_fc: --depth must be at least 1"),
    ("collapse", {"hist_layers": [1, "2"]}, "", "collapse_fc", "field hist_layers: expected tuple[int, ...]"),
    ("init_shares", {"num_samples": 300}, "", "init_shares", "num_samples 300 is larger than the training set (256"),
    ("init_shares", {"synthetic_train": "256"}, "", "init_shares", "field synthetic_train: expected int"),
    ("sweep", {"grid": "lr=0.2,abc"}, "", "sweep_wd", "stage sweep_wd: bad value 'abc' for grid key lr"),
    ("sweep", {"base": {"width": 2, "epoch": 3}}, "", "sweep_wd", "stage sweep_wd base (unknown option 'epoch'"),
]


@pytest.mark.parametrize("entry, change, drop, stage, message", BAD_ENTRIES)
def test_a_bad_settings_entry_is_refused_at_plan_time_naming_stage_and_field(
        monkeypatch: pytest.MonkeyPatch, entry: str, change: dict, drop: str, stage: str, message: str) -> None:
    _patched(monkeypatch, entry, change, drop)
    with pytest.raises(BnlabError) as e:
        build_plan("smoke")
    text = str(e.value)
    assert f"stage {stage}" in text and message in text and "\n" not in text, text


@pytest.mark.parametrize("entry, value, message", [
    ("bn_eval", {"num_samples": 40, "batch_size": 20, "tols": 1e-2, "eigenpairs": {}}, "unknown field bn_eval.tols"),
    ("bn_eval", {"num_samples": 40, "batch_size": 20, "eigenpairs": {}}, "field bn_eval.tol missing"),
    ("bn_eval", {"num_samples": "40", "batch_size": 20, "tol": 1e-2, "eigenpairs": {}},
     "field bn_eval.num_samples: expected int, got '40'"),
    ("sweep", {"base": {}, "grid": ["lr=0.2"]}, "field sweep.grid: expected str, got ['lr=0.2']"),
    ("eos", 5, "field eos: expected dict[str, any value] | None, got 5"),
    ("wd_mian", {}, "unknown field wd_mian"),
])
def test_a_bad_scale_entry_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, entry: str, value: object,
                                                  message: str) -> None:
    monkeypatch.setitem(SETTINGS["smoke"], entry, value)
    with pytest.raises(BnlabError) as e:
        build_plan("smoke")
    text = str(e.value)
    assert text.startswith("not a valid bnlab scale smoke settings (") and message in text and "\n" not in text, text


def test_a_missing_scale_entry_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(SETTINGS["smoke"], "exact")
    with pytest.raises(BnlabError, match=r"^not a valid bnlab scale smoke settings \(field exact missing\)$"):
        build_plan("smoke")


@pytest.mark.parametrize("kind_name, settings, message", [
    ("freeze", {"epochs": 1}, "unknown option 'epochs'"),  # a freeze has no settings
    ("outstats", {"num_samples": 40, "batch_size": 20, "eigvecs": "x"}, "unknown option 'eigvecs'"),  # its input's
    ("halves", {"num_samples": 40, "batch_size": 20, "top_k": 3}, "unknown option 'top_k'"),  # always 1
    ("sweep", {"grid": ["lr=0.2"], "base": {}}, "field grid: expected the --grid spec as a str"),
    ("sweep", {"grid": "lr=0.2", "base": {}, "threads": 2}, "unknown option 'threads'"),  # the reproduction's
    ("dynamics", {"channels": "yes"}, "field channels: expected bool, got 'yes'"),
    ("dynamics", {"window": 2.0}, "--window must be in (0, 1]"),
    ("hessian", [1, 2], "(a list, not an object)"),
])
def test_each_kind_refuses_what_it_does_not_read(kind_name: str, settings: object, message: str) -> None:
    with pytest.raises(BnlabError, match=f"stage {kind_name}_x") as e:
        kind(kind_name).check(settings, f"{kind_name}_x")
    assert message in str(e.value)


@pytest.mark.parametrize("entry, change, message", [
    ("exact", {"widht": 2}, "unknown option 'widht'"),
    ("wd_main", {"epochs": "6"}, "field epochs: expected int"),
    ("collapse", {"depth": 0}, "--depth must be at least 1"),
])
def test_bad_scale_settings_exit_2_in_one_line_before_anything_is_written(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entry: str, change: dict, message: str) -> None:
    _patched(monkeypatch, entry, change)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["reproduce", "F4b", "--scale", "smoke", "--out", str(out)])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "stage " in r.output and not out.exists()
