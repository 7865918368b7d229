"""Trace (Hutchinson, Hutch++) and spectral density (SLQ) where the answer is exact by construction.

- A diagonal matrix: every Rademacher probe z has z_i^2 = 1, so z^T D z = tr(D) exactly, and an SLQ probe
  v = z / sqrt(dim) has v_i^2 = 1/dim: with dim Lanczos steps its quadrature reproduces the spectral
  measure (1/dim) sum_i delta(t - d_i) exactly, so every moment and the smoothed density are exact.
- A matrix of rank r with >= 3r products: Hutch++'s sketch spans its range, so its trace is exact.
- In general: estimates within 4 stated standard errors, and the error bars are the sample statistics.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import bnlab.curvature.density as density_module
import bnlab.curvature.trace as trace_module
from bnlab.curvature import hutchinson_trace, hutchpp_trace, slq_density
from bnlab.curvature._probe import rademacher
from bnlab.curvature.density import DensityResult, _block_lanczos_tridiag
from bnlab.curvature.linop import SymmetricOperator
from bnlab.errors import BnlabError
from conftest import requires_cuda


class Dense(SymmetricOperator):
    """An explicit float64 matrix whose products (rows of matmat) are counted."""

    def __init__(self, A: np.ndarray) -> None:
        self.A = torch.from_numpy(np.asarray(A, dtype=np.float64))
        self.dim = self.A.shape[0]
        self.products = 0

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.products += V.shape[0]
        return V @ self.A


def rotated(spectrum: np.ndarray, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(spectrum), len(spectrum))))
    return (q * spectrum) @ q.T


DIAG = np.array([4.0, -1.0, 2.5, 0.5, 3.0, -2.0, 1.0, 0.0, 6.0, -0.5, 1.5, 2.0])


def test_rademacher_probes() -> None:
    Z = rademacher(50, 40, seed=3, device=torch.device("cpu"))
    assert Z.shape == (50, 40) and Z.dtype == torch.float64
    assert set(Z.unique().tolist()) == {-1.0, 1.0} and abs(Z.mean().item()) < 0.1
    assert torch.equal(Z, rademacher(50, 40, seed=3, device=torch.device("cpu")))
    assert not torch.equal(Z, rademacher(50, 40, seed=4, device=torch.device("cpu")))


def test_hutchinson_exact_on_a_diagonal_and_its_error_bar() -> None:
    op = Dense(np.diag(DIAG))
    res = hutchinson_trace(op, num_probes=7, seed=1)
    assert res.estimate == pytest.approx(DIAG.sum(), abs=1e-12) and res.stderr == pytest.approx(0, abs=1e-12)
    assert res.num_matvecs == 7 == op.products and res.method == "hutchinson" and len(res.samples) == 7
    # a general matrix: the samples' mean and standard error, and the truth within 4 of them
    A = rotated(np.linspace(-3, 5, 40), seed=2)
    res = hutchinson_trace(Dense(A), num_probes=60, seed=2)
    s = np.array(res.samples)
    assert res.estimate == pytest.approx(s.mean(), rel=1e-12)
    assert res.stderr == pytest.approx(s.std(ddof=1) / math.sqrt(60), rel=1e-12) and res.stderr > 0
    assert abs(res.estimate - np.trace(A)) <= 4 * res.stderr
    # each sample is z^T A z for a +-1 vector z: |sample - tr A| <= sum of |off-diagonal| entries
    assert np.all(np.abs(s - np.trace(A)) <= np.abs(A - np.diag(np.diag(A))).sum() + 1e-9)
    one = hutchinson_trace(Dense(A), num_probes=1)
    assert one.stderr == math.inf and one.to_dict() == {"estimate": one.estimate, "stderr": math.inf,
                                                        "method": "hutchinson", "num_matvecs": 1,
                                                        "wall_time": one.wall_time}
    with pytest.raises(BnlabError, match="at least one probe"):
        hutchinson_trace(Dense(A), num_probes=0)


def test_hutchpp_exact_for_low_rank_and_within_error_otherwise() -> None:
    spectrum = np.zeros(60)
    spectrum[:4] = [9.0, -5.0, 3.0, 1.0]
    op = Dense(rotated(spectrum, seed=4))
    res = hutchpp_trace(op, num_matvecs=15, seed=2)  # sketch of 5 >= rank 4: the range is captured
    assert res.estimate == pytest.approx(8.0, abs=1e-9) and max(abs(x) for x in res.samples) < 1e-9
    assert res.num_matvecs == 15 == op.products and res.method == "hutch++" and len(res.samples) == 5
    A = rotated(np.concatenate([[50.0, 30.0], np.linspace(-1, 1, 48)]), seed=5)
    op = Dense(A)
    res = hutchpp_trace(op, num_matvecs=32, seed=3)  # s = 10 sketch, 12 Hutchinson probes
    assert res.num_matvecs == 32 == op.products and len(res.samples) == 12
    s = np.array(res.samples)
    assert res.stderr == pytest.approx(s.std(ddof=1) / math.sqrt(12), rel=1e-12)
    assert abs(res.estimate - np.trace(A)) <= 4 * res.stderr + 1e-9
    # the low-rank part takes the outliers: the residual samples are far smaller than plain Hutchinson's
    plain = hutchinson_trace(Dense(A), num_probes=32, seed=3)
    assert res.stderr < 0.5 * plain.stderr
    tiny = hutchpp_trace(Dense(np.diag([1.0, 2.0])), num_matvecs=9)  # sketch capped at the dimension
    assert tiny.estimate == pytest.approx(3.0) and tiny.num_matvecs == 2 * 2 + 5
    with pytest.raises(BnlabError, match="at least 3 matvecs"):
        hutchpp_trace(Dense(A), num_matvecs=2)


def test_slq_exact_on_a_diagonal() -> None:
    dim = len(DIAG)
    op = Dense(np.diag(DIAG))
    d = slq_density(op, num_probes=3, lanczos_steps=50, seed=0)  # steps capped at dim: exact quadrature
    assert d.nodes.shape == (3, dim) and d.weights.shape == (3, dim) and d.dim == dim
    assert d.num_matvecs == 3 * dim == op.products
    for nodes, w in zip(d.nodes, d.weights):
        np.testing.assert_allclose(np.sort(nodes), np.sort(DIAG), atol=1e-10)
        np.testing.assert_allclose(w, 1 / dim, atol=1e-10)
    for p in (1, 2, 3, 5):
        m, se = d.moment(p)
        assert m == pytest.approx(np.mean(DIAG ** p), rel=1e-9, abs=1e-12) and se == pytest.approx(0, abs=1e-9)
    tr, tr_se = d.trace()
    assert tr == pytest.approx(DIAG.sum(), rel=1e-9) and tr_se == pytest.approx(0, abs=1e-8)
    grid = np.linspace(-4, 8, 101)
    sigma = 0.3
    dens, se = d.density(grid, sigma)
    truth = np.exp(-0.5 * ((grid[:, None] - DIAG[None]) / sigma) ** 2).sum(1) / (dim * sigma * math.sqrt(2 * math.pi))
    np.testing.assert_allclose(dens, truth, atol=1e-9)
    np.testing.assert_allclose(se, 0, atol=1e-9)
    g, s = d.default_grid(points=50)
    assert s == pytest.approx((DIAG.max() - DIAG.min()) / 200)
    assert len(g) == 50 and g[0] == pytest.approx(DIAG.min() - 5 * s) and g[-1] == pytest.approx(DIAG.max() + 5 * s)
    rec = d.to_dict(points=50)
    assert rec["sigma"] == s and rec["grid"] == pytest.approx(g.tolist()) and rec["trace"] == pytest.approx(tr)
    assert (rec["num_probes"], rec["lanczos_steps"], rec["num_matvecs"]) == (3, dim, 3 * dim)
    assert rec["density"] == pytest.approx(d.density(g, s)[0].tolist())
    assert sum(np.array(rec["weights"])[0]) == pytest.approx(1.0)


def test_slq_repeated_eigenvalues_stop_early_and_stay_exact() -> None:
    # 3 distinct eigenvalues in dimension 30: every Krylov space closes after 3 steps
    spec = np.repeat([-1.0, 2.0, 5.0], 10)
    op = Dense(rotated(spec, seed=6))
    d = slq_density(op, num_probes=4, lanczos_steps=8, seed=1)
    assert d.num_matvecs == 4 * 8  # products of every step, stopped runs included in the block
    # each probe's measure has 3 atoms, so its 3-node quadrature is exact: sum w t^p = v^T A^p v for any p
    V = (rademacher(4, 30, seed=1, device=torch.device("cpu")) / math.sqrt(30)).numpy()
    for p in (1, 2, 4, 7):
        Ap = np.linalg.matrix_power(op.A.numpy(), p)
        np.testing.assert_allclose((d.weights * d.nodes ** p).sum(1), np.einsum("pi,ij,pj->p", V, Ap, V), rtol=1e-8)
    np.testing.assert_allclose(d.weights.sum(1), 1.0, atol=1e-10)
    big = d.weights > 1e-8
    assert np.all(np.min(np.abs(d.nodes[big][:, None] - np.array([-1.0, 2.0, 5.0])[None]), axis=1) < 1e-8)


def test_slq_general_matrix_and_grouping() -> None:
    spec = np.concatenate([[8.0], np.linspace(-1, 1, 59)])
    A = rotated(spec, seed=7)
    d = slq_density(Dense(A), num_probes=12, lanczos_steps=20, seed=2)
    tr, tr_se = d.trace()
    assert abs(tr - spec.sum()) <= 4 * tr_se and tr_se > 0
    m2, se2 = d.moment(2)
    assert abs(m2 - np.mean(spec ** 2)) <= 4 * se2
    assert d.nodes.min() >= spec.min() - 1e-9 and d.nodes.max() <= spec.max() + 1e-9
    # probes run in groups that fit `memory_mb`: a group of one gives the same numbers
    one = slq_density(Dense(A), num_probes=12, lanczos_steps=20, seed=2, memory_mb=1e-6)
    np.testing.assert_allclose(one.nodes, d.nodes, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(one.weights, d.weights, rtol=1e-9, atol=1e-12)
    single = slq_density(Dense(A), num_probes=1, lanczos_steps=5)
    dens, se = single.density(np.array([0.0, 1.0]), 0.5)
    assert np.all(np.isinf(se)) and single.moment(1)[1] == math.inf
    with pytest.raises(BnlabError, match="at least one probe"):
        slq_density(Dense(A), num_probes=0)
    with pytest.raises(BnlabError, match="at least one probe"):
        slq_density(Dense(A), lanczos_steps=0)


def test_smallest_sample_sizes_have_finite_error_bars() -> None:
    # two samples are the fewest with a sample standard deviation; Hutch++ needs 3 products (1 each part)
    A = rotated(np.linspace(-2.0, 5.0, 12), seed=9)
    two = hutchinson_trace(Dense(A), num_probes=2, seed=1)
    assert math.isfinite(two.stderr) and two.stderr == pytest.approx(np.std(two.samples, ddof=1) / math.sqrt(2))
    three = hutchpp_trace(Dense(A), num_matvecs=3, seed=1)
    assert three.num_matvecs == 3 and math.isfinite(three.estimate)
    d = slq_density(Dense(A), num_probes=2, lanczos_steps=6, seed=1)
    grid = np.linspace(-3.0, 6.0, 7)
    _, se = d.density(grid, sigma=0.5)
    assert np.all(np.isfinite(se)) and np.any(se > 0)


def test_hutchpp_adds_the_stochastic_part_of_the_residual() -> None:
    # outliers for the sketch, and a bulk in [1, 3] whose trace (~96) the residual probes must add
    spec = np.concatenate([[50.0, 30.0], np.linspace(1.0, 3.0, 48)])
    res = hutchpp_trace(Dense(rotated(spec, seed=8)), num_matvecs=30, seed=1)
    assert abs(res.estimate - spec.sum()) <= 4 * res.stderr and res.stderr < 10
    assert np.mean(res.samples) > 50  # most of the bulk's trace is left to the residual probes


def test_defaults_seeds_and_wall_times() -> None:
    A = rotated(np.linspace(-2.0, 5.0, 70), seed=9)
    t0 = time.perf_counter()
    plain = hutchinson_trace(Dense(A))
    hpp = hutchpp_trace(Dense(A))
    dens = slq_density(Dense(A))
    elapsed = time.perf_counter() - t0
    assert len(plain.samples) == plain.num_matvecs == 30 and hpp.num_matvecs == 30
    assert dens.nodes.shape == (10, 64)  # 10 probes, 64 steps
    assert plain.to_dict() == {**hutchinson_trace(Dense(A), num_probes=30, seed=0).to_dict(),
                               "wall_time": plain.wall_time}
    assert hpp.estimate == hutchpp_trace(Dense(A), num_matvecs=30, seed=0).estimate
    np.testing.assert_array_equal(dens.nodes, slq_density(Dense(A), num_probes=10, seed=0).nodes)
    for r in (plain, hpp, dens):
        assert 0 < r.wall_time < elapsed


def test_slq_density_record_and_its_error_bars() -> None:
    A = rotated(np.linspace(-2.0, 5.0, 30), seed=10)
    d = slq_density(Dense(A), num_probes=2, lanczos_steps=6, seed=3)
    grid, sigma = np.linspace(-3.0, 6.0, 9), 0.4
    k = np.exp(-0.5 * ((grid[None, None] - d.nodes[:, :, None]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    per_probe = (d.weights[:, :, None] * k).sum(1)  # (2, 9): each probe's smoothed measure
    dens, se = d.density(grid.astype(int), sigma)  # integer grids work as floats
    dens, se = d.density(grid, sigma)
    np.testing.assert_allclose(dens, per_probe.mean(0), rtol=1e-12)
    np.testing.assert_allclose(se, per_probe.std(0, ddof=1) / math.sqrt(2), rtol=1e-12)
    m3 = (d.weights * d.nodes ** 3).sum(1)
    assert d.moment(3) == pytest.approx((m3.mean(), m3.std(ddof=1) / math.sqrt(2)), rel=1e-12)
    rec = d.to_dict(points=25, sigma=0.4)
    g = np.linspace(d.nodes.min() - 2.0, d.nodes.max() + 2.0, 25)
    want = {"grid": g, "density": d.density(g, 0.4)[0], "density_stderr": d.density(g, 0.4)[1], "sigma": 0.4,
            "nodes": d.nodes, "weights": d.weights, "trace": d.trace()[0], "trace_stderr": d.trace()[1],
            "num_probes": 2, "lanczos_steps": 6, "num_matvecs": 12, "wall_time": d.wall_time}
    assert set(rec) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(np.asarray(rec[key]), np.asarray(value), rtol=1e-12, err_msg=key)
    assert len(d.to_dict()["grid"]) == len(d.default_grid()[0]) == 400


def test_a_point_spectrum_gets_a_point_grid() -> None:
    d = DensityResult(np.full((2, 3), 3.0), np.full((2, 3), 1 / 3), dim=5, num_matvecs=6, wall_time=0.0)
    grid, sigma = d.default_grid()
    assert sigma == pytest.approx(1e-12 / 200) and grid[0] < 3.0 < grid[-1] and grid[-1] - grid[0] < 1e-12


class Spy(Dense):
    """Dense, recording the number of vectors in every product call."""

    def __init__(self, A: np.ndarray) -> None:
        super().__init__(A)
        self.calls: list[int] = []

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.calls.append(V.shape[0])
        return super().matmat(V)


@pytest.mark.parametrize("fit", [0, 1, 3])
def test_slq_probe_groups_fit_the_memory_asked_for(fit: int) -> None:
    dim, m, probes = 40, 7, 8
    basis_bytes = 8 * (m + 1) * dim  # one probe's float64 Krylov basis
    op = Spy(rotated(np.linspace(-1.0, 2.0, dim), seed=11))
    d = slq_density(op, num_probes=probes, lanczos_steps=m, memory_mb=(fit * basis_bytes + 1) / 2**20)
    group = max(1, fit)  # at least one probe, whatever the budget
    assert max(op.calls) == group and op.calls[0] == group
    assert d.num_matvecs == probes * m == op.products  # counted over every group
    np.testing.assert_allclose(d.nodes, slq_density(Dense(op.A.numpy()), num_probes=probes, lanczos_steps=m).nodes,
                               rtol=1e-9, atol=1e-12)


def test_slq_one_lanczos_step_is_the_rayleigh_quotient() -> None:
    A = rotated(np.linspace(-1.0, 2.0, 20), seed=12)
    d = slq_density(Dense(A), num_probes=3, lanczos_steps=1, seed=4)
    V = (rademacher(3, 20, seed=4, device=torch.device("cpu")) / math.sqrt(20)).numpy()
    np.testing.assert_allclose(d.nodes[:, 0], np.einsum("pi,ij,pj->p", V, A, V), rtol=1e-12)
    np.testing.assert_allclose(d.weights, 1.0)


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e4])
def test_slq_breakdown_test_is_relative_to_the_operators_scale(scale: float) -> None:
    # 3 distinct eigenvalues: every run closes after 3 products, at any scale, with the same relative nodes
    spec = np.repeat([-1.0, 2.0, 5.0], 10)
    op = Spy(scale * rotated(spec, seed=6))
    d = slq_density(op, num_probes=4, lanczos_steps=8, seed=1)
    assert op.calls == [4, 4, 4]  # then the block has no active run left
    big = d.weights > 1e-8
    assert big.sum(1).tolist() == [3] * 4
    np.testing.assert_allclose(np.sort(d.nodes[big].reshape(4, 3), axis=1) / scale, [[-1.0, 2.0, 5.0]] * 4,
                               rtol=1e-8, atol=1e-8)


def test_a_run_that_closes_early_leaves_the_others_running() -> None:
    # row 0 starts on an eigenvector (closes after one product), row 1 is generic: stepped together,
    # row 1 must get the same recurrence as when it runs alone
    spec = np.linspace(1.0, 3.0, 12)
    op = Dense(rotated(spec, seed=13))
    eig = torch.from_numpy(np.linalg.eigh(op.A.numpy())[1][:, 4])
    generic = torch.from_numpy(np.random.default_rng(1).standard_normal(12))
    generic = generic / generic.norm()
    a, b = _block_lanczos_tridiag(op, torch.stack([eig, generic]), 6)
    a1, b1 = _block_lanczos_tridiag(op, generic[None], 6)
    np.testing.assert_allclose(a[1], a1[0], rtol=1e-10)
    np.testing.assert_allclose(b[1], b1[0], rtol=1e-10)
    assert a[0, 0] == pytest.approx(spec[4]) and np.all(a[0, 1:] == 0) and np.all(b[0] == 0)


class OnCuda(Dense):
    """Dense held on the GPU; its products insist on vectors already there (the estimators keep their
    probes and bases on the operator's device)."""

    def __init__(self, A: np.ndarray) -> None:
        super().__init__(A)
        self.A = self.A.cuda()

    @property
    def device(self) -> torch.device:
        return self.A.device

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        assert V.device == self.A.device, f"a product was asked on {V.device}"
        return super().matmat(V)


def test_probes_are_drawn_for_the_operators_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # on a CPU every device looks alike, so the probe source records the device it is asked for (the CUDA twin
    # below checks the values on a GPU)
    asked = []

    def spy(n: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
        asked.append(device)
        return rademacher(n, dim, seed, device)

    for module in (trace_module, density_module):
        monkeypatch.setattr(module, "rademacher", spy)
    op = Dense(rotated(DIAG, seed=3))  # its device is SymmetricOperator's default, the CPU
    hutchinson_trace(op, num_probes=4)
    hutchpp_trace(op, num_matvecs=9)
    slq_density(op, num_probes=2, lanczos_steps=4)
    assert asked == [op.device] * 4  # Hutchinson 1, Hutch++ 2 (sketch, residual), SLQ 1


def test_the_slq_basis_lives_on_the_start_vectors_device() -> None:
    # PyTorch's meta device stands in for a GPU (shapes and devices, no values): the first product must be
    # asked on the start vectors' device, so the basis was made there
    class Stop(Exception):
        pass

    class Records(Dense):
        def matmat(self, V: torch.Tensor) -> torch.Tensor:
            self.device_asked = V.device
            raise Stop

    op = Records(np.eye(4))
    with pytest.raises(Stop):
        _block_lanczos_tridiag(op, torch.zeros(2, 4, dtype=torch.float64, device="meta"), 3)
    assert op.device_asked.type == "meta"


@requires_cuda
def test_estimators_work_on_the_operators_device() -> None:
    A = rotated(np.concatenate([[9.0, 6.0], np.linspace(-1.0, 2.0, 38)]), seed=14)
    for estimate in (lambda op: hutchinson_trace(op, num_probes=6, seed=2).samples,
                     lambda op: hutchpp_trace(op, num_matvecs=12, seed=2).samples,
                     lambda op: slq_density(op, num_probes=3, lanczos_steps=10, seed=2).nodes):
        np.testing.assert_allclose(np.asarray(estimate(OnCuda(A))), np.asarray(estimate(Dense(A))),
                                   rtol=1e-8, atol=1e-10)
