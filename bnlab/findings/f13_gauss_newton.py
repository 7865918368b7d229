"""F13, where the outliers come from: the Hessian H = G + R (Gauss-Newton + residual) of the batch-norm
post's three simple nets (BN, frozen BN, no BN), on the same weights, batches and units as F9-F11.

The numbers come from `bnlab hessian --matrix hessian|ggn|residual` (the top eigenpairs of H, G and R,
and the class-means term of G) and `bnlab outstats` (the output-statistic span of F10); `load` reads them and
measures the overlaps of the stored eigenvectors, nothing else. Overlaps are squared: the overlap of two
k-dimensional spaces is ‖Q_Hᵀ Q_G‖²_F / k (1: the same space, k/dim: unrelated).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.eigvecs import read_eigvecs
from ..io.jsonfile import read_json
from ..io.torchfile import load_torch_file
from .base import FindingDef, Outs
from .common import MODELS
from .record import Finding, FindingRecord, decide, finite, fmt, num

F13_CLASSES = 10  # C: the outlier count of a C-class net (Papyan: C class-means outliers)
F13_OVERLAP = 0.9  # frozen and no BN: top-k spaces of H and G
F13_RESIDUAL = 0.2  # frozen and no BN: lambda1(R) <= 0.2 lambda1(H)
F13_GAP = 1.8  # BN: no lambda_k / lambda_(k+1) of H reaches this (F9's gap) at k in 8..11
F13_GAP_K = (8, 9, 10, 11)
SHARP = ("frozen", "no_bn")

SPEC = Finding(
    "F13", "batch-norm", "outliers are Gauss-Newton (frozen, no BN)",
    "On the same weights and batches H = G + R, G = J^T H_out J the Gauss-Newton matrix: for frozen BN "
    "and no BN the top of H is G's (the same top-C space, a small residual R), G's outliers coming from "
    "class-mean structure; BN's Hessian has no separated top.",
    "L (Sagun et al. 2017; Papyan 2019, 2020)",
    "the outliers of H are G's: C class-means outliers (+ C(C-1) cross-class), the bulk is R and G's rest",
    f"frozen and no BN: squared overlap of the top-k eigenvector spaces of H and G (k = min({F13_CLASSES}, computed)) "
    f">= {num(F13_OVERLAP)} and lambda1(R) <= {num(F13_RESIDUAL)} lambda1(H); BN: lambda_k / lambda_(k+1) of H < "
    f"{num(F13_GAP)} at every k in {min(F13_GAP_K)}..{max(F13_GAP_K)}; reported, no threshold: the class-means "
    "term's top eigenvalues beside G's, BN's overlap, the frozen net's G outliers in the F10 span")


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
    return decide(SPEC, checks, "; ".join(parts), values, notes=notes)


def _first(xs: Sequence[float] | None) -> float:
    return float(xs[0]) if xs else float("nan")


def load(outs: Outs) -> dict[str, Any]:
    """The three spectra and the H/G overlaps per model, and G's overlap with the F10 span."""
    from ..outstats.run import TENSORS_FILE
    from ..outstats.subspace import orthonormal_basis, overlaps

    models, vecs = {}, {}
    for m in MODELS:
        h, g = read_eigvecs(outs[f"hessian_{m}"]), read_eigvecs(outs[f"ggn_{m}"])
        k = min(F13_CLASSES, h.eigenvectors.shape[0], g.eigenvectors.shape[0])
        ggn = read_json(outs[f"ggn_{m}"] / "hessian.json")
        models[m] = {"hessian": h.eigenvalues.tolist(), "ggn": g.eigenvalues.tolist(), "k": k,
                     "overlap": float(overlaps(h.eigenvectors[:k].T, g.eigenvectors[:k].T).mean()),
                     "residual": read_json(outs[f"residual_{m}"] / "hessian.json")["eigen"]["eigenvalues"],
                     "class_means": ggn.get("class_means", {}).get("eigenvalues", [])}
        vecs[m] = g.eigenvectors[:k]
    frozen = outs["outstats_frozen"]  # the F10 span: every output-statistic gradient, as outstats kept it
    grads = load_torch_file(frozen / TENSORS_FILE)["grads"]
    basis, _ = orthonormal_basis(grads, read_json(frozen / "outstats.json")["span"]["rtol"])
    return {"models": models, "span_overlap": overlaps(basis, vecs["frozen"].T).tolist()}


def figure(f: Any) -> Any:
    """The three spectra per model: top eigenvalues of H, G and R, and the class-means term of G."""
    from ..plotting import panels, style

    models = f.values["models"]
    fig, axes = panels.panel(f, 14, 4.6, len(models))
    colors = style.colors(4)
    for ax, (m, d) in zip(axes, models.items()):
        for (key, label, line), c in zip((("hessian", "H", "o-"), ("ggn", "G (Gauss-Newton)", "s--"),
                                           ("class_means", "G class-means term", "^:"),
                                           ("residual", "R = H − G", "x-")), colors):
            ev = [v for v in d.get(key) or [] if v > 0]  # a log axis: R's top may be negative
            if ev:
                ax.plot(np.arange(1, len(ev) + 1), ev, line, color=c, label=label)
        ax.set(yscale="log", xlabel="rank", title=f"{panels.MODEL_LABELS.get(m, m)}: top-{d['k']} overlap H/G "
               f"{d.get('overlap', float('nan')):.2f}")
        style.integer_ticks(ax)
    axes[0].set_ylabel("eigenvalue (loss summed over a batch)")
    style.legend_outside(axes[-1], fontsize=8)
    return fig


FINDING = FindingDef(SPEC, tuple(f"{kind}_{m}" for m in MODELS for kind in ("hessian", "ggn", "residual"))
                     + ("outstats_frozen",), load, f13_gauss_newton, figure)
