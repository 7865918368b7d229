"""The stage kinds (one class each, looked up by name) and the report's figures drawn in this process: a
finding whose figure fails costs one line in the report, never the others or the reproduction."""
from __future__ import annotations

from pathlib import Path

import pytest

from bnlab.errors import BnlabError
from bnlab.findings.registry import BY_ID
from bnlab.reproduce.figures import draw_report_figures
from bnlab.reproduce.kinds import KINDS, kind
from bnlab.reproduce.plan import build_plan
from bnlab.reproduce.stages import check_stage


def test_every_planned_kind_is_a_class_with_its_four_methods() -> None:
    plan = build_plan("cpu")
    assert {st.kind for st in plan.values()} == set(KINDS)
    for name, k in KINDS.items():
        assert k.name == name and k.version >= 1
        assert all(callable(getattr(k, m)) for m in ("check", "run", "describe", "cost"))
    for st in plan.values():
        assert kind(st.kind).describe(st.settings).strip()
    with pytest.raises(BnlabError, match="unknown stage kind 'nope'"):
        check_stage("nope", {})


def test_a_cost_reads_the_run_it_analyses() -> None:
    """The frozen net's Hessian costs what the BN net's does (same run, width and k), twice that for R."""
    plan = build_plan("smoke")
    assert plan["hessian_frozen"].cost == pytest.approx(
        kind("hessian").cost({**plan["hessian_bn"].settings, "top_k": plan["hessian_frozen"].settings["top_k"]},
                             {}, plan["train_simple_bn"].settings))
    r = plan["residual_bn"]
    assert r.cost == pytest.approx(2 * kind("hessian").cost({**r.settings, "matrix": None}, {},
                                                             plan["train_simple_bn"].settings))


def _f4b_record(values: dict) -> dict:
    rec = BY_ID["F4b"].decide(values).to_dict()
    rec["setting"] = {"stages": {}}
    return rec


def test_report_figures_drawn_in_process_and_a_broken_one_is_one_line(tmp_path: Path) -> None:
    good = {"dtype": "float64", "momentum": 0, "steps": 3, "lr_growth": 1.01, "max_direction_diff": 1e-12,
            "per_step_direction_diff": [0.0, 1e-13, 1e-12], "per_step_control_diff": [1e-3, 1e-2, 1e-1]}
    broken = dict(good, per_step_direction_diff=None)  # the figure cannot draw from it
    report = {"findings": [_f4b_record(good)]}
    assert draw_report_figures(tmp_path, report) is None
    assert (tmp_path / "figures" / "F4b.png").stat().st_size > 5000 and (tmp_path / "figures" / "F4b.pdf").is_file()
    not_run = {"id": "F5", "verdict": "NOT RUN"}  # no figure asked of it
    problem = draw_report_figures(tmp_path / "b", {"findings": [_f4b_record(broken), not_run]})
    assert problem.startswith("figures: no figure for F4b (TypeError") and "\n" not in problem
    assert not (tmp_path / "b" / "figures" / "F4b.png").exists()
