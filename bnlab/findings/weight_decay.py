"""Findings of the weight-decay post (F1-F4, F4b): verdicts from the result files of `bnlab dynamics`,
`bnlab sweep` and the exact float64 simulations of `bnlab.findings.invariant`.

Each function takes plain data (what the result files hold), so it can be tested on hand-made or
simulated input with a known answer.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .record import FindingRecord, decide, finite, fmt
from .spec import BY_ID

# Thresholds (docs/findings.md; never adapted to a scale).
F1_COS_MAX = 1e-3
F1_PYTHAGORAS_REL = 1e-4
F2_RELAX_TIMES = 5.0
F2_BAND = 0.15
F3_CV_MAX = 0.15
F3_NORM_SPAN = 3.0
F4_ANGLE_SPREAD = 1.10
F4_EXPONENT = 0.25
F4_EXPONENT_TOL = 0.05
F4B_DIRECTION_TOL = 1e-6
F4B_STEPS = 200


def f1_scale_invariance(channel_params: Sequence[str], channel_median_cos: Sequence[float],
                        pythagoras: dict[str, Any]) -> FindingRecord:
    """F1: per-channel |cos(w_c, g_c)| of a trained BN net's BN-preceded convs, and Pythagorean growth.

    channel_params/channel_median_cos: one entry per output channel of every BN-preceded conv, its median
    |cos| over the logged steps (NaN for a channel that never had a gradient: dead, excluded). The check is
    on the median over channels; the channels above 1e-3 (BN's eps not negligible against a channel's
    pre-BN variance, e.g. in a fading residual branch) are counted in the record. pythagoras:
    `invariant.pythagoras_check` output (max relative residual, smallest norm increment).
    """
    cos = np.abs(np.asarray(channel_median_cos, dtype=float))
    ok = np.isfinite(cos)
    live = cos[ok]
    median = float(np.median(live)) if live.size else float("nan")
    worst = float(live.max()) if live.size else float("nan")
    worst_param = channel_params[int(np.flatnonzero(ok)[np.argmax(live)])] if live.size else None
    n_over = int((live >= F1_COS_MAX).sum())
    res = pythagoras.get("max_rel_residual")
    dmin = pythagoras.get("min_norm_increment")
    checks = [
        (f"median over {live.size} channels of their median |cos(w_c, g_c)| {fmt(median, '.1e')} < {F1_COS_MAX:g}",
         finite(median) and median < F1_COS_MAX),
        (f"Pythagorean residual {fmt(res, '.1e')} <= {F1_PYTHAGORAS_REL:g}", finite(res) and res <= F1_PYTHAGORAS_REL),
        ("‖w‖ never decreases under plain SGD", finite(dmin) and dmin >= 0),
    ]
    measured = (f"channel median |cos| {fmt(median, '.1e')} (max {fmt(worst, '.1e')}; {n_over}/{live.size} >= "
                f"{F1_COS_MAX:g}); Pythagoras residual {fmt(res, '.1e')}, min relative ‖w‖² increment "
                f"{fmt(dmin, '.1e')}")
    values = {"channels": int(cos.size), "dead_channels": int((~ok).sum()), "median_channel_abs_cos": median,
              "max_channel_abs_cos": worst, "worst_param": worst_param, "channels_over": n_over,
              "pythagoras": pythagoras}
    notes = [f"{n_over} channel(s) sit at or above {F1_COS_MAX:g} (worst {fmt(worst, '.1e')} in {worst_param}): BN's "
             "eps breaks invariance where a channel's pre-BN variance is small."] if n_over else []
    if (~ok).sum():
        notes.append(f"{int((~ok).sum())} channel(s) never had a gradient (dead) and are left out.")
    return decide(BY_ID["F1"], checks, measured, values, notes=notes)


def _bn_preceded_rows(layers: list[dict[str, Any]], bn_preceded: Sequence[str]) -> list[dict[str, Any]]:
    by_name = {r["param"]: r for r in layers}
    return [by_name[p] for p in bn_preceded if p in by_name]


def f2_equilibrium(summary: dict[str, Any], bn_preceded: Sequence[str], lr_schedule: str) -> FindingRecord:
    """F2: measured/predicted angle of every BN-preceded conv after >= 5 relaxation times (`bnlab dynamics`
    summary of the run; `lr_schedule` its config's)."""
    rows = _bn_preceded_rows(summary["layers"], bn_preceded)
    missing = [p for p in bn_preceded if p not in {r["param"] for r in rows}]
    ratios = {r["param"]: r.get("ratio") for r in rows}
    ok_ratios = [v for v in ratios.values() if finite(v)]
    no_theory = [p for p, v in ratios.items() if not finite(v)]
    last = max((r["last_step"] for r in rows), default=0)
    relax = next((r["relaxation_steps"] for r in rows if finite(r.get("relaxation_steps"))), None)
    times = last / relax if finite(relax) and relax > 0 else float("nan")
    needs = [
        (f"a run of >= {F2_RELAX_TIMES:g} relaxation times (ran {fmt(times, '.1f')})",
         finite(times) and times >= F2_RELAX_TIMES),
        (f"constant lr (schedule {lr_schedule})", lr_schedule == "const"),
    ]
    checks = [
        ("every BN-preceded conv logged and detected scale-invariant", bool(rows) and not missing and not no_theory),
        (f"every ratio within 1 +- {F2_BAND:g}",
         bool(ok_ratios) and not no_theory and all(abs(v - 1) <= F2_BAND for v in ok_ratios)),
    ]
    pred = next((r["angle_pred"] for r in rows if finite(r.get("angle_pred"))), None)
    measured = (f"measured/predicted {fmt(min(ok_ratios) if ok_ratios else None, '.3f')}.."
                f"{fmt(max(ok_ratios) if ok_ratios else None, '.3f')} over {len(ok_ratios)} convs "
                f"(prediction {fmt(pred, '.3e')} rad/step), {fmt(times, '.1f')} relaxation times")
    values = {"ratios": ratios, "angle_pred": pred, "relaxation_steps": relax, "last_step": last,
              "relaxation_times": times, "missing": missing, "without_theory": no_theory,
              "invariance": {r["param"]: r.get("invariance") for r in rows}}
    return decide(BY_ID["F2"], checks, measured, values, needs=needs)


def f3_lars_like(summary: dict[str, Any], bn_preceded: Sequence[str]) -> FindingRecord:
    """F3: the same angle in every BN-preceded conv (CV across layers) while their norms differ (span)."""
    rows = _bn_preceded_rows(summary["layers"], bn_preceded)
    ang = np.array([r["angle"] for r in rows if finite(r.get("angle"))])
    norms = np.array([r["w_norm_final"] for r in rows if finite(r.get("w_norm_final"))])
    cv = float(ang.std() / ang.mean()) if ang.size >= 2 and ang.mean() > 0 else float("nan")
    span = float(norms.max() / norms.min()) if norms.size >= 2 and norms.min() > 0 else float("nan")
    checks = [(f"angle CV {fmt(cv, '.3f')} < {F3_CV_MAX:g}", finite(cv) and cv < F3_CV_MAX),
              (f"‖w‖ span {fmt(span, '.2f')}x >= {F3_NORM_SPAN:g}x", finite(span) and span >= F3_NORM_SPAN)]
    measured = (f"angle CV {fmt(cv, '.3f')} across {ang.size} convs; ‖w‖ {fmt(norms.min() if norms.size else None)}.."
                f"{fmt(norms.max() if norms.size else None)} ({fmt(span, '.2f')}x)")
    values = {"angle_cv": cv, "norm_span": span, "angles": {r["param"]: r.get("angle") for r in rows},
              "norms": {r["param"]: r.get("w_norm_final") for r in rows}}
    return decide(BY_ID["F3"], checks, measured, values)


def f4_only_product(sweep_summary: dict[str, Any]) -> FindingRecord:
    """F4: equal lr*wd -> equal angles (groups of `bnlab sweep`'s summary); ‖w‖ ~ (lr/wd)^b, b = 1/4
    (mean over the scale-invariant layers of the fitted raw exponent)."""
    groups = [g for g in sweep_summary.get("groups_lr_wd", [])
              if (g.get("n") or 0) >= 2 and finite(g.get("angle_spread"))]
    spread = max((g["angle_spread"] for g in groups), default=float("nan"))
    ex = sweep_summary.get("norm_exponents", {})
    raw = [v["raw"] for v in ex.values() if finite(v.get("raw"))]
    corrected = [v["grad_scale_corrected"] for v in ex.values() if finite(v.get("grad_scale_corrected"))]
    b = float(np.mean(raw)) if raw else float("nan")
    failed_points = [p["name"] for p in sweep_summary.get("points", []) if p.get("status") != "finished"]
    checks = [
        ("every sweep point finished", not failed_points),
        (f"angle spread within equal-lr*wd groups {fmt(spread, '.3f')} <= {F4_ANGLE_SPREAD:g}",
         bool(groups) and spread <= F4_ANGLE_SPREAD),
        (f"norm exponent {fmt(b, '.3f')} within {F4_EXPONENT:g} +- {F4_EXPONENT_TOL:g}",
         bool(raw) and abs(b - F4_EXPONENT) <= F4_EXPONENT_TOL),
    ]
    measured = (f"max angle spread at equal lr*wd {fmt(spread, '.3f')}x ({len(groups)} group(s)); "
                f"‖w‖ ~ (lr/wd)^b, b = {fmt(b, '.3f')} over {len(raw)} layers "
                f"(grad-scale corrected {fmt(float(np.mean(corrected)) if corrected else None, '.3f')})")
    values = {"angle_spread_max": spread, "groups": groups, "exponent": b, "exponents": ex,
              "exponent_grad_scale_corrected": float(np.mean(corrected)) if corrected else None,
              "unfinished_points": failed_points}
    return decide(BY_ID["F4"], checks, measured, values)


def f4b_exponential_lr(sim: dict[str, Any]) -> FindingRecord:
    """F4b: max per-tensor direction difference between SGD(eta, lambda) and the exponential-lr run without
    decay (`invariant.exp_lr_equivalence`); the constant-lr run without decay is the control."""
    diff = sim.get("max_direction_diff")
    control = sim.get("control_max_direction_diff")
    checks = [(f"max direction difference {fmt(diff, '.1e')} <= {F4B_DIRECTION_TOL:g}",
               finite(diff) and diff <= F4B_DIRECTION_TOL)]
    needs = [(f"float64, mu = 0, >= {F4B_STEPS} steps (ran {sim.get('dtype')}, mu = {sim.get('momentum')}, "
              f"{sim.get('steps')} steps)", sim.get("dtype") == "float64" and sim.get("momentum") == 0
              and (sim.get("steps") or 0) >= F4B_STEPS)]
    measured = (f"max ‖u_wd - u_exp‖ {fmt(diff, '.1e')} over {sim.get('steps')} steps "
                f"(control, constant lr without decay: {fmt(control, '.2g')}); lr grew "
                f"{fmt(sim.get('lr_growth'), '.3g')}x")
    notes = ["The control (same start, constant lr, no weight decay) shows the test can tell the runs apart."]
    return decide(BY_ID["F4b"], checks, measured, dict(sim), notes=notes, needs=needs)

