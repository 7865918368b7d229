"""Random probe vectors and block products shared by the stochastic estimators."""
from __future__ import annotations

import torch

from .linop import SymmetricOperator


def rademacher(n: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """(n, dim) float64 ±1 entries, reproducible from `seed` on any device (drawn on CPU)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randint(0, 2, (n, dim), generator=g, dtype=torch.int8).to(torch.float64) * 2 - 1).to(device)


def apply(op: SymmetricOperator, V: torch.Tensor) -> torch.Tensor:
    """H V for the rows of V, as one batched product."""
    return op.matmat(V).to(device=V.device, dtype=torch.float64)
