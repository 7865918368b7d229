"""F8, a 1% step flips predictions: the fraction predicting c after a step of 1% of ‖theta‖ along ∇mean_c,
and the shifts of BN's and random steps (the perturbation table of the three nets' outstats.json)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import FindingDef
from .common import MODELS, P7, three_outstats
from .record import Finding, FindingRecord, decide, num

F8_FLIP = 0.5
F8_SHIFT = 0.2

SPEC = Finding(
    "F8", "batch-norm", "1% step flips predictions",
    "A weight step of 1% of ‖theta‖ along ∇mean_c makes frozen-BN and no-BN nets predict class c; BN "
    "nets, and random steps of the same length, barely move.",
    P7, "shown as prediction histograms (no number)",
    f"frozen and no BN: fraction predicting c after the step >= {num(F8_FLIP)}; BN's step and every random step: "
    f"shift of that fraction < {num(F8_SHIFT)}")


def _perturbation(o: dict[str, Any]) -> dict[str, float]:
    rows = o["perturbation"]["rows"]
    return {"frac_before": float(np.mean([r["frac_before"] for r in rows])),
            "frac_grad": float(np.mean([r["frac_after_grad"] for r in rows])),
            "shift_grad": float(np.mean([abs(r["frac_after_grad"] - r["frac_before"]) for r in rows])),
            "shift_random": float(np.mean([abs(r["frac_after_random"] - r["frac_before"]) for r in rows])),
            "delta": o["perturbation"]["delta"]}


def f8_perturbation(outstats: dict[str, dict[str, Any]]) -> FindingRecord:
    """F8: fraction predicting c after a 1% step along ∇mean_c, and the shifts of BN's and random steps
    (means over the classes of outstats' perturbation table)."""
    p = {m: _perturbation(outstats[m]) for m in MODELS}
    rand = max(p[m]["shift_random"] for m in MODELS)
    checks = [(f"frozen predicts c: {p['frozen']['frac_grad']:.2f} >= {F8_FLIP:g}",
               p["frozen"]["frac_grad"] >= F8_FLIP),
              (f"no BN predicts c: {p['no_bn']['frac_grad']:.2f} >= {F8_FLIP:g}", p["no_bn"]["frac_grad"] >= F8_FLIP),
              (f"BN's shift {p['bn']['shift_grad']:.2f} < {F8_SHIFT:g}", p["bn"]["shift_grad"] < F8_SHIFT),
              (f"random steps' shift {rand:.2f} < {F8_SHIFT:g}", rand < F8_SHIFT)]
    measured = (f"fraction -> c after the step: frozen {p['frozen']['frac_grad']:.2f}, "
                f"no BN {p['no_bn']['frac_grad']:.2f}, "
                f"BN {p['bn']['frac_grad']:.2f} (shift {p['bn']['shift_grad']:.2f}); random shift <= {rand:.2f}")
    return decide(SPEC, checks, measured, {"models": p, "random_shift_max": rand})


def figure(f: Any) -> Any:
    """Left: the fraction predicted as c before and after the step; right: how far the step and a random one
    move it."""
    import pandas as pd
    import seaborn as sns

    from ..plotting import panels, style

    models = f.values["models"]
    _, names = panels.named_outstats(f)
    fig, axes = panels.panel(f, 13, 4.6, 2)
    whens = ("before", "after a 1% step along ∇mean_c")
    rows = [{"model": names[m], "when": w, "fraction": v[k]} for m, v in models.items()
            for k, w in (("frac_before", whens[0]), ("frac_grad", whens[1]))]
    c = style.colors(4)
    sns.barplot(pd.DataFrame(rows), x="model", y="fraction", hue="when", hue_order=list(whens),
                palette=c[:2], ax=axes[0])
    axes[0].axhline(F8_FLIP, color="black", ls="--", lw=1.2, label=f"F8: ≥ {num(F8_FLIP)} (frozen, no BN)")
    axes[0].set(ylim=(0, 1), xlabel="", ylabel="fraction predicted as c (mean over c)",
                title="Predictions after a step along ∇mean_c")
    shifts = ("|shift| of that step", "|shift| of a random step of the same size")
    rows = [{"model": names[m], "what": w, "shift": v[k]} for m, v in models.items()
            for k, w in (("shift_grad", shifts[0]), ("shift_random", shifts[1]))]
    sns.barplot(pd.DataFrame(rows), x="model", y="shift", hue="what", hue_order=list(shifts), palette=c[2:], ax=axes[1])
    axes[1].axhline(F8_SHIFT, color="black", ls="--", lw=1.2,
                    label=f"F8: < {num(F8_SHIFT)} (BN's step, random steps)")
    top = max(1.25 * F8_SHIFT, 1.15 * max(r["shift"] for r in rows))
    axes[1].set(ylim=(0, top), xlabel="", ylabel="|change| of the fraction predicted as c",
                title="How far the predictions move")
    for ax, fmt in zip(axes, ("%.2f", "%.2g")):  # every bar says its value: a random step's shift is tiny
        for cont in ax.containers:
            ax.bar_label(cont, fmt=fmt, fontsize=7, padding=2)
        style.rotate_xticks(ax, 15)
        ax.legend(fontsize=8, loc="upper left")
    return fig


FINDING = FindingDef(SPEC, tuple(f"outstats_{m}" for m in MODELS), lambda outs: {"outstats": three_outstats(outs)},
                     f8_perturbation, figure)
