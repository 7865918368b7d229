"""Per-channel statistics of a module's output, as differentiable per-batch terms.

An output tensor of shape (B, C, *spatial) is viewed as (B, C, L); a channel's statistics are
taken over examples and spatial positions together. Two ways to combine fixed batches:

- ``"per-batch"`` (the batch-norm post): each batch's mean, variance and third central moment
  are computed within the batch, then averaged over batches with weights n_b / N. With BN in
  batch mode a batch's statistic depends on which examples share it, so this is the only
  meaningful reading there. The mean coincides with the full-set mean for every model whose
  outputs do not depend on batch composition (frozen BN, no BN, BN in running mode).
- ``"pooled"``: the central moments of all N outputs together, combined exactly from per-batch
  raw moments about a fixed shift (the full-set mean from a pre-pass, so no cancellation).

Either way, the accumulated terms are linear in per-batch quantities, so their gradients add up
over batches exactly; `finalize` turns the summed terms (and their gradients) into statistics.
"""
from __future__ import annotations

import torch

STATS = ("mean", "var", "skew")
MOMENTS = ("per-batch", "pooled")


def channel_view(out: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C, L); a (B,) output counts as one channel."""
    if out.dim() == 1:
        return out.reshape(-1, 1, 1)
    return out.reshape(out.shape[0], out.shape[1], -1)


def channel_count(out: torch.Tensor) -> int:
    """Values per channel in this batch (examples x spatial positions)."""
    v = channel_view(out)
    return v.shape[0] * v.shape[2]


def batch_terms(out: torch.Tensor, stats: tuple[str, ...], moments: str, weight: float,
                shift: torch.Tensor | None = None) -> torch.Tensor:
    """Terms (len(stats), C) of one batch whose weighted sum over batches `finalize` turns into stats.

    per-batch: weight * (mean_b, var_b, skew_b) with weight = n_b / N.
    pooled: weight * (E_b[x-a], E_b[(x-a)^2], E_b[(x-a)^3]) about the fixed shift a (C,), i.e.
    the raw moments; only as many orders as the highest requested statistic need.
    """
    v = channel_view(out)
    if moments == "per-batch":
        m = v.mean(dim=(0, 2))
        rows = []
        d = v - m.view(1, -1, 1) if ("var" in stats or "skew" in stats) else None
        for s in stats:
            if s == "mean":
                rows.append(m)
            elif s == "var":
                rows.append((d * d).mean(dim=(0, 2)))
            else:
                rows.append((d * d * d).mean(dim=(0, 2)))
        return torch.stack(rows) * weight
    order = max(STATS.index(s) for s in stats) + 1
    d = v - (shift.view(1, -1, 1).to(v.dtype) if shift is not None else 0)
    rows = [(d ** k).mean(dim=(0, 2)) for k in range(1, order + 1)]
    return torch.stack(rows) * weight


def finalize(terms: torch.Tensor, grads: torch.Tensor, stats: tuple[str, ...], moments: str,
             shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics (S, C) and their gradients (S, C, P) from summed terms and term gradients.

    `terms` is (T, C) and `grads` (T, C, P) with T = len(stats) (per-batch) or the number of raw
    moments (pooled). Pooled statistics use the chain rule on the exact moment identities
    var = E2 - d^2, skew = E3 - 3 d E2 + 2 d^3 with d = E1 (moments about the shift).
    """
    if moments == "per-batch":
        return terms, grads
    e1, g1 = terms[0], grads[0]
    vals, gs = [], []
    for s in stats:
        if s == "mean":
            base = shift if shift is not None else torch.zeros_like(e1)
            vals.append(e1 + base.to(e1))
            gs.append(g1)
        elif s == "var":
            e2, g2 = terms[1], grads[1]
            vals.append(e2 - e1 ** 2)
            gs.append(g2 - 2 * e1[:, None] * g1)
        else:
            e2, g2, e3, g3 = terms[1], grads[1], terms[2], grads[2]
            vals.append(e3 - 3 * e1 * e2 + 2 * e1 ** 3)
            gs.append(g3 - 3 * (e2[:, None] * g1 + e1[:, None] * g2) + 6 * (e1 ** 2)[:, None] * g1)
    return torch.stack(vals), torch.stack(gs)
