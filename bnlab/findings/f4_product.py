"""F4, only eta * lambda matters: equal lr*wd gives equal angles (groups of `bnlab sweep`'s summary), and the
equilibrium norm scales as (lr/wd)^(1/4)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..io.jsonfile import read_json
from .base import FindingDef, Outs
from .common import P6
from .record import Finding, FindingRecord, decide, finite, fmt, num

F4_ANGLE_SPREAD = 1.10
F4_EXPONENT = 0.25
F4_EXPONENT_TOL = 0.05

SPEC = Finding(
    "F4", "weight-decay", "only eta*lambda matters",
    "Runs with equal eta*lambda turn their layers by equal angles, and the equilibrium norm scales as "
    "‖w‖ ~ (eta/lambda)^(1/4).",
    f"{P6}; L", "flat directions of the part-5 hyper-parameter search",
    f"angles within +-{round(100 * (F4_ANGLE_SPREAD - 1)):d}% between points of equal eta*lambda (max/min <= "
    f"{F4_ANGLE_SPREAD:.2f}); fitted exponent of ‖w‖ against eta/lambda {num(F4_EXPONENT)} +- {num(F4_EXPONENT_TOL)}")


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
    return decide(SPEC, checks, measured, values)


def load(outs: Outs) -> dict[str, Any]:
    return {"sweep_summary": read_json(outs["sweep_wd"] / "summary.json")}


def figure(f: Any) -> Any:
    """Left: angle against lr*wd per sweep point; right: ‖w‖ against lr/wd with the fitted exponent."""
    import pandas as pd

    from ..plotting import panels, style

    summary = f.json("sweep_wd", "summary.json")
    pts = pd.DataFrame([p for p in summary["points"] if p.get("angle") is not None])
    fig, axes = panels.panel(f, 13, 4.6, 2)
    if pts.empty:
        return fig
    pts["label"] = [f"lr {lr:g}, wd {wd:g}" for lr, wd in zip(pts["lr"], pts["weight_decay"])]
    pts["lr_over_wd"] = pts["lr"] / pts["weight_decay"]
    colors = style.color_map(pts["label"])
    for _, r in pts.iterrows():
        axes[0].scatter(r["lr_wd"], r["angle"], s=70, color=colors[r["label"]], label=r["label"], zorder=3)
        axes[1].scatter(r["lr_over_wd"], r["norm_gmean"], s=70, color=colors[r["label"]], zorder=3)
    xs = np.array(sorted(set(pts["lr_wd"])))
    axes[0].plot(xs, [pts.loc[pts["lr_wd"] == x, "angle_pred"].iloc[0] for x in xs], "k--", label="prediction")
    axes[0].set(xlabel="lr·wd", ylabel="mean angle per step (invariant layers)", title="Equal lr·wd, equal angle")
    b = f.values.get("exponent")
    if b is not None and np.isfinite(b):
        x = np.array(sorted(pts["lr_over_wd"]))
        c = np.exp(np.mean(np.log(pts["norm_gmean"]) - b * np.log(pts["lr_over_wd"])))
        axes[1].plot(x, c * x ** b, "k--", label=f"fitted b = {b:.3f}")
        axes[1].plot(x, c * x ** F4_EXPONENT * (x[0] ** (b - F4_EXPONENT)), ":", color="grey", label="b = 1/4")
        axes[1].legend(fontsize=8, loc="upper left")
    axes[1].set(xlabel="lr / wd", ylabel="geometric-mean ‖w‖", title="‖w‖ ~ (lr/wd)^b")
    for ax in axes:
        style.log_axis(ax, "x")
        style.log_axis(ax, "y")
    style.legend_outside(axes[0], title="sweep point", fontsize=8)
    return fig


FINDING = FindingDef(SPEC, ("sweep_wd",), load, f4_only_product, figure)
