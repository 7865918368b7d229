"""Random probe vectors and block products shared by the stochastic estimators."""
from __future__ import annotations

from typing import Any

import torch


def rademacher(n: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """(n, dim) float64 ±1 entries, reproducible from `seed` on any device (drawn on CPU)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randint(0, 2, (n, dim), generator=g, dtype=torch.int8).to(torch.float64) * 2 - 1).to(device)


def apply(op: Any, V: torch.Tensor) -> torch.Tensor:
    """H V for the rows of V: one batched matmat when the operator has it, else row by row."""
    if hasattr(op, "matmat"):
        return op.matmat(V).to(device=V.device, dtype=torch.float64)
    return torch.stack([op.matvec(v).to(device=V.device, dtype=torch.float64) for v in V])


def op_device(op: Any) -> torch.device:
    return getattr(op, "device", torch.device("cpu"))
