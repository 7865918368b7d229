"""Spectral density by stochastic Lanczos quadrature (SLQ; Ubaru, Chen & Saad 2017; Ghorbani et al. 2019).

For each Rademacher probe v (normalised), m Lanczos steps with full re-orthogonalisation give
the Gauss quadrature nodes θ_i and weights w_i = (first component of the i-th Ritz vector)² of
the spectral measure of v: Σ_j (vᵀu_j)² δ(t − λ_j). Averaging over probes estimates the
normalised spectral density (1/dim) Σ_j δ(t − λ_j); we smooth it with a Gaussian of width
sigma. The uncertainty is the standard error over probes, pointwise on the grid.

Probes run together (their products are one `matmat` per Lanczos step), in groups whose
float64 Krylov bases fit `memory_mb`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import BnlabError
from ._probe import apply, rademacher
from .linop import SymmetricOperator


@dataclass
class DensityResult:
    nodes: np.ndarray  # (probes, m) Gauss nodes
    weights: np.ndarray  # (probes, m) Gauss weights (each row sums to 1)
    dim: int
    num_matvecs: int
    wall_time: float

    def density(self, grid: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian-smoothed density on `grid` (integrates to 1) and its pointwise standard error."""
        g = np.asarray(grid, dtype=np.float64)
        k = np.exp(-0.5 * ((g[None, None, :] - self.nodes[:, :, None]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        per_probe = (self.weights[:, :, None] * k).sum(1)
        n = per_probe.shape[0]
        se = per_probe.std(0, ddof=1) / math.sqrt(n) if n > 1 else np.full(len(g), np.inf)
        return per_probe.mean(0), se

    def moment(self, power: int) -> tuple[float, float]:
        """tr(H^power)/dim estimate and its standard error (exact per probe if 2m-1 >= power)."""
        per_probe = (self.weights * self.nodes ** power).sum(1)
        n = len(per_probe)
        return float(per_probe.mean()), float(per_probe.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf

    def trace(self) -> tuple[float, float]:
        """tr(H) estimate and standard error (the Hutchinson estimate with these probes)."""
        m, se = self.moment(1)
        return m * self.dim, se * self.dim

    def default_grid(self, points: int = 400, sigma: float | None = None) -> tuple[np.ndarray, float]:
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        span = max(hi - lo, 1e-12)
        sigma = sigma or span / 200
        return np.linspace(lo - 5 * sigma, hi + 5 * sigma, points), sigma

    def to_dict(self, points: int = 400, sigma: float | None = None) -> dict[str, Any]:
        grid, sigma = self.default_grid(points, sigma)
        dens, se = self.density(grid, sigma)
        tr, tr_se = self.trace()
        return {"grid": grid.tolist(), "density": dens.tolist(), "density_stderr": se.tolist(), "sigma": sigma,
                "nodes": self.nodes.tolist(), "weights": self.weights.tolist(), "trace": tr,
                "trace_stderr": tr_se, "num_probes": int(self.nodes.shape[0]),
                "lanczos_steps": int(self.nodes.shape[1]), "num_matvecs": self.num_matvecs,
                "wall_time": self.wall_time}


def slq_density(op: SymmetricOperator, num_probes: int = 10, lanczos_steps: int = 64, seed: int = 0,
                memory_mb: float = 1024.0) -> DensityResult:
    """Run SLQ on `op` (any object with .dim and .matvec; .matmat used when present)."""
    dim, device = int(op.dim), op.device
    if num_probes < 1 or lanczos_steps < 1:
        raise BnlabError("SLQ needs at least one probe and one Lanczos step")
    m = min(lanczos_steps, dim)
    group = max(1, min(num_probes, int(memory_mb * 2**20 // (8 * (m + 1) * dim))))
    t0 = time.perf_counter()
    Z = rademacher(num_probes, dim, seed, device) / math.sqrt(dim)
    nodes, weights, mv = [], [], 0
    for i in range(0, num_probes, group):
        a, b = _block_lanczos_tridiag(op, Z[i:i + group], m)
        mv += a.shape[0] * a.shape[1]
        for al, be in zip(a, b):
            T = np.diag(al) + np.diag(be[:-1], 1) + np.diag(be[:-1], -1)
            theta, S = np.linalg.eigh(T)
            nodes.append(theta)
            weights.append(S[0] ** 2)
    return DensityResult(np.array(nodes), np.array(weights), dim, mv, time.perf_counter() - t0)


def _block_lanczos_tridiag(op: SymmetricOperator, V0: torch.Tensor, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent Lanczos runs from each row of V0 (unit vectors), stepped together.

    Returns alphas (p, m) and betas (p, m). A run that finds an invariant subspace early (β ≈ 0)
    stops growing: its later α, β are zero-padded and carry zero weight.
    """
    p, dim = V0.shape
    Q = torch.zeros(p, m + 1, dim, dtype=torch.float64, device=V0.device)
    Q[:, 0] = V0
    alpha, beta = np.zeros((p, m)), np.zeros((p, m))
    active = np.ones(p, dtype=bool)
    for j in range(m):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        W = apply(op, Q[idx, j])
        Qj = Q[idx, :j + 1]  # (a, j+1, dim)
        coef = torch.zeros(len(idx), j + 1, dtype=torch.float64, device=W.device)
        for _ in range(2):  # full re-orthogonalisation, twice (classical Gram-Schmidt)
            h = torch.einsum("ajd,ad->aj", Qj, W)
            W = W - torch.einsum("ajd,aj->ad", Qj, h)
            coef += h
        alpha[idx, j] = coef[:, j].cpu().numpy()
        if j == m - 1:
            break
        nrm = W.norm(dim=1).cpu().numpy()
        for r, i in enumerate(idx):
            if nrm[r] <= 1e-10 * max(float(coef[r].abs().max()), 1e-300):
                active[i] = False  # invariant subspace: the quadrature is already exact
                continue
            beta[i, j] = nrm[r]
            Q[i, j + 1] = W[r] / nrm[r]
    return alpha, beta
