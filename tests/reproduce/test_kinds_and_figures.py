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


@pytest.mark.parametrize("scale", ["cpu", "full"])
def test_eigenpair_budgets_give_each_finding_what_it_reads_and_no_more(scale: str) -> None:
    from bnlab.findings.f9_sharpness import F9_GAP_K
    from bnlab.findings.f10_overlap import F10_TOP
    from bnlab.findings.f13_gauss_newton import F13_CLASSES, F13_GAP_K
    from bnlab.reproduce.plan import eigenpair_budget

    budget = eigenpair_budget(scale)
    plan = build_plan(scale)
    assert budget["hessian_frozen"]["for"]["F9"] == max(F9_GAP_K) + 1  # the gap at k = 8..11 needs lambda_12
    assert budget["hessian_frozen"]["for"]["F10"] == F10_TOP
    assert budget["hessian_bn"]["for"]["F13"] == max(F13_GAP_K) + 1 and budget["ggn_no_bn"]["k"] == F13_CLASSES
    assert all(budget[f"projected_{m}"]["k"] == 1 for m in ("bn", "frozen", "no_bn"))  # F11: lambda1 only
    assert budget["series_eos"]["k"] <= 4
    for stage, entry in budget.items():  # each stage computes the most its readers ask, nothing more
        assert entry["k"] == max(entry["for"].values())
        if stage.startswith(("hessian_", "ggn_", "residual_")):
            assert plan[stage].settings["top_k"] == entry["k"]
        elif stage.startswith("projected_"):
            assert plan[f"outstats_{stage.split('_', 1)[1]}"].settings["project_k"] == entry["k"]
    assert ("halves_bn" in plan) == (scale == "cpu")  # only below the post's 80 batches of 256
