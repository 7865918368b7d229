"""Trace of a symmetric operator by Hutchinson and Hutch++ (Meyer et al. 2021), with standard errors.

Both accept any object with ``.dim`` and ``.matvec`` (``.matmat`` is used when present, so probes
share passes over the data). The standard error is the sample standard deviation of the
per-probe estimates over sqrt(#probes); for Hutch++ it covers the stochastic part only (the
low-rank part tr(QᵀHQ) is computed exactly).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BnlabError
from ._probe import apply, rademacher
from .linop import SymmetricOperator


@dataclass
class TraceResult:
    estimate: float
    stderr: float
    method: str  # "hutchinson" or "hutch++"
    num_matvecs: int
    wall_time: float
    samples: list[float]  # the per-probe estimates of the stochastic part

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "stderr": self.stderr, "method": self.method,
                "num_matvecs": self.num_matvecs, "wall_time": self.wall_time}


def _stderr(x: torch.Tensor) -> float:
    return float(x.std(unbiased=True) / math.sqrt(len(x))) if len(x) > 1 else float("inf")


def hutchinson_trace(op: SymmetricOperator, num_probes: int = 30, seed: int = 0) -> TraceResult:
    """tr(H) ≈ mean of zᵀHz over Rademacher z."""
    if num_probes < 1:
        raise BnlabError(f"need at least one probe, got {num_probes}")
    t0 = time.perf_counter()
    Z = rademacher(num_probes, int(op.dim), seed, op.device)
    samples = (Z * apply(op, Z)).sum(1).cpu()
    return TraceResult(float(samples.mean()), _stderr(samples), "hutchinson", num_probes,
                       time.perf_counter() - t0, samples.tolist())


def hutchpp_trace(op: SymmetricOperator, num_matvecs: int = 30, seed: int = 0) -> TraceResult:
    """Hutch++: exact trace on a sketched top subspace + Hutchinson on the rest (num_matvecs in all)."""
    if num_matvecs < 3:
        raise BnlabError(f"Hutch++ needs at least 3 matvecs, got {num_matvecs}")
    t0 = time.perf_counter()
    dim, device = int(op.dim), op.device
    s = min(num_matvecs // 3, dim)
    r = num_matvecs - 2 * s
    S = rademacher(s, dim, seed, device)
    Q, _ = torch.linalg.qr(apply(op, S).T)  # (dim, s) orthonormal basis of the range sketch
    low_rank = float(torch.trace(Q.T @ apply(op, Q.T.contiguous()).T))
    G = rademacher(r, dim, seed + 1, device)
    G = G - (G @ Q) @ Q.T
    samples = (G * apply(op, G)).sum(1).cpu()
    return TraceResult(low_rank + float(samples.mean()), _stderr(samples), "hutch++", 2 * s + r,
                       time.perf_counter() - t0, samples.tolist())
