"""The operator interface and its combinators (`bnlab.curvature.linop`) against explicit matrices.

Every check compares with the dense product written here (float64), so the interface (`matvec`, `@`,
the scipy adapter, shape checks) and `DenseOperator` / `ProjectedOperator` are tested on their own;
`LowRankOperator` and `SumOperator` are checked in test_ggn.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla
import torch

from bnlab.curvature.linop import DenseOperator, ProjectedOperator, SymmetricOperator
from bnlab.errors import BnlabError
from conftest import requires_cuda

DIM = 6


def sym(seed: int = 0) -> torch.Tensor:
    a = torch.randn(DIM, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return a + a.T


def test_dense_operator_products_and_interface() -> None:
    M = sym()
    op = DenseOperator(M.float())  # kept as float64
    assert op.matrix.dtype == torch.float64 and op.dim == DIM and op.shape == (DIM, DIM)
    assert op.device == torch.device("cpu") and op.dtype == torch.float64
    V = torch.randn(3, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    Mf = M.float().double()
    torch.testing.assert_close(op.matmat(V), V @ Mf, rtol=1e-12, atol=1e-12)
    out = op.matmat(V.float())  # float32 vectors: computed and returned in float64
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, V.float().double() @ Mf, rtol=1e-12, atol=1e-12)
    v = V[1]
    torch.testing.assert_close(op.matvec(v), Mf @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op @ v, Mf @ v, rtol=1e-12, atol=1e-12)
    X = V[:2].T.contiguous()  # columns, as for a matrix
    torch.testing.assert_close(op @ X, Mf @ X, rtol=1e-12, atol=1e-12)
    assert (op @ X).shape == (DIM, 2)
    with pytest.raises(BnlabError, match=r"expected vectors of shape \(m, 6\), got \(3, 5\)"):
        op.matmat(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(BnlabError, match="expected vectors"):
        op.matmat(torch.zeros(DIM, dtype=torch.float64))  # one flat vector is matvec's
    with pytest.raises(BnlabError, match=r"square matrix, got \(2, 3\)"):
        DenseOperator(torch.zeros(2, 3))
    with pytest.raises(BnlabError, match="square matrix"):
        DenseOperator(torch.zeros(4))


def test_the_scipy_adapter_gives_the_dense_spectrum() -> None:
    M = sym(2)
    lin = DenseOperator(M).as_linear_operator()
    assert lin.shape == (DIM, DIM) and lin.dtype == np.float64
    x = np.arange(DIM, dtype=np.float32)[::-1]  # float32 and not contiguous: converted
    np.testing.assert_allclose(lin.matvec(x), M.numpy() @ x.astype(np.float64), rtol=1e-12)
    np.testing.assert_allclose(lin.rmatvec(x), M.numpy() @ x.astype(np.float64), rtol=1e-12)
    np.testing.assert_allclose(lin.matvec(x[:, None]).ravel(), M.numpy() @ x.astype(np.float64), rtol=1e-12)
    X = np.asfortranarray(np.random.default_rng(0).standard_normal((DIM, 3)))
    np.testing.assert_allclose(lin.matmat(X), M.numpy() @ X, rtol=1e-12, atol=1e-12)
    lam = sla.eigsh(lin, k=2, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(lam), torch.linalg.eigvalsh(M).numpy()[-2:], rtol=1e-10)


def test_projected_operator_is_i_minus_p_a_i_minus_p() -> None:
    M = sym(3)
    Q = torch.linalg.qr(torch.randn(DIM, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))[0]
    P = torch.eye(DIM, dtype=torch.float64) - Q @ Q.T
    op = ProjectedOperator(DenseOperator(M), Q.float())
    assert op.basis.dtype == torch.float64 and op.dim == DIM
    assert op.device == torch.device("cpu") and op.dtype == torch.float64
    Qf = Q.float().double()
    Pf = torch.eye(DIM, dtype=torch.float64) - Qf @ Qf.T
    V = torch.randn(4, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(op.matmat(V), V @ (Pf @ M @ Pf), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(V.float()), V.float().double() @ (Pf @ M @ Pf), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.project_out(V[0]), Pf @ V[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.project_out(V), V @ Pf, rtol=1e-12, atol=1e-12)
    assert torch.linalg.matrix_rank(op.matmat(torch.eye(DIM, dtype=torch.float64)), rtol=1e-5) == DIM - 2
    assert (P - Pf).abs().max() < 1e-6  # the float32 basis is the same subspace to float32 rounding
    with pytest.raises(BnlabError, match=r"basis has shape \(5, 2\), expected \(6, r\)"):
        ProjectedOperator(DenseOperator(M), torch.zeros(5, 2))
    with pytest.raises(BnlabError, match="basis has shape"):
        ProjectedOperator(DenseOperator(M), torch.zeros(DIM))
    with pytest.raises(BnlabError, match="expected vectors"):
        op.matmat(torch.zeros(2, DIM + 1, dtype=torch.float64))


def test_the_base_class_defaults() -> None:
    class Diagonal(SymmetricOperator):
        dim = 3

        def matmat(self, V: torch.Tensor) -> torch.Tensor:
            self._check(V)
            return V * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)

    op = Diagonal()
    assert op.device == torch.device("cpu") and op.dtype == torch.float64 and op.shape == (3, 3)
    torch.testing.assert_close(op @ torch.ones(3, dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0],
                                                                                     dtype=torch.float64))


class Recording(SymmetricOperator):
    """A dense matrix that records what its matmat receives (a subclass relying on the interface's promise)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        self.matrix, self.dim, self.calls = matrix, matrix.shape[0], []

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.calls.append((V.dtype, tuple(V.shape)))
        return V @ self.matrix


def test_the_scipy_adapter_hands_float64_blocks_and_probes_nothing() -> None:
    M = sym(4)
    op = Recording(M)
    lin = op.as_linear_operator()
    assert op.calls == [] and lin.dtype == np.float64  # dtype given: scipy does not probe with a product
    x = np.arange(DIM, dtype=np.float32)
    np.testing.assert_allclose(lin.matvec(x), M.numpy() @ x, rtol=1e-12)
    assert op.calls == [(torch.float64, (1, DIM))]  # float32 in: float64 to matmat, as the interface says
    X = np.random.default_rng(1).standard_normal((DIM, 3)).astype(np.float32)
    np.testing.assert_allclose(lin.matmat(X), M.numpy() @ X.astype(np.float64), rtol=1e-12, atol=1e-12)
    assert op.calls[1:] == [(torch.float64, (3, DIM))]  # one block product, not three matvecs


def test_low_rank_eigenpairs_in_closed_form_rank_zero_and_one() -> None:
    from bnlab.curvature.linop import LowRankOperator

    lam, vecs = LowRankOperator(torch.zeros(0, DIM)).eigenpairs()
    assert lam.shape == (0,) and vecs.shape == (0, DIM) and lam.dtype == vecs.dtype == torch.float64
    f = 0.1 * torch.arange(1.0, DIM + 1, dtype=torch.float64)  # one row of norm < 1: F^T F = f f^T
    lam, vecs = LowRankOperator(f[None]).eigenpairs()
    torch.testing.assert_close(lam, (f @ f)[None], rtol=1e-12, atol=0)
    torch.testing.assert_close(vecs[0].abs(), (f / f.norm()), rtol=1e-12, atol=0)  # unit, whatever λ's size
    F2 = 1e-3 * torch.randn(2, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    lam, vecs = LowRankOperator(F2).eigenpairs()
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(2, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(lam, torch.linalg.eigvalsh(F2.T @ F2).flip(0)[:2], rtol=1e-9, atol=1e-18)


def products_on_devices(other: torch.device) -> dict[str, torch.Tensor]:
    """Every combinator with its data on one device and the vectors on the other: each product must come back
    float64 on its vectors' device (the interface's promise), whichever device the operator computes on."""
    from bnlab.curvature.linop import LowRankOperator, SumOperator

    cpu = torch.device("cpu")
    g = torch.Generator().manual_seed(6)
    M = torch.randn(DIM, DIM, dtype=torch.float64, generator=g)
    M = M + M.T
    Q = torch.linalg.qr(torch.randn(DIM, 2, dtype=torch.float64, generator=g))[0]
    F_ = torch.randn(2, DIM, dtype=torch.float64, generator=g)
    V = torch.randn(3, DIM, generator=g)  # float32, as a caller may hand them
    out = {}
    for where, dev in (("op_there", other), ("vectors_there", cpu)):
        Vd = V if dev == other else V.to(other)  # the vectors on the device the operator is not on
        ops = {"dense": DenseOperator(M.to(dev)),
               "projected": ProjectedOperator(DenseOperator(M.to(dev)), Q.to(dev)),
               "low_rank": LowRankOperator(F_.to(dev)),
               "sum": SumOperator([(1.0, DenseOperator(M.to(dev))), (-2.0, LowRankOperator(F_.to(dev)))])}
        for name, op in ops.items():
            r = op.matmat(Vd)
            assert (r.device, r.dtype, r.shape) == (Vd.device, torch.float64, (3, DIM)), (where, name)
            out[f"{where}_{name}"] = r
        assert ops["low_rank"].factor.device == cpu  # small: kept on the CPU, moved to the vectors per product
        for v in (Vd, Vd.select(0, 0)):  # a block and one vector, the basis on the other device (select:
            # fake CUDA tensors refuse Python indexing on a build without CUDA)
            assert ops["projected"].project_out(v).device == Vd.device
    return out


def test_products_come_back_on_the_vectors_device_with_the_operator_elsewhere() -> None:
    """The device half of the interface without a GPU: torch's fake tensors carry a CUDA device (and dtype and
    shape) through every op, and refuse to mix devices as CUDA does, but hold no values. So a product left on
    the operator's device, or a CPU-held basis or factor not moved to the vectors, shows here."""
    fake = pytest.importorskip("torch._subclasses.fake_tensor")
    with fake.FakeTensorMode():
        products_on_devices(torch.device("cuda", 0))


@requires_cuda
def test_products_on_cuda_equal_the_cpu_ones() -> None:
    """The same on a real GPU, with values: each product equals the all-CPU one."""
    got = products_on_devices(torch.device("cuda", 0))
    want = products_on_devices(torch.device("cpu"))
    for key, w in want.items():
        torch.testing.assert_close(got[key].cpu(), w, rtol=1e-10, atol=1e-10, msg=key)
