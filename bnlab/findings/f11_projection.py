"""F11, projecting the span out removes the outliers: lambda1 before and after (I - P) H (I - P), from the
three nets' outstats.json (with eigenvectors and --project)."""
from __future__ import annotations

from typing import Any

from .base import FindingDef
from .common import MODELS, P7, three_outstats
from .posts import PostNumber
from .record import Finding, FindingRecord, decide, finite, fmt, num

F11_FROZEN_CUT = 3.0
F11_BN_CUT = 1.3

SPEC = Finding(
    "F11", "batch-norm", "projecting the span out removes the outliers",
    "Projecting that span out of the Hessian removes the outliers of frozen/no-BN nets and hardly "
    "changes BN's.",
    P7, "top eigenvalue (batch-summed) frozen 2246 -> 407, BN 128 -> 115",
    f"frozen lambda1 cut >= {num(F11_FROZEN_CUT)}x; BN lambda1 cut <= {num(F11_BN_CUT)}x")


def f11_projection(outstats: dict[str, dict[str, Any]]) -> FindingRecord:
    """F11: lambda1 before / after projecting the statistics' span out of the Hessian (outstats.json with
    eigenvectors and --project), frozen and BN (no BN reported)."""
    cut = {}
    for m in MODELS:
        o = outstats.get(m)
        if o and o.get("eigen", {}).get("eigenvalues") and o.get("projected"):
            cut[m] = {"before": o["eigen"]["eigenvalues"][0], "after": o["projected"]["eigenvalues"][0]}
            cut[m]["cut"] = cut[m]["before"] / cut[m]["after"] if cut[m]["after"] > 0 else float("inf")
    fr, bn = cut.get("frozen", {}).get("cut"), cut.get("bn", {}).get("cut")
    checks = [(f"frozen cut {fmt(fr, '.2f')}x >= {F11_FROZEN_CUT:g}x", finite(fr) and fr >= F11_FROZEN_CUT),
              (f"BN cut {fmt(bn, '.2f')}x <= {F11_BN_CUT:g}x", finite(bn) and bn <= F11_BN_CUT)]
    measured = "; ".join(f"{m} {c['before']:.4g} -> {c['after']:.4g} ({c['cut']:.2f}x)" for m, c in cut.items())
    return decide(SPEC, checks, measured, {"models": cut})


def figure(f: Any) -> Any:
    """lambda1 of each model before and after the projection."""
    import pandas as pd
    import seaborn as sns

    from ..plotting import panels, style

    _, names = panels.named_outstats(f)
    rows = [{"model": names.get(m, m), "when": w, "λ1": c[k]} for m, c in f.values["models"].items()
            for k, w in (("before", "H"), ("after", "(I−P) H (I−P): span projected out"))]
    fig, (ax,) = panels.panel(f, 10, 4.6)
    sns.barplot(pd.DataFrame(rows), x="model", y="λ1", hue="when", palette=style.colors(2), ax=ax)
    for cont in ax.containers:
        ax.bar_label(cont, fmt="%.3g", fontsize=8, padding=2)
    ax.set(yscale="log", xlabel="", ylabel="top eigenvalue (loss summed over a batch)")
    style.plain_log_ticks(ax)
    style.legend_outside(ax)
    return fig


_NAMES = {"bn": "BN", "frozen": "frozen BN", "no_bn": "no BN"}
POSTS = tuple(PostNumber("lambda1 after projecting the statistics' span out, loss summed over a batch", _NAMES[m], src,
                         f"{src:g}", lambda v, m=m: v["models"][m]["after"])
              for m, src in (("bn", 115.4), ("frozen", 407.4), ("no_bn", 1324.1)))

FINDING = FindingDef(SPEC, tuple(f"outstats_{m}" for m in MODELS), lambda outs: {"outstats": three_outstats(outs)},
                     f11_projection, figure, posts=POSTS)
