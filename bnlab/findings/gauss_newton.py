"""F13, where the outliers come from: the Hessian H = G + R (Gauss-Newton + residual) of the batch-norm
post's three simple nets (BN, frozen BN, no BN), on the same weights, batches and units as F9-F11.

The numbers come from `bnlab hessian --matrix hessian|ggn|residual` (the top eigenpairs of H, G and R,
and the class-means term of G) and `bnlab outstats` (the output-statistic span of F10); this module
only decides. Overlaps are squared: the overlap of two k-dimensional spaces is ‖Q_Hᵀ Q_G‖²_F / k (1: the
same space, k/dim: unrelated).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .record import FindingRecord, decide, finite, fmt
from .spec import BY_ID

F13_CLASSES = 10  # C: the outlier count of a C-class net (Papyan: C class-means outliers)
F13_OVERLAP = 0.9  # frozen and no BN: top-k spaces of H and G
F13_RESIDUAL = 0.2  # frozen and no BN: lambda1(R) <= 0.2 lambda1(H)
F13_GAP = 1.8  # BN: no lambda_k / lambda_(k+1) of H reaches this (F9's gap) at k in 8..11
F13_GAP_K = (8, 9, 10, 11)
SHARP = ("frozen", "no_bn")


def f13_gauss_newton(models: dict[str, dict[str, Any]], span_overlap: Sequence[float] | None = None) -> FindingRecord:
    """F13 from, per model (bn, frozen, no_bn): "hessian" and "ggn" (top eigenvalues, descending),
    "overlap" (of their top-k eigenvector spaces, k = min(C, computed)), "k", "residual" (R's top
    eigenvalues) and "class_means" (G_cm's eigenvalues); `span_overlap`: ‖P v‖² of G's top eigenvectors
    of the frozen net with the F10 output-statistic span (reported, no threshold)."""
    checks: list[tuple[str, bool]] = []
    values: dict[str, Any] = {"models": {}}
    parts = []
    for m in SHARP:
        d = models[m]
        h1, r1 = _first(d["hessian"]), _first(d["residual"])
        ratio = r1 / h1 if finite(h1) and finite(r1) and h1 > 0 else float("nan")
        ov = d.get("overlap", float("nan"))
        checks.append((f"{m}: top-{d['k']} overlap of H and G {fmt(ov, '.2f')} >= {F13_OVERLAP:g}",
                       finite(ov) and ov >= F13_OVERLAP))
        checks.append((f"{m}: lambda1(R)/lambda1(H) {fmt(ratio, '.2f')} <= {F13_RESIDUAL:g}",
                       finite(ratio) and ratio <= F13_RESIDUAL))
        values["models"][m] = {**d, "residual_ratio": ratio}
        parts.append(f"{m}: overlap {fmt(ov, '.2f')}, lambda1 H {fmt(h1, '.4g')} G {fmt(_first(d['ggn']), '.4g')} "
                     f"R {fmt(r1, '.3g')} ({fmt(ratio, '.2f')}), G_cm {fmt(_first(d.get('class_means')), '.4g')}")
    bn = models["bn"]
    h = list(bn["hessian"])
    gaps = {k: h[k - 1] / h[k] for k in F13_GAP_K if k < len(h) and h[k] > 0}
    worst = max(gaps.values()) if gaps else float("nan")
    checks.append((f"BN: top-{max(F13_GAP_K) + 1} of H known", len(h) > max(F13_GAP_K)))
    checks.append((f"BN: largest lambda_k/lambda_(k+1) of H at k in 8..11 {fmt(worst, '.2f')} < {F13_GAP:g}",
                   finite(worst) and worst < F13_GAP))
    values["models"]["bn"] = {**bn, "gaps": gaps, "largest_gap": worst}
    parts.append(f"BN: overlap {fmt(bn.get('overlap'), '.2f')}, largest gap {fmt(worst, '.2f')}")
    notes = []
    if span_overlap is not None:
        med = float(np.median(span_overlap)) if len(span_overlap) else float("nan")
        values["span_overlap"] = list(span_overlap)
        values["span_overlap_median"] = med
        notes.append(f"frozen: median squared overlap of G's top-{len(span_overlap)} eigenvectors with the "
                     f"output-statistic span of F10: {fmt(med, '.2f')}")
    return decide(BY_ID["F13"], checks, "; ".join(parts), values, notes=notes)


def _first(xs: Sequence[float] | None) -> float:
    return float(xs[0]) if xs else float("nan")
