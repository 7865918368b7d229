"""analyses/weight_decay_post.py: its claim checks on hand-made numbers, and the whole pipeline at smoke size."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "weight_decay_post.py"


def load_script():
    spec = importlib.util.spec_from_file_location("weight_decay_post", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def layer(param: str, ratio: float | None, norm: float, invariance: str = "exact") -> SimpleNamespace:
    return SimpleNamespace(param=param, ratio=ratio, w_norm_final=norm, invariance=invariance)


def test_main_checks_thresholds() -> None:
    wd = load_script()
    good = SimpleNamespace(layers=[layer("a.conv.weight", 0.9, 1.0), layer("b.conv.weight", 1.14, 3.0),
                                   layer("c.conv.weight", 1.0, 2.0, "approximate"),
                                   layer("a.norm.weight", None, 5.0, "no")])
    assert [ok for _, _, ok in wd.main_checks(good)] == [True, True, True]
    off = SimpleNamespace(layers=[layer("a.conv.weight", 0.84, 1.0), layer("b.conv.weight", 1.0, 2.0),
                                  layer("c.conv.weight", None, 1.0, "no")])
    checks = wd.main_checks(off)
    assert [ok for _, _, ok in checks] == [False, False, False]  # c missing, 0.84 < 0.85, norms only 2x
    assert "c.conv.weight" in checks[0][1] and "0.840..1.000" in checks[1][1]


def test_sweep_checks_thresholds() -> None:
    wd = load_script()
    ex = {"a": {"raw": 0.2}, "b": {"raw": 0.32}}  # mean 0.26: within 0.25 +- 0.08
    ok = {"groups_lr_wd": [{"n": 2, "angle_spread": 1.09}, {"n": 1, "angle_spread": None}], "norm_exponents": ex}
    assert [c[2] for c in wd.sweep_checks(ok)] == [True, True]
    bad = {"groups_lr_wd": [{"n": 2, "angle_spread": 1.11}], "norm_exponents": {"a": {"raw": 0.34}}}
    assert [c[2] for c in wd.sweep_checks(bad)] == [False, False]
    none = {"groups_lr_wd": [{"n": 1, "angle_spread": None}], "norm_exponents": {}}
    assert [c[2] for c in wd.sweep_checks(none)] == [False, False]


def test_smoke_run_writes_every_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wd = load_script()
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["weight_decay_post.py", "--smoke", "--out", str(tmp_path / "o"),
                                      "--threads", "1"])
    try:
        wd.main()
    finally:
        torch.set_num_threads(threads)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert len(res["checks"]) == 5 and all(set(c) == {"claim", "measured", "passed"} for c in res["checks"])
    assert res["main"]["hyper"] == {"wd": 5e-3, "momentum": 0.9, "nesterov": True}
    assert {"groups_lr_wd", "groups_lr_wd_eff", "norm_exponents"} <= set(res["sweep"])
    assert (tmp_path / "o" / "main_analysis" / "dynamics_summary.json").is_file()
    assert len(list((tmp_path / "o" / "sweep" / "points").iterdir())) == 2
