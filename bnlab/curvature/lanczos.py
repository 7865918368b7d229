"""Extreme eigenpairs of a symmetric operator: thick-restart Lanczos (ours) or ARPACK (scipy).

`top_eigenpairs(op, k, which, tol, v0)` accepts any `SymmetricOperator` (a HessianOperator, a
projected or a dense one, ...).
The Krylov basis is float64 with full re-orthogonalisation (twice, classical Gram-Schmidt), so
no ghost copies of converged eigenvalues appear. A pair is converged when its residual
‖Hv − λv‖ ≤ tol·|λ|; for the Lanczos method that residual is |β_m s_{m,i}| (exact up to rounding
under full re-orthogonalisation), and ``verify=True`` also measures ‖Hv − λv‖ directly (k more
products, done as one matmat when the operator has one).

Warm start: `v0` may be one vector or a block (m, dim) — e.g. the eigenvectors of the previous
checkpoint; a block is summed into the start vector, whose Krylov space then contains good
approximations of all of them after few steps.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from ..errors import BnlabError
from .linop import SymmetricOperator

WHICH = ("LA", "SA", "LM")
EIG_METHODS = ("lanczos", "arpack", "block")  # block: bnlab.curvature.block_lanczos


@dataclass
class EigenResult:
    eigenvalues: torch.Tensor  # (k,) float64, ordered by `which` (LA: descending)
    eigenvectors: torch.Tensor  # (k, dim) float64, orthonormal rows, on CPU
    residuals: torch.Tensor  # (k,) ‖Hv − λv‖ (measured if verified, else Lanczos estimate)
    converged: torch.Tensor  # (k,) bool: residual ≤ tol·|λ|
    hvp_count: int  # products used by the solver (excluding verification)
    wall_time: float  # seconds, solver only
    which: str = "LA"
    tol: float = 1e-4
    method: str = "lanczos"
    restarts: int = 0
    verified: bool = False
    verify_hvps: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def param_shaped(self, op: Any) -> list[dict[str, torch.Tensor]]:
        """Eigenvectors as {parameter name: tensor} dicts, via `op.unflatten`."""
        return [op.unflatten(v) for v in self.eigenvectors]


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


def _start_vector(v0: torch.Tensor | None, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    rnd = torch.randn(dim, generator=g, dtype=torch.float64).to(device)
    if v0 is None:
        return rnd / rnd.norm()
    v0 = v0.to(device=device, dtype=torch.float64)
    if v0.dim() == 2:
        v0 = (v0 / v0.norm(dim=1, keepdim=True).clamp_min(1e-300)).sum(0)
    if v0.shape != (dim,):
        raise BnlabError(f"start vector has shape {tuple(v0.shape)}, expected ({dim},) or (m, {dim})")
    # A little noise so components missing from the warm start can still be found.
    v = v0 / v0.norm().clamp_min(1e-300) + 1e-3 * rnd / rnd.norm()
    return v / v.norm()


def _check(op: SymmetricOperator, k: int, which: str, tol: float, method: str) -> int:
    dim = int(op.dim)
    if which not in WHICH:
        raise BnlabError(f"unknown --which {which!r}; choose one of {', '.join(WHICH)}")
    if method not in EIG_METHODS:
        raise BnlabError(f"unknown eigensolver {method!r}; choose one of {', '.join(EIG_METHODS)}")
    if k < 1:
        raise BnlabError(f"--top-k must be at least 1, got {k}")
    limit = dim - 1 if method == "arpack" else dim
    if k > limit:
        raise BnlabError(f"--top-k {k} is larger than the Hessian's dimension allows ({dim} parameters"
                         f"{'; ARPACK needs k < dim' if method == 'arpack' else ''})")
    if not tol > 0:
        raise BnlabError(f"--tol must be positive, got {tol}")
    return dim


def top_eigenpairs(op: SymmetricOperator, k: int, which: str = "LA", tol: float = 1e-4,
                   v0: torch.Tensor | None = None, *,
                   method: str = "lanczos", ncv: int | None = None, max_hvps: int | None = None, seed: int = 0,
                   verify: bool = False, callback: Callable[[int, np.ndarray], None] | None = None,
                   block_size: int | None = None) -> EigenResult:
    """The k extreme eigenpairs of `op` (largest algebraic LA, smallest SA, largest magnitude LM).

    ncv: Krylov subspace size (default min(dim, max(2k + 10, 20)));  max_hvps: give up after this many
    products (unconverged pairs are flagged, not hidden); callback(hvps_done, residual/|λ| of the
    wanted pairs) after each restart (for progress display); block_size: vectors per pass of
    method "block" (`bnlab.curvature.block_lanczos`).
    """
    dim = _check(op, k, which, tol, method)
    ncv = min(dim, ncv or max(2 * k + 10, 20))
    if ncv <= k and method == "arpack":
        ncv = min(dim, k + 1)
    max_hvps = max_hvps or 100 * ncv + 10 * k
    device = getattr(op, "device", torch.device("cpu"))
    q0 = _start_vector(v0, dim, seed, device)
    t0 = time.perf_counter()
    if method == "arpack":
        res = _arpack(op, k, which, tol, q0, ncv, max_hvps)
    elif method == "block":
        from .block_lanczos import block_solve  # (it imports this module)
        res = block_solve(op, k, which, tol, v0, q0, ncv, max_hvps, seed, callback, block_size)
    else:
        res = _thick_restart(op, k, which, tol, q0, ncv, max_hvps, seed, callback)
    res.wall_time = time.perf_counter() - t0
    if verify:
        measured = residual_norms(op, res.eigenvalues, res.eigenvectors.to(device))
        res.info["residuals_estimate"] = res.residuals.tolist()
        res.residuals = measured.cpu()
        res.converged = res.residuals <= tol * res.eigenvalues.abs()
        res.verified, res.verify_hvps = True, len(res.eigenvalues)
    return res


def residual_norms(op: SymmetricOperator, lam: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """‖H v_i − λ_i v_i‖ for the rows of V (one matmat if the operator has one)."""
    HV = op.matmat(V)
    return (HV - lam.to(HV.device)[:, None] * V.to(HV.device)).norm(dim=1)


def _thick_restart(op: SymmetricOperator, k: int, which: str, tol: float, q0: torch.Tensor, m: int, max_hvps: int,
                   seed: int, callback: Callable[[int, np.ndarray], None] | None) -> EigenResult:
    """Thick-restart Lanczos (Wu & Simon 2000) with full re-orthogonalisation in float64."""
    dim, device = q0.shape[0], q0.device
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    Q = torch.zeros(m + 1, dim, dtype=torch.float64, device=device)
    T = np.zeros((m, m))
    Q[0] = q0
    start, hvps, restarts = 0, 0, 0
    beta_m = 0.0
    while True:
        j = start
        while j < m:
            w = op.matvec(Q[j]).to(device=device, dtype=torch.float64)
            hvps += 1
            h = Q[:j + 1] @ w
            w = w - Q[:j + 1].T @ h
            h2 = Q[:j + 1] @ w  # second pass: re-orthogonalise to working precision
            w = w - Q[:j + 1].T @ h2
            h = (h + h2).cpu().numpy()
            T[j, :j + 1] = h
            T[:j + 1, j] = h
            beta = float(w.norm())
            scale = max(abs(h).max(initial=0.0), 1e-300)
            if beta <= 1e-12 * scale:  # invariant subspace found: continue with a fresh direction
                if j + 1 >= dim:  # the basis spans everything: the Ritz pairs are exact
                    beta_m, m_eff = 0.0, j + 1
                    break
                w = torch.randn(dim, generator=g, dtype=torch.float64).to(device)
                for _ in range(2):
                    w = w - Q[:j + 1].T @ (Q[:j + 1] @ w)
                w = w / w.norm()
                beta = 0.0
            else:
                w = w / beta
            Q[j + 1] = w  # (T[j + 1, j] = beta is written by the next step's re-orthogonalisation: h[j])
            beta_m = beta
            j += 1
            if hvps >= max_hvps:
                m_eff = j
                break
        else:
            m_eff = m
        Tm = T[:m_eff, :m_eff]
        theta, S = np.linalg.eigh((Tm + Tm.T) / 2)
        order = _order(theta, which)
        resid = np.abs(beta_m * S[m_eff - 1, :])
        want = order[:k]
        rel = resid[want] / np.maximum(np.abs(theta[want]), 1e-300)
        done = bool(np.all(rel <= tol)) or m_eff >= dim or hvps >= max_hvps or m_eff < m
        if callback is not None:
            callback(hvps, rel)
        if done:
            Y = torch.from_numpy(np.ascontiguousarray(S[:, want])).to(device)
            V = (Y.T @ Q[:m_eff]).cpu()
            lam = torch.from_numpy(theta[want].copy())
            res = torch.from_numpy(resid[want].copy())
            return EigenResult(lam, V, res, res <= tol * lam.abs(), hvps, 0.0, which, tol, "lanczos", restarts,
                               info={"ncv": m})
        # Thick restart: keep the wanted Ritz vectors plus some of the next ones (they speed up
        # convergence of the wanted ones), and the last Lanczos vector as the residual direction.
        nconv = int(np.sum(rel <= tol))
        keep = min(m - 1, k + max((m - k) // 2, nconv))
        keep = max(keep, k)
        kept = order[:keep]
        Y = torch.from_numpy(np.ascontiguousarray(S[:, kept])).to(device)
        Q[:keep] = Y.T @ Q[:m_eff]
        Q[keep] = Q[m_eff]
        T[:] = 0.0
        # The kept Ritz values on the diagonal; the arrowhead T[keep, :keep] (= beta_m S[m-1, kept]) is
        # written by the first step after the restart, whose re-orthogonalisation computes it as h[:keep].
        T[np.arange(keep), np.arange(keep)] = theta[kept]
        start = keep
        restarts += 1


def _arpack(op: SymmetricOperator, k: int, which: str, tol: float, q0: torch.Tensor, ncv: int,
            max_hvps: int) -> EigenResult:
    """scipy eigsh (ARPACK implicitly restarted Lanczos) on a float64 LinearOperator around `op`."""
    dim, device = q0.shape[0], q0.device
    count = [0]

    def mv(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)).to(device)
        return op.matvec(v).to(torch.float64).cpu().numpy()

    lo = LinearOperator((dim, dim), matvec=mv, dtype=np.float64)
    converged_all = True
    try:
        lam, vec = eigsh(lo, k=k, which=which, tol=tol, v0=q0.cpu().numpy(), ncv=ncv,
                         maxiter=max(1, max_hvps // max(ncv - k, 1)))
    except ArpackNoConvergence as e:
        lam, vec, converged_all = e.eigenvalues, e.eigenvectors, False
    order = _order(lam, which)
    lam = torch.from_numpy(np.ascontiguousarray(lam[order]))
    V = torch.from_numpy(np.ascontiguousarray(vec[:, order].T))
    # ARPACK does not return residuals: report NaN unless verified; "converged" is its own verdict.
    res = torch.full_like(lam, float("nan"))
    conv = torch.full(lam.shape, converged_all, dtype=torch.bool)
    return EigenResult(lam, V, res, conv, count[0], 0.0, which, tol, "arpack", info={"ncv": ncv})
