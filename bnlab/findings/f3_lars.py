"""F3, LARS-like steps: the same equilibrium angle in every BN-preceded conv (CV across layers) while their
norms differ (span), from the `bnlab dynamics` summary of the weight-decay post's main run."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import FindingDef, Outs
from .common import P6, bn_preceded_rows, main_run
from .record import Finding, FindingRecord, decide, finite, fmt, num

F3_CV_MAX = 0.15
F3_NORM_SPAN = 3.0

SPEC = Finding(
    "F3", "weight-decay", "LARS-like: same step in every layer",
    "That angle is the same in every BN-preceded layer although their weight norms differ: "
    "per-layer adaptive step sizes for free.",
    P6, "plots of per-layer relative steps (no number)",
    f"coefficient of variation of the measured angle across the BN-preceded convs < {num(F3_CV_MAX)} while their "
    f"final ‖w‖ span >= {num(F3_NORM_SPAN)}x")


def f3_lars_like(summary: dict[str, Any], bn_preceded: Sequence[str]) -> FindingRecord:
    """F3: the same angle in every BN-preceded conv (CV across layers) while their norms differ (span)."""
    rows = bn_preceded_rows(summary["layers"], list(bn_preceded))
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
    return decide(SPEC, checks, measured, values)


def load(outs: Outs) -> dict[str, Any]:
    summary, params, _ = main_run(outs)
    return {"summary": summary, "bn_preceded": params}


def figure(f: Any) -> Any:
    """Left: every layer's angle per step beside the prediction; right: their norms."""
    from ..plotting import panels, style

    s = panels.invariant_series(f)
    fig, axes = panels.panel(f, 14, 4.6, 2)
    colors = style.color_map(s["param"])
    panels.layer_lines(axes[0], s, "angle_smooth", colors)
    eq = s.groupby("step")["angle_eq"].first()
    axes[0].plot(eq.index, eq.values, color="black", lw=2.2, label="prediction")
    axes[0].set(xlabel="step", ylabel="angle per step (rad, smoothed)",
                title=f"The same angle in every layer (CV {f.values['angle_cv']:.3f})")
    style.log_axis(axes[0])
    panels.layer_lines(axes[1], s, "w_norm", colors)
    axes[1].set(xlabel="step", ylabel="‖w‖", title=f"while the norms differ ({f.values['norm_span']:.2f}x)")
    style.log_axis(axes[1])
    style.legend_outside(axes[1], title="layer", fontsize=8)  # one legend: the colours are the same layers
    return fig


FINDING = FindingDef(SPEC, ("train_wd_main", "dynamics_wd_main"), load, f3_lars_like, figure)
