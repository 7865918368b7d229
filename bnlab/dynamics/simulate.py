"""Simulated scale-invariant weights under torch's SGD: the ground truth that `bnlab.theory` is tested on.

Each of `rows` independent weight vectors w in R^dim gets, every step, a random gradient orthogonal
to w with ``||g|| = sqrt(L) / ||w||`` -- exactly what a BN-preceded layer sees if its gradient were
pure noise. All rows share one ``torch.optim.SGD`` (the optimizer is elementwise, so rows stay
independent), which makes the weight-decay-before-momentum and Nesterov semantics torch's own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SphereRun:
    norm: np.ndarray  # (steps, rows) ||w|| after each step
    angle: np.ndarray  # (steps, rows) angle between w before and after each step
    rel_step: np.ndarray  # (steps, rows) ||w_after - w_before|| / ||w_before||


def stable_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise angle between a and b as 2 asin(||a/|a| - b/|b||| / 2): accurate for tiny angles."""
    ua = a / a.norm(dim=-1, keepdim=True)
    ub = b / b.norm(dim=-1, keepdim=True)
    return 2 * torch.asin(((ua - ub).norm(dim=-1) / 2).clamp(max=1.0))


def simulate_sphere(lrs: np.ndarray, wd: float, momentum: float = 0.0, nesterov: bool = False, *,
                    grad_scale: float = 1.0, dim: int = 256, rows: int = 64, norm0: float = 1.0,
                    seed: int = 0, grad_corr: float = 0.0) -> SphereRun:
    """Run len(lrs) SGD steps (lr lrs[t] at step t) from random w with ||w|| = norm0, in float64.

    grad_corr: the noise is AR(1) in the ambient space, xi_t = c xi_{t-1} + sqrt(1 - c^2) z_t, so successive
    gradients correlate as cos(g_t, g_{t-k}) ~ c^k (up to O(1/dim) from projecting out w)."""
    if not -1 < grad_corr < 1:
        raise ValueError(f"grad_corr must be in (-1, 1), got {grad_corr}")
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    w = torch.nn.Parameter(w0 * (norm0 / w0.norm(dim=1, keepdim=True)))
    opt = torch.optim.SGD([w], lr=float(lrs[0]), momentum=momentum, nesterov=nesterov, weight_decay=wd)
    n = len(lrs)
    xi = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    norm, angle, rel = (np.empty((n, rows)) for _ in range(3))
    for t in range(n):
        with torch.no_grad():
            before = w.detach().clone()
            z = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
            xi = grad_corr * xi + (1 - grad_corr ** 2) ** 0.5 * z if grad_corr else z
            u = before / before.norm(dim=1, keepdim=True)
            g = xi - (xi * u).sum(1, keepdim=True) * u  # orthogonal to w: the scale-invariance identity
            wn = before.norm(dim=1, keepdim=True)
            w.grad = g * (grad_scale ** 0.5 / (g.norm(dim=1, keepdim=True) * wn))
        for group in opt.param_groups:
            group["lr"] = float(lrs[t])
        opt.step()
        with torch.no_grad():
            norm[t] = w.norm(dim=1).numpy()
            angle[t] = stable_angle(before, w).numpy()
            rel[t] = ((w - before).norm(dim=1) / before.norm(dim=1)).numpy()
    return SphereRun(norm=norm, angle=angle, rel_step=rel)
