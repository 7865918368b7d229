"""Extreme eigenpairs by thick-restart block Lanczos: b vectors per product, so b times fewer passes.

`top_eigenpairs(op, k, ..., method="block")` runs `block_lanczos`. Each step multiplies a block of b
orthonormal vectors in one `matmat` (one pass over the data for a `DataOperator`: the forward and
gradient graph of a batch are shared by the b vectors, and torch.func vmaps over them), appends it
to the basis Q and its products W = A Q, and takes the Ritz pairs of the projected matrix T = Q Wᵀ.

Because every product is kept, T is the exact Rayleigh quotient of the basis (no three-term
recurrence to lose orthogonality to) and a Ritz pair's residual ‖A v − θ v‖ = ‖Wᵀy − θ Qᵀy‖ is
measured, not estimated, after every block, so the solver stops at the first block where the
wanted pairs meet ‖A v − λ v‖ ≤ tol·|λ| (the Lanczos solver's criterion). The next block is the
new products with the basis projected out (twice, classical Gram-Schmidt); directions that vanish
(an invariant subspace, a degenerate eigenvalue) are replaced by seeded random ones, so repeated
eigenvalues are found with their multiplicity up to the block size b; an eigenvalue repeated more often
can be missed when the Krylov space closes on an exactly invariant subspace first (e.g. {2 x4, 1 x4}
from a rank-3 start: [2, 2, 2, 1]), as with any Krylov method. When the basis would exceed ncv vectors it restarts
on the best Ritz vectors (their products are combinations of W: no products spent). The basis
holds at least k + 8b vectors: with fewer, restarts come every block or two and convergence at a
bulk edge stalls (measured on a 200-dim spectrum, k = 5, b = 8, tol 1e-4: basis 37 took 672
products, 80 took 200; single-vector Lanczos 84 products in 84 passes, block b = 4: 132 in 33).

Memory: 2·ncv vectors of float64 (Q and W); with the larger basis about 2-4x the Lanczos solver's.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .lanczos import EigenResult, _order
from .linop import SymmetricOperator

DEFAULT_BLOCK = 4  # vectors per pass: fewer passes vs more products, measured (docs/performance.md)
_VANISHED = 1e-10  # a direction this much smaller than its product (relative) is an invariant-subspace artefact


def start_block(v0: torch.Tensor | None, q0: torch.Tensor, b: int, seed: int) -> torch.Tensor:
    """b start vectors (rows): the warm start's rows first (the excess summed into the last), then q0's
    seeded random fill. `q0` is `top_eigenpairs`'s start vector (its warm-start sum, or random)."""
    dim, device = q0.shape[0], q0.device
    g = torch.Generator(device="cpu").manual_seed(seed + 2)
    rows = torch.randn(b, dim, generator=g, dtype=torch.float64).to(device)
    rows[0] = q0
    if v0 is not None and v0.dim() == 2 and v0.shape[0] > 1:
        v = v0.to(device=device, dtype=torch.float64)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
        if v.shape[0] > b:
            v = torch.cat([v[:b - 1], v[b - 1:].sum(0, keepdim=True)])
        # A little noise (as for one start vector) so components missing from the warm start can still be found.
        rows[:v.shape[0]] = v + 1e-3 * rows[:v.shape[0]] / rows[:v.shape[0]].norm(dim=1, keepdim=True)
    return rows


def orthonormal_block(R: torch.Tensor, Q: torch.Tensor, scale: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The rows of R made orthonormal to each other and to the rows of Q (twice Gram-Schmidt).

    A row whose norm falls below _VANISHED·scale[i] (its size before the projections) has no new
    direction in it: it is replaced by a seeded random one (the caller leaves room: rows ≤ dim − len(Q)).
    """
    out: list[torch.Tensor] = []
    for i in range(R.shape[0]):
        r, size = R[i], float(scale[i])
        basis = torch.cat([Q, *[o[None] for o in out]])
        while True:
            for _ in range(2):
                r = r - basis.T @ (basis @ r)
            norm = float(r.norm())
            if norm > _VANISHED * size:
                break
            r = torch.randn(R.shape[1], generator=g, dtype=torch.float64).to(R.device)
            size = float(r.norm())
        out.append(r / norm)
    return torch.stack(out) if out else R[:0]


def block_solve(op: SymmetricOperator, k: int, which: str, tol: float, v0: torch.Tensor | None, q0: torch.Tensor,
                ncv: int, max_hvps: int, seed: int, callback: Callable[[int, np.ndarray], None] | None,
                block_size: int | None = None) -> EigenResult:
    """`top_eigenpairs`'s method "block": b = block_size (default DEFAULT_BLOCK, at most dim) vectors per pass."""
    b = max(1, min(block_size or DEFAULT_BLOCK, q0.shape[0]))
    return block_lanczos(op, k, which, tol, start_block(v0, q0, b, seed), ncv, max_hvps, seed, callback)


def block_lanczos(op: SymmetricOperator, k: int, which: str, tol: float, start: torch.Tensor, ncv: int,
                  max_hvps: int, seed: int, callback: Callable[[int, np.ndarray], None] | None) -> EigenResult:
    """Thick-restart block Lanczos from the rows of `start` (block size b = its row count).

    Stops when the k wanted Ritz pairs have relative residuals ≤ tol, the basis spans the space, or
    `max_hvps` products are spent (the last block is cut to the budget, so the count is exact).
    """
    dim, device = start.shape[1], start.device
    b = start.shape[0]
    ncv = min(dim, max(ncv, k + 8 * b))  # room for several blocks between restarts (see the module docstring)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    Q = torch.zeros(0, dim, dtype=torch.float64, device=device)
    W = torch.zeros_like(Q)
    T = np.zeros((0, 0))
    X = orthonormal_block(start, Q, start.norm(dim=1), g)
    hvps = passes = restarts = 0
    while True:
        AX = op.matmat(X).to(device=device, dtype=torch.float64)
        hvps, passes = hvps + X.shape[0], passes + 1
        C, D = (Q @ AX.T).cpu().numpy(), (X @ AX.T).cpu().numpy()
        T = np.block([[T, C], [C.T, (D + D.T) / 2]])
        Q, W = torch.cat([Q, X]), torch.cat([W, AX])
        theta, S = np.linalg.eigh((T + T.T) / 2)
        order = _order(theta, which)
        want = order[:k]
        Y = torch.from_numpy(np.ascontiguousarray(S[:, want])).to(device)
        V, AV = Y.T @ Q, Y.T @ W
        lam = torch.from_numpy(theta[want].copy())
        resid = (AV - lam.to(device)[:, None] * V).norm(dim=1).cpu()
        rel = (resid / lam.abs().clamp_min(1e-300)).numpy()
        if callback is not None:
            callback(hvps, rel)
        n = Q.shape[0]
        if (n >= k and bool(np.all(rel <= tol))) or n >= dim or hvps >= max_hvps:
            return EigenResult(lam, V.cpu(), resid, resid <= tol * lam.abs(), hvps, 0.0, which, tol, "block",
                               restarts, info={"ncv": ncv, "block_size": b, "passes": passes})
        R = AX - (AX @ Q.T) @ Q  # the next Lanczos block, before its orthonormalisation
        if n + min(b, dim - n, max_hvps - hvps) > ncv:  # thick restart on the best Ritz vectors (their products
            # are W's combinations) when the next block, as cut to the space and the budget, would not fit
            nconv = int(np.sum(rel <= tol))
            keep = max(k, min(ncv - b, max(k + (ncv - b - k) // 2, nconv)))
            Yk = torch.from_numpy(np.ascontiguousarray(S[:, order[:keep]])).to(device)
            Q, W = Yk.T @ Q, Yk.T @ W
            T = np.diag(theta[order[:keep]])
            restarts += 1
        m = min(b, dim - Q.shape[0], max_hvps - hvps)
        X = orthonormal_block(R[:m], Q, AX[:m].norm(dim=1), g)
