"""Does a smaller sample than the post's suffice? lambda1 of the Hessian on two disjoint halves of an
evaluation set's fixed batches (the first half of the batches and the rest), each as its own data operator.

Used by `bnlab reproduce` when its sample is smaller than the batch-norm post's 80 batches of 256: their
spread beside a verdict says how much lambda1 moves with the sample.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..context import AnalysisContext
from ..errors import BnlabError
from .hessian import solve_with_progress
from .source import curvature_operator


def halves(ctx: AnalysisContext) -> tuple[AnalysisContext, AnalysisContext]:
    """The context cut into two disjoint halves along its batches (the same batches as the whole)."""
    sizes = ctx.sizes
    if len(sizes) < 2:
        raise BnlabError(f"two halves need at least 2 batches (have {len(sizes)} of {ctx.spec.batch_size})")
    n = sum(sizes[:len(sizes) // 2])  # whole batches: the second half's batches are the whole's
    return (dataclasses.replace(ctx, x=ctx.x[:n], y=ctx.y[:n]), dataclasses.replace(ctx, x=ctx.x[n:], y=ctx.y[n:]))


def lambda1_halves(ctx: AnalysisContext, *, loss_scale: str = "mean", tol: float = 1e-3, seed: int = 0,
                   params: Sequence[str] | None = None, quiet: bool = True) -> dict[str, Any]:
    """lambda1 of the Hessian (of `params`, default all trainable) on each half, their relative spread
    |a - b| / mean and the images of each."""
    values, counts, converged, hvps = [], [], [], 0
    for i, half in enumerate(halves(ctx)):
        op = curvature_operator(half, "hessian", loss_scale=loss_scale, params=params)
        res = solve_with_progress(op, 1, desc=f"lambda1, half {i + 1}", quiet=quiet, tol=tol, seed=seed,
                                  verify=False)
        values.append(float(res.eigenvalues[0]))
        counts.append(len(half.y))
        converged.append(bool(res.converged.all()))
        hvps += res.hvp_count
    mean = (values[0] + values[1]) / 2
    return {"lambda1": values, "num_samples": counts, "spread": abs(values[0] - values[1]) / mean if mean else None,
            "converged": converged, "hvps": hvps, "loss_scale": loss_scale, "tol": tol,
            "settings": ctx.settings()}
