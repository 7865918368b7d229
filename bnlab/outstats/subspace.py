"""Gradient spans, overlaps of vectors with them, and the Hessian with the span projected out."""
from __future__ import annotations

import torch


def orthonormal_basis(rows: torch.Tensor, rtol: float = 1e-8) -> tuple[torch.Tensor, list[int]]:
    """Orthonormal basis (P, r) of the span of the rows (K, P), built in row order, and the kept rows.

    Gram-Schmidt, orthogonalised twice per row (numerically as good as Householder QR), keeping
    the order (so the first columns span the means when rows are means, variances, skews). A row
    whose remainder is below `rtol` x its norm adds nothing to the span and is dropped: plain QR
    would return an arbitrary unit vector for it, which is not in the span.
    """
    rows = rows.double()
    cols: list[torch.Tensor] = []
    kept: list[int] = []
    for i, g in enumerate(rows):
        norm = g.norm()
        if norm == 0:
            continue
        v = g.clone()
        if cols:
            q = torch.stack(cols, dim=1)
            for _ in range(2):
                v = v - q @ (q.T @ v)
        if v.norm() > rtol * norm:
            cols.append(v / v.norm())
            kept.append(i)
    if not cols:
        return rows.new_zeros(rows.shape[1], 0), kept
    return torch.stack(cols, dim=1), kept


def overlaps(basis: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """‖P v‖² / ‖v‖² for each column v of `vectors` (P, m), P the projector onto span(basis)."""
    vectors = vectors.double()
    if vectors.dim() == 1:
        vectors = vectors[:, None]
    proj = basis.T.to(vectors) @ vectors
    return (proj ** 2).sum(dim=0) / (vectors ** 2).sum(dim=0)


def random_overlaps(basis: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Overlaps of `n` isotropic random vectors: the baseline, about r/P in expectation.

    The vectors are drawn on the CPU and moved to the basis' device, so a seed gives the same baseline on any
    device (as the curvature probes do)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(basis.shape[0], n, generator=g, dtype=torch.float64).to(basis.device)
    return overlaps(basis, v)
