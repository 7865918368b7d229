"""F10, outliers live in the statistics' span: squared overlaps of the frozen net's top eigenvectors with the
span of the output-statistic gradients (its outstats.json), and the random-vector control."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..io.jsonfile import read_json
from .base import FindingDef
from .common import P7
from .posts import PostNumber
from .record import Finding, FindingRecord, decide, num

F10_TOP = 9
F10_MEANS = 0.6
F10_FULL = 0.9
F10_RANDOM_FACTOR = 2.0

SPEC = Finding(
    "F10", "batch-norm", "outliers live in the statistics' span",
    "The outlier eigenvectors lie in the span of the output-statistic gradients.",
    P7, "frozen v1-v9: 0.80-0.89 (means span), 0.98-0.99 (means+variances+skews); random ~1e-5",
    f"frozen top-{F10_TOP} median squared overlap >= {num(F10_MEANS)} with the means span and >= {num(F10_FULL)} with "
    f"the full span; random vectors' overlap ~ dim/P (within {num(F10_RANDOM_FACTOR)}x)")


def _medians(o: dict[str, Any]) -> dict[str, float]:
    e = o["eigen"]
    return {"median_means": float(np.median(e["overlap_means"][:F10_TOP])),
            "median_full": float(np.median(e["overlap_full"][:F10_TOP]))}


def f10_overlap(frozen: dict[str, Any], no_bn: dict[str, Any] | None = None) -> FindingRecord:
    """F10: median squared overlap of the frozen net's top-9 eigenvectors with the means span and the full
    span (outstats.json with eigenvectors), and the random-vector control against dim/P; the no-BN net's
    medians reported beside them (no threshold)."""
    e, span = frozen["eigen"], frozen["span"]
    means = e["overlap_means"][:F10_TOP]
    full = e["overlap_full"][:F10_TOP]
    med_m, med_f = float(np.median(means)), float(np.median(full))
    rnd = float(np.mean(span["random_overlap_full"]))
    expect = span["random_overlap_expected"]
    factor = max(rnd / expect, expect / rnd) if rnd > 0 and expect > 0 else float("inf")
    needs = [(f"{F10_TOP} eigenvectors (have {len(means)})", len(means) >= F10_TOP)]
    checks = [(f"median overlap, means span {med_m:.2f} >= {F10_MEANS:g}", med_m >= F10_MEANS),
              (f"full span {med_f:.2f} >= {F10_FULL:g}", med_f >= F10_FULL),
              (f"random overlap {rnd:.2g} within {F10_RANDOM_FACTOR:g}x of dim/P {expect:.2g}",
               factor <= F10_RANDOM_FACTOR)]
    measured = (f"frozen v1-v{len(means)} median overlap {med_m:.2f} (means, {span['means_dim']}-D), {med_f:.2f} "
                f"(full, {span['full_dim']}-D); random {rnd:.1e} vs dim/P {expect:.1e}")
    values = {"overlap_means": means, "overlap_full": full, "median_means": med_m, "median_full": med_f,
              "random_overlap": rnd, "random_expected": expect, "means_dim": span["means_dim"],
              "full_dim": span["full_dim"],
              "no_bn": _medians(no_bn) if no_bn and no_bn.get("eigen") else None}
    return decide(SPEC, checks, measured, values, needs=needs)


def figure(f: Any) -> Any:
    """‖P v‖² of the frozen net's top eigenvectors with both spans, against a random direction's."""
    from ..plotting import panels, style

    runs, names = panels.named_outstats(f)
    spans = (("overlap_means", "span of the mean gradients"), ("overlap_full", "span of mean, var, skew gradients"))
    fig, (ax,) = panels.panel(f, 10, 4.6)
    colors = style.colors(len(spans))
    k_max = 1
    frozen = runs.get("frozen", {}).get("eigen") or {}
    for (key, span), color, marker in zip(spans, colors, ("o", "s")):
        v = frozen.get(key) or []
        k_max = max(k_max, len(v))
        ax.plot(np.arange(1, len(v) + 1), v, marker=marker, color=color, label=span)
    ax.axhline(f.values["random_expected"], color="black", ls="--", lw=1.2, label="a random direction (dim/P)")
    ax.set(xlabel="eigenvector rank", ylabel="‖P v‖²", xlim=(0.5, k_max + 0.5),
           title=f"Top eigenvectors of {names.get('frozen', 'frozen BN')} in the output-statistic span")
    style.integer_ticks(ax)
    style.log_axis(ax)
    style.legend_outside(ax)
    return fig


def load(outs: Any) -> dict[str, Any]:
    return {"frozen": read_json(outs["outstats_frozen"] / "outstats.json"),
            "no_bn": read_json(outs["outstats_no_bn"] / "outstats.json") if "outstats_no_bn" in outs else None}


_MEANS, _FULL = "median ‖P v‖² of v1..v9, span of the mean gradients", "median ‖P v‖² of v1..v9, full span"
POSTS = (PostNumber(_MEANS, "frozen BN", 0.845, "0.80-0.89", lambda v: v["median_means"]),
         PostNumber(_FULL, "frozen BN", 0.985, "0.98-0.99", lambda v: v["median_full"]),
         PostNumber(_MEANS, "no BN", 0.565, "0.35-0.78", lambda v: v["no_bn"]["median_means"]),
         PostNumber(_FULL, "no BN", 0.885, "0.80-0.97", lambda v: v["no_bn"]["median_full"]),
         PostNumber("‖P v‖² of a random vector, full span", "", 1e-5, "~1e-5", lambda v: v["random_overlap"]))

FINDING = FindingDef(SPEC, ("outstats_frozen",), load, f10_overlap, figure, optional=("outstats_no_bn",), posts=POSTS)
