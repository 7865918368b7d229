"""F2, the equilibrium angle per step: measured / predicted angle of every BN-preceded conv after >= 5
relaxation times at constant lr (`bnlab dynamics` summary of the weight-decay post's main run)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import FindingDef, Outs
from .common import P6, bn_preceded_rows, main_run
from .posts import POST6, PostNumber
from .record import Finding, FindingRecord, decide, finite, fmt, num

F2_RELAX_TIMES = 5.0
F2_BAND = 0.15

SPEC = Finding(
    "F2", "weight-decay", "equilibrium angle per step",
    "At constant lr the angle each BN-preceded layer turns per step settles at sqrt(2 eta lambda / (1 + mu)) "
    "k_N(mu), k_N = sqrt((1 + mu)^3 (1 - mu) + mu^4) for torch's Nesterov (1.158 at mu = 0.9; 1 for heavy "
    "ball).",
    f"L (van Laarhoven 2017, Wan et al. 2021), A; {P6}", "the formula (no measured number)",
    f"after >= {num(F2_RELAX_TIMES)} relaxation times (1 - mu)/(4 eta lambda) at constant lr, every BN-preceded "
    f"conv's measured angle within +-{num(100 * F2_BAND)}% of the prediction")


def f2_equilibrium(summary: dict[str, Any], bn_preceded: Sequence[str], lr_schedule: str) -> FindingRecord:
    """F2: measured/predicted angle of every BN-preceded conv after >= 5 relaxation times (`bnlab dynamics`
    summary of the run; `lr_schedule` its config's)."""
    rows = bn_preceded_rows(summary["layers"], list(bn_preceded))
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
              "invariance": {r["param"]: r.get("invariance") for r in rows}, **_correlated(rows)}
    return decide(SPEC, checks, measured, values, needs=needs, notes=_correlation_notes(values))


def _correlated(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the run logged its gradients' autocorrelation (--log-grad-lags): per conv rho_1, the correction
    factor of the prediction (`theory.correlation_factor`) and the ratio against the corrected prediction."""
    return {"autocorr_lag1": {r["param"]: (r.get("grad_autocorr") or [None])[0] for r in rows},
            "corr_factors": {r["param"]: r.get("corr_factor") for r in rows},
            "ratios_corrected": {r["param"]: r.get("ratio_corr") for r in rows}}


def _correlation_notes(values: dict[str, Any]) -> list[str]:
    """The explanation the verdict does not use (thresholds are the uncorrelated formula's): how far the measured
    autocorrelation of each conv's gradients moves its prediction, and what the ratio is against that."""
    corrected = {p: v for p, v in values["ratios_corrected"].items() if finite(v)}
    if not corrected:
        return []
    ratios = values["ratios"]
    plain = [v for v in ratios.values() if finite(v)]
    worst = max(corrected, key=lambda p: abs(ratios[p] - 1) if finite(ratios.get(p)) else 0.0)
    return [f"with the gradients' measured autocorrelation (cos(g_t, g_t-k), the final window) the correlated "
            f"prediction gives measured/predicted {fmt(min(corrected.values()), '.3f')}.."
            f"{fmt(max(corrected.values()), '.3f')} over {len(corrected)} convs (uncorrelated: "
            f"{fmt(min(plain), '.3f')}..{fmt(max(plain), '.3f')}); "
            f"the conv furthest off, {worst}, has rho_1 {fmt(values['autocorr_lag1'].get(worst), '+.2f')}, "
            f"correction x{fmt(values['corr_factors'].get(worst), '.3f')}, ratio {fmt(ratios.get(worst), '.3f')} -> "
            f"{fmt(corrected[worst], '.3f')}"]


def load(outs: Outs) -> dict[str, Any]:
    summary, params, config = main_run(outs)
    return {"summary": summary, "bn_preceded": params, "lr_schedule": config["lr_schedule"]}


def _relaxation_marks(ax: Any, f: Any, last_step: float) -> None:
    relax = f.values.get("relaxation_steps")
    if not relax:
        return
    for k in range(1, int(last_step / relax) + 1):
        ax.axvline(k * relax, color="black", lw=1, ls="--", alpha=0.6)
        ax.text(k * relax, 0.98, f" {k}τ", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.plot([], [], color="black", lw=1, ls="--", alpha=0.6, label=f"k relaxation times τ = {relax:.3g} steps")


def figure(f: Any) -> Any:
    """Every BN-preceded conv's measured / predicted angle along training, with F2's band."""
    from ..plotting import panels, style

    s = panels.invariant_series(f)
    s = s[s["ratio"] > 0]
    fig, (ax,) = panels.panel(f, 11, 4.8)
    colors = style.color_map(s["param"])
    ax.axhspan(1 - F2_BAND, 1 + F2_BAND, color="grey", alpha=0.25, lw=0, label=f"±{num(100 * F2_BAND)}% (F2's band)")
    ax.axhline(1, color="black", lw=1.2)
    panels.layer_lines(ax, s, "ratio", colors)
    _relaxation_marks(ax, f, s["step"].max())
    times = f.values.get("relaxation_times")
    ax.set(xlabel="step", ylabel="measured / predicted angle (smoothed)",
           title=f"Angle per step / equilibrium prediction {f.values.get('angle_pred', float('nan')):.3g} rad"
                 + (f"; the run lasts {times:.1f} τ (F2 needs {num(F2_RELAX_TIMES)})" if times else ""))
    style.log_axis(ax)  # the start's transient is many times the prediction: a log axis keeps it all in view
    style.legend_outside(ax, title="layer", fontsize=8)
    return fig


POSTS = (PostNumber("measured / predicted equilibrium angle per step (median over the BN-preceded convs)", "BN", 1.0,
                    "the formula sqrt(2 eta lambda / (1 + mu)): ratio 1", lambda v: float(np.median(
                        [r for r in v["ratios"].values() if finite(r)])), link=POST6),)

FINDING = FindingDef(SPEC, ("train_wd_main", "dynamics_wd_main"), load, f2_equilibrium, figure, posts=POSTS)
