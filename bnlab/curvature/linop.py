"""The one operator interface every solver and estimator is written against.

A `SymmetricOperator` is a symmetric linear map on flat float64 vectors of length `dim`. A subclass
implements `matmat` (H V for the rows of V, shape (m, dim)); `matvec`, `@` and the scipy adapter
follow from it. Products come back float64 on the device of their input.

The data operators (`bnlab.curvature.base.DataOperator`: the Hessian, the Gauss-Newton matrix, the
residual) and the combinators here are the implementations: `DenseOperator` (an explicit matrix:
ground truth in tests, small problems), `LowRankOperator` (Fᵀ F for a few rows F, with exact
eigenpairs), `SumOperator` (Σ a_i A_i) and `ProjectedOperator` ((I-P) A (I-P), to remove a
subspace). Lanczos, SLQ density and the trace estimators take any of them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator

from ..errors import BnlabError


class SymmetricOperator(ABC):
    dim: int

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the products are computed in (results are always returned as float64)."""
        return torch.float64

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    @abstractmethod
    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for the rows of V (m, dim) -> (m, dim) float64 on V's device."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat (dim,) vector."""
        return self.matmat(v.reshape(1, -1))[0]

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        """H @ v (vector) or H @ V (columns of V, (dim, m)), as for a matrix."""
        if v.dim() == 1:
            return self.matvec(v)
        return self.matmat(v.T).T

    def _check(self, V: torch.Tensor) -> None:
        if V.dim() != 2 or V.shape[1] != self.dim:
            raise BnlabError(f"expected vectors of shape (m, {self.dim}), got {tuple(V.shape)}")

    def as_linear_operator(self) -> LinearOperator:
        """A float64 scipy LinearOperator (numpy in, numpy out), e.g. for scipy's eigsh."""
        def mv(x: np.ndarray) -> np.ndarray:
            return self.matvec(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))).numpy()

        def mm(X: np.ndarray) -> np.ndarray:
            X = np.ascontiguousarray(X, dtype=np.float64)
            return self.matmat(torch.from_numpy(X.T.copy())).numpy().T

        return LinearOperator((self.dim, self.dim), matvec=mv, matmat=mm, rmatvec=mv, dtype=np.float64)


class DenseOperator(SymmetricOperator):
    """An explicit symmetric matrix as an operator."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise BnlabError(f"DenseOperator needs a square matrix, got {tuple(matrix.shape)}")
        self.matrix = matrix.double()
        self.dim = matrix.shape[0]

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self._check(V)
        return (V.to(self.matrix) @ self.matrix).to(V.device)  # symmetric: (H V^T)^T = V H


class ProjectedOperator(SymmetricOperator):
    """(I - P) A (I - P) with P = Q Qᵀ for an orthonormal basis Q (dim, r) of the removed subspace."""

    def __init__(self, op: SymmetricOperator, basis: torch.Tensor) -> None:
        if basis.dim() != 2 or basis.shape[0] != op.dim:
            raise BnlabError(f"basis has shape {tuple(basis.shape)}, expected ({op.dim}, r)")
        self.op = op
        self.basis = basis.double()
        self.dim = op.dim

    @property
    def device(self) -> torch.device:
        return self.op.device

    @property
    def dtype(self) -> torch.dtype:
        return self.op.dtype

    def project_out(self, V: torch.Tensor) -> torch.Tensor:
        """Rows of V (m, dim) (or one vector) with their components in span(Q) removed."""
        q = self.basis.to(V.device)
        if V.dim() == 1:
            return V - q @ (q.T @ V)
        return V - (V @ q) @ q.T

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self._check(V)
        V = V.double()
        return self.project_out(self.op.matmat(self.project_out(V)).double().to(V.device))


class LowRankOperator(SymmetricOperator):
    """Fᵀ F for the rows of F (r, dim): rank ≤ r, PSD; its nonzero eigenpairs come exactly from the r × r Gram."""

    def __init__(self, factor: torch.Tensor) -> None:
        if factor.dim() != 2:
            raise BnlabError(f"LowRankOperator needs a (rank, dim) factor, got {tuple(factor.shape)}")
        self.factor = factor.detach().double().cpu()  # r x dim, small: kept on the CPU (the base's device)
        self.dim = factor.shape[1]

    @property
    def rank_bound(self) -> int:
        return self.factor.shape[0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self._check(V)
        F = self.factor.to(V.device)
        return (V.double() @ F.T) @ F

    def eigenpairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(eigenvalues descending (r,), unit eigenvectors as rows (r, dim)) of Fᵀ F, from F Fᵀ = U Λ Uᵀ."""
        if self.rank_bound == 0:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, self.dim, dtype=torch.float64)
        lam, U = torch.linalg.eigh(self.factor @ self.factor.T)
        lam, U = lam.flip(0).clamp_min(0), U.flip(1)
        vecs = U.T @ self.factor  # row j = u_jᵀ F, of norm sqrt(λ_j)
        return lam, vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-300)


class SumOperator(SymmetricOperator):
    """Σ_i a_i A_i for operators of one dimension (e.g. H − G = SumOperator([(1, H), (-1, G)]))."""

    def __init__(self, terms: list[tuple[float, SymmetricOperator]]) -> None:
        if not terms or len({op.dim for _, op in terms}) != 1:
            raise BnlabError("SumOperator needs at least one term, all of one dimension")
        self.terms = [(float(a), op) for a, op in terms]
        self.dim = terms[0][1].dim

    @property
    def device(self) -> torch.device:
        return self.terms[0][1].device

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self._check(V)
        V = V.double()
        out = torch.zeros_like(V)
        for a, op in self.terms:
            out += a * op.matmat(V).to(V.device)
        return out


def scaled(op: SymmetricOperator, a: float) -> SumOperator:
    """a · A, as a one-term sum."""
    return SumOperator([(a, op)])
