"""Block Lanczos restarts only when the next block, as cut to the space and the budget, would overflow
the basis (part of curvature.block_lanczos's mutation selection)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bnlab.curvature import top_eigenpairs
from bnlab.curvature.linop import SymmetricOperator

pytestmark = pytest.mark.usefixtures("one_thread")


class Counted(SymmetricOperator):
    """Q diag(spectrum) Qᵀ; records the rows of every matmat call."""

    def __init__(self, spectrum) -> None:
        q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((len(spectrum), len(spectrum))))
        self.dim = len(spectrum)
        self.A = torch.from_numpy((q * np.asarray(spectrum, dtype=np.float64)) @ q.T)
        self.calls: list[int] = []

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.calls.append(V.shape[0])
        return V @ self.A


def test_a_last_block_cut_to_the_space_is_appended_without_a_restart() -> None:
    # dim 6, b = 4, k = 2: the basis may hold all 6 vectors (ncv = dim), and the second block is cut to
    # the 2 directions left, so it fits: 6 products span the space. Restarting there (as if a whole block
    # of 4 came next) threw 2 Ritz vectors away and spent 4 products to rebuild them: [4, 4].
    op = Counted([3.0, 2.0, 1.0, 0.5, 0.25, 0.125])
    res = top_eigenpairs(op, 2, which="SA", tol=1e-30, method="block", block_size=4)
    assert op.calls == [4, 2] and res.hvp_count == 6 and res.restarts == 0
    np.testing.assert_allclose(res.eigenvalues.numpy(), [0.125, 0.25], rtol=1e-12)


def test_the_space_cut_alone_decides_when_the_budget_is_large() -> None:
    # as above with a budget far beyond the space: the block is cut by the 2 directions left, not the budget
    op = Counted([3.0, 2.0, 1.0, 0.5, 0.25, 0.125])
    res = top_eigenpairs(op, 2, which="SA", tol=1e-30, method="block", block_size=4, max_hvps=100)
    assert op.calls == [4, 2] and res.restarts == 0


def test_a_last_block_cut_to_the_budget_is_appended_without_a_restart() -> None:
    # dim 40, b = 2, k = 1: the basis holds ncv = k + 8b = 17 vectors. After 8 blocks (16 products) one product
    # of the budget of 17 is left: the last block is that 1 vector, 16 + 1 fits, so no restart. Cutting by the
    # space only (or misreading the budget) would see a block of 2, 18 > 17, and restart.
    op = Counted(np.linspace(1.0, 2.0, 40))
    res = top_eigenpairs(op, 1, which="LA", tol=1e-30, method="block", block_size=2, max_hvps=17, ncv=17)
    assert op.calls == [2] * 8 + [1] and res.hvp_count == 17 and res.restarts == 0
