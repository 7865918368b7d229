"""top_eigenpairs (thick-restart Lanczos and ARPACK) on matrices whose spectra are known by construction:
Q diag(lambda) Q^T with a random orthogonal Q. Fast (no network), so every property is checked directly:
eigenvalues and their order, eigenvectors, residuals and the converged flags, product counts, restarts,
budgets, warm starts, invariant subspaces, errors."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from bnlab.curvature import EigenResult, residual_norms, top_eigenpairs
from bnlab.curvature.linop import SymmetricOperator
from bnlab.errors import BnlabError
from conftest import HeldOn, requires_cuda


class Sym(SymmetricOperator):
    """Q diag(spectrum) Q^T (dim x dim) whose products (rows of matmat) are counted."""

    def __init__(self, spectrum, seed: int = 0) -> None:
        self.spectrum = np.asarray(spectrum, dtype=np.float64)
        self.dim = len(self.spectrum)
        g = np.random.default_rng(seed)
        q, _ = np.linalg.qr(g.standard_normal((self.dim, self.dim)))
        self.Q = q
        self.A = torch.from_numpy((q * self.spectrum) @ q.T)
        self.products = 0

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.products += V.shape[0]
        return V @ self.A

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": v[:2], "b": v[2:].reshape(-1, 1)}

    def vectors(self, idx) -> np.ndarray:
        return self.Q[:, idx]


def spectrum_mixed(dim: int = 120) -> np.ndarray:
    """Three large positive, two large negative outliers, a bulk in [-1, 1]."""
    bulk = np.linspace(-1, 1, dim - 5)
    return np.concatenate([[30.0, 20.0, 12.0, -25.0, -15.0], bulk])


def subspace_cos(U: np.ndarray, V: torch.Tensor) -> np.ndarray:
    """Cosines of the principal angles between span(U columns) and span(V rows)."""
    return np.linalg.svd(U.T @ V.numpy().T, compute_uv=False)


@pytest.mark.parametrize("method", ["lanczos", "arpack"])
@pytest.mark.parametrize("which,expect", [("LA", [30.0, 20.0, 12.0]), ("SA", [-25.0, -15.0, -1.0]),
                                          ("LM", [30.0, -25.0, 20.0])])
def test_which_order_vectors_and_residuals(method: str, which: str, expect: list[float]) -> None:
    op = Sym(spectrum_mixed())
    res = top_eigenpairs(op, 3, which=which, tol=1e-10, method=method, verify=True)
    assert isinstance(res, EigenResult) and (res.which, res.method, res.tol) == (which, method, 1e-10)
    np.testing.assert_allclose(res.eigenvalues.numpy(), expect, rtol=1e-9)
    idx = [int(np.flatnonzero(op.spectrum == e)[0]) for e in expect]
    assert np.all(subspace_cos(op.vectors(idx), res.eigenvectors) > 1 - 1e-9)
    V = res.eigenvectors.numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(3), atol=1e-10)
    # measured residuals ||A v - lambda v||, recomputed here
    direct = np.linalg.norm(V @ op.A.numpy() - res.eigenvalues.numpy()[:, None] * V, axis=1)
    np.testing.assert_allclose(res.residuals.numpy(), direct, rtol=1e-6, atol=1e-13)
    assert res.converged.tolist() == [True] * 3 and res.verified and res.verify_hvps == 3
    assert res.hvp_count > 0 and res.wall_time > 0
    if method == "lanczos":
        est = np.array(res.info["residuals_estimate"])
        assert np.all(est <= 1e-10 * np.abs(res.eigenvalues.numpy()))  # the estimate the solver stopped on
    else:
        assert "residuals_estimate" in res.info


def test_product_count_restarts_and_callback() -> None:
    op = Sym(spectrum_mixed(200))
    seen: list[tuple[int, np.ndarray]] = []
    res = top_eigenpairs(op, 4, tol=1e-9, ncv=12, callback=lambda h, rel: seen.append((h, rel.copy())))
    assert res.hvp_count == op.products  # every product the solver made, no verification products
    assert res.restarts >= 1 and res.restarts == len(seen) - 1 and res.info == {"ncv": 12}
    hv = [h for h, _ in seen]
    assert hv == sorted(hv) and hv[-1] == res.hvp_count and hv[0] == 12  # the first call after a full basis
    # a thick restart keeps k + (ncv - k) // 2 = 8 Ritz vectors, so each later cycle costs ncv - 8 = 4 products
    assert all(b - a == 4 for a, b in zip(hv, hv[1:]))
    assert all(len(rel) == 4 for _, rel in seen) and np.all(seen[-1][1] <= 1e-9)
    assert not np.all(seen[0][1] <= 1e-9)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [30, 20, 12, 1], rtol=1e-8)
    # verification: k more products
    op2 = Sym(spectrum_mixed(200))
    res2 = top_eigenpairs(op2, 4, tol=1e-9, ncv=12, verify=True)
    assert op2.products == res2.hvp_count + 4


def test_budget_flags_unconverged_pairs() -> None:
    op = Sym(spectrum_mixed(200))
    res = top_eigenpairs(op, 3, tol=1e-12, ncv=8, max_hvps=10, verify=True)
    assert res.hvp_count == 10 and not res.converged.all()
    rel = (res.residuals / res.eigenvalues.abs()).numpy()
    assert res.converged.tolist() == (rel <= 1e-12).tolist()
    # the same in ARPACK (its own verdict; no residuals unless verified)
    arp = top_eigenpairs(Sym(spectrum_mixed(200)), 3, tol=1e-14, method="arpack", ncv=6, max_hvps=6)
    assert not arp.converged.any() and torch.isnan(arp.residuals).all() and not arp.verified
    # default budget: 100 ncv + 10 k products
    slow = Sym(np.concatenate([[1.0, 1 - 1e-9], np.linspace(0, 0.5, 60)]))
    capped = top_eigenpairs(slow, 1, tol=1e-15, ncv=3)
    assert capped.hvp_count <= 100 * 3 + 10


def test_small_operator_is_solved_exactly() -> None:
    # dim <= ncv: the Krylov basis spans everything, all Ritz pairs are exact
    op = Sym([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25, -1.0], seed=3)
    res = top_eigenpairs(op, 8, which="LA", tol=1e-12)
    np.testing.assert_allclose(res.eigenvalues.numpy(), sorted(op.spectrum, reverse=True), rtol=1e-12, atol=1e-13)
    assert res.hvp_count == 8 and res.converged.all() and res.restarts == 0
    with pytest.raises(BnlabError, match="ARPACK needs k < dim"):
        top_eigenpairs(op, 8, method="arpack")
    arp = top_eigenpairs(op, 7, which="SA", tol=1e-12, method="arpack", ncv=3)  # ncv <= k is raised to k + 1
    np.testing.assert_allclose(arp.eigenvalues.numpy(), sorted(op.spectrum)[:7], rtol=1e-10)
    assert arp.info["ncv"] == 8


def test_start_vectors_invariant_subspaces_and_determinism() -> None:
    op = Sym(spectrum_mixed(), seed=1)
    top = op.vectors([0, 1, 2]).T  # exact top eigenvectors
    # a start in an invariant subspace (an eigenvector) still finds the other pairs: fresh directions are drawn
    e0 = torch.from_numpy(top[0].copy())
    res = top_eigenpairs(op, 3, tol=1e-10, v0=e0 * 7.0)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [30, 20, 12], rtol=1e-9)
    # a block warm start from the exact vectors: converged after far fewer products than cold
    cold = top_eigenpairs(Sym(spectrum_mixed(), seed=1), 3, tol=1e-10, ncv=8)
    warm = top_eigenpairs(Sym(spectrum_mixed(), seed=1), 3, tol=1e-10, ncv=8, v0=torch.from_numpy(top.copy()) * 3.0)
    np.testing.assert_allclose(warm.eigenvalues.numpy(), [30, 20, 12], rtol=1e-9)
    assert warm.hvp_count < cold.hvp_count
    with pytest.raises(BnlabError, match="start vector has shape"):
        top_eigenpairs(op, 3, v0=torch.ones(op.dim + 1))
    with pytest.raises(BnlabError, match="start vector has shape"):
        top_eigenpairs(op, 3, v0=torch.ones(2, op.dim - 1))
    # fixed seed: identical results; another seed: the same eigenvalues
    a, b = (top_eigenpairs(Sym(spectrum_mixed()), 3, tol=1e-8, seed=4) for _ in range(2))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.eigenvectors, b.eigenvectors)
    c = top_eigenpairs(Sym(spectrum_mixed()), 3, tol=1e-8, seed=5)
    assert not torch.equal(a.eigenvectors, c.eigenvectors)
    np.testing.assert_allclose(a.eigenvalues.numpy(), c.eigenvalues.numpy(), rtol=1e-7)


def test_rank_deficient_operator_and_zero_eigenvalues() -> None:
    # rank 3 in dimension 50: the Krylov space closes after 3 steps; LA still returns 3 exact pairs
    spectrum = np.zeros(50)
    spectrum[:3] = [3.0, 2.0, 1.0]
    op = Sym(spectrum, seed=2)
    res = top_eigenpairs(op, 3, tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [3, 2, 1], rtol=1e-10)
    assert res.converged.all()
    # beyond the rank the eigenvalue 0 is degenerate: its vectors come from the fresh directions Lanczos
    # draws when the Krylov space closes; those draws follow the seed, so a run is reproducible
    a, b = (top_eigenpairs(Sym(spectrum, seed=2), 5, tol=1e-10, seed=7) for _ in range(2))
    np.testing.assert_allclose(a.eigenvalues.numpy(), [3, 2, 1, 0, 0], atol=1e-10)
    assert torch.equal(a.eigenvectors, b.eigenvectors)


def test_param_shaped_and_residual_norms() -> None:
    op = Sym(spectrum_mixed(20), seed=4)
    res = top_eigenpairs(op, 2, tol=1e-10)
    shaped = res.param_shaped(op)
    assert len(shaped) == 2 and shaped[0]["a"].shape == (2,) and shaped[0]["b"].shape == (18, 1)
    torch.testing.assert_close(torch.cat([shaped[1]["a"], shaped[1]["b"].reshape(-1)]), res.eigenvectors[1])
    lam = torch.tensor([30.0, 1.0], dtype=torch.float64)
    V = torch.from_numpy(op.vectors([0, 1]).T.copy())
    r = residual_norms(op, lam, V).numpy()
    # v0 is an exact eigenvector of 30; v1 (eigenvalue 20) misassigned 1: residual |20 - 1|
    np.testing.assert_allclose(r, [0.0, 19.0], atol=1e-10)
    before = op.products
    residual_norms(op, lam, V)
    assert op.products == before + 2


def test_argument_errors() -> None:
    op = Sym(spectrum_mixed(20))
    for kw, msg in ((dict(which="XX"), "unknown --which"), (dict(method="power"), "unknown eigensolver"),
                    (dict(k=0), "at least 1"), (dict(k=21), "larger than"), (dict(tol=0.0), "--tol must be positive"),
                    (dict(tol=-1e-3), "--tol must be positive")):
        args = {"k": 2, **kw}
        with pytest.raises(BnlabError, match=msg):
            top_eigenpairs(op, args.pop("k"), **args)
    assert math.isclose(top_eigenpairs(op, 20, tol=1e-9).eigenvalues[0].item(), 30.0, rel_tol=1e-9)



class Scaled(Sym):
    """c · Sym(spectrum): the same eigenvectors, eigenvalues times c."""

    def __init__(self, spectrum, c: float, seed: int = 0) -> None:
        super().__init__(np.asarray(spectrum, dtype=np.float64) * c, seed)


SLOW = np.concatenate([[1.0, 0.97, 0.95], np.linspace(-0.9, 0.9, 137)])  # clustered top: restarts needed


@pytest.mark.parametrize("c", [1e-12, 1e6])
def test_lanczos_is_invariant_to_the_operators_scale(c: float) -> None:
    # Lanczos on c·A takes the same steps as on A: breakdown tests and stopping rule are relative
    ref = top_eigenpairs(Scaled(SLOW, 1.0), 2, tol=1e-8, ncv=10)
    res = top_eigenpairs(Scaled(SLOW, c), 2, tol=1e-8, ncv=10)
    assert ref.restarts >= 2 and (res.hvp_count, res.restarts) == (ref.hvp_count, ref.restarts)
    np.testing.assert_allclose(res.eigenvalues.numpy() / c, ref.eigenvalues.numpy(), rtol=1e-9)


def test_residual_estimate_is_the_measured_residual() -> None:
    # under full re-orthogonalisation |beta_m s_mi| is ||H v - lambda v||, also far from convergence
    op = Sym(SLOW, seed=5)
    res = top_eigenpairs(op, 2, tol=1e-14, ncv=10, max_hvps=25, verify=True)
    est, measured = np.array(res.info["residuals_estimate"]), res.residuals.numpy()
    assert res.restarts >= 1 and np.all(measured > 1e-6)
    np.testing.assert_allclose(est, measured, rtol=1e-6)


def test_a_start_outside_the_top_eigenvector_still_finds_it() -> None:
    # the start vector has no component along the top eigenvector: the Krylov space closes one short of
    # the dimension, and the fresh direction drawn then must reach the missing eigenvector
    op = Sym([5.0, 4.0, 3.0, 2.0, 1.0, 0.5], seed=6)
    v0 = torch.from_numpy(op.vectors([1, 2, 3, 4, 5]).sum(1).copy())
    res = top_eigenpairs(op, 2, tol=1e-10, v0=v0, verify=True)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [5.0, 4.0], rtol=1e-10)
    assert res.converged.all() and res.hvp_count == 6


def test_budgets_and_tolerances_are_kept_exactly() -> None:
    # a budget of exactly one full basis: not one product more
    res = top_eigenpairs(Sym(SLOW), 2, tol=1e-14, ncv=10, max_hvps=10)
    assert res.hvp_count == 10 and res.restarts == 0
    # a tolerance below rounding on a small operator: one full basis, exact, then stop
    small = top_eigenpairs(Sym([3.0, 2.0, 1.0, 0.5, 0.25]), 2, tol=1e-300)
    assert small.hvp_count == 5
    np.testing.assert_allclose(small.eigenvalues.numpy(), [3.0, 2.0], rtol=1e-12)


def test_arpack_counts_its_products_is_reproducible_and_uses_the_tolerance() -> None:
    op = Sym(spectrum_mixed(200), seed=7)
    res = top_eigenpairs(op, 3, tol=1e-10, method="arpack", seed=2)
    assert res.hvp_count == op.products and res.converged.all() and not res.verified
    np.testing.assert_allclose(res.eigenvalues.numpy(), [30.0, 20.0, 12.0], rtol=1e-9)
    again = top_eigenpairs(Sym(spectrum_mixed(200), seed=7), 3, tol=1e-10, method="arpack", seed=2)
    assert torch.equal(res.eigenvectors, again.eigenvectors)  # the seeded start vector, not ARPACK's own
    loose = top_eigenpairs(Sym(SLOW), 1, tol=1e-2, method="arpack", ncv=6)
    tight = top_eigenpairs(Sym(SLOW), 1, tol=1e-12, method="arpack", ncv=6)
    assert loose.hvp_count < tight.hvp_count



def test_ties_keep_their_order() -> None:
    from bnlab.curvature.lanczos import _order

    theta = np.array([1.0, 0.0, -1.0, 0.0] * 20)  # many ties: a stable sort keeps the original order
    la, sa, lm = (_order(theta, w).tolist() for w in ("LA", "SA", "LM"))
    ones, zeros, minus = list(range(0, 80, 4)), sorted(list(range(1, 80, 4)) + list(range(3, 80, 4))), list(
        range(2, 80, 4))
    assert la == ones + zeros + minus and sa == minus + zeros + ones and lm == sorted(ones + minus) + zeros


def test_start_vector_is_the_normalised_sum_plus_a_small_seeded_kick() -> None:
    from bnlab.curvature.lanczos import _start_vector

    dim = 30
    g = torch.Generator().manual_seed(3)
    block = torch.randn(2, dim, generator=g, dtype=torch.float64) * torch.tensor([[1.0], [100.0]])
    rnd = torch.randn(dim, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for v0, direction in ((None, torch.zeros(dim, dtype=torch.float64)),
                          (block[1] * 5.0, block[1] / block[1].norm()),
                          (block, (block / block.norm(dim=1, keepdim=True)).sum(0))):
        q = _start_vector(v0, dim, 9, torch.device("cpu"))
        if v0 is None:
            want = rnd / rnd.norm()
        else:
            want = direction / direction.norm() + 1e-3 * rnd / rnd.norm()
        torch.testing.assert_close(q, want / want.norm(), rtol=1e-12, atol=1e-14)
    assert _start_vector(block.float(), dim, 9, torch.device("cpu")).dtype == torch.float64


def test_defaults_and_derived_sizes() -> None:
    op = Sym(spectrum_mixed(200))
    t0 = time.perf_counter()
    res = top_eigenpairs(op, 3)
    assert 0 < res.wall_time < time.perf_counter() - t0
    assert res.tol == 1e-4 and res.info["ncv"] == 20  # max(2k + 10, 20)
    same = top_eigenpairs(Sym(spectrum_mixed(200)), 3, tol=1e-4, seed=0, ncv=20)
    assert torch.equal(res.eigenvectors, same.eigenvectors)
    assert top_eigenpairs(Sym(spectrum_mixed(200)), 8, tol=1e-2).info["ncv"] == 26
    assert top_eigenpairs(Sym(spectrum_mixed(200)), 3, method="arpack", ncv=3).info["ncv"] == 4  # ncv > k
    # the default budget, 100 ncv + 10 k products, reached exactly when nothing converges
    assert top_eigenpairs(Sym(SLOW), 2, tol=1e-300, ncv=3).hvp_count == 100 * 3 + 10 * 2


@pytest.mark.parametrize("verify", [False, True])
def test_convergence_is_relative_to_the_eigenvalue(verify: bool) -> None:
    res = top_eigenpairs(Sym(spectrum_mixed(200)), 3, tol=1e-6, ncv=8, verify=verify)
    # the pair of 12 has a residual above tol yet within tol * 12: converged
    assert res.residuals[2] > 1e-6 and res.converged.tolist() == [True] * 3
    assert res.converged.tolist() == (res.residuals <= 1e-6 * res.eigenvalues.abs()).tolist()


@pytest.mark.parametrize("ncv", [4, 5])
def test_restarts_keep_as_many_ritz_vectors_as_fit(ncv: int) -> None:
    # k = 3: ncv 5 keeps min(ncv - 1, k + (ncv - k) // 2) = 4, ncv 4 keeps 3: one product per later cycle
    seen: list[int] = []
    res = top_eigenpairs(Sym(spectrum_mixed(200)), 3, tol=1e-9, ncv=ncv, callback=lambda h, rel: seen.append(h))
    np.testing.assert_allclose(res.eigenvalues.numpy(), [30.0, 20.0, 12.0], rtol=1e-8)
    assert seen[0] == ncv and all(b - a == 1 for a, b in zip(seen, seen[1:])) and res.restarts == len(seen) - 1



def test_degenerate_eigenvalues_are_found_with_fresh_directions() -> None:
    # 3 distinct values, each 10 times: a Krylov space closes after 3 steps, and only the fresh directions
    # drawn then reach the other copies of the top eigenvalue
    res = top_eigenpairs(Sym(np.repeat([5.0, 2.0, -1.0], 10)), 3, tol=1e-10, ncv=10, verify=True)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [5.0, 5.0, 5.0], rtol=1e-10)
    V = res.eigenvectors.numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(3), atol=1e-10)
    assert res.converged.all()
    # a space that closes one short of the dimension (a double eigenvalue) must not be taken as complete
    pair = top_eigenpairs(Sym([3.0, 3.0, 2.0, 1.0]), 2, tol=1e-10)
    np.testing.assert_allclose(pair.eigenvalues.numpy(), [3.0, 3.0], rtol=1e-10)
    # closing at the last step of a cycle: the residual is 0 there, done after those 3 products
    exact = top_eigenpairs(Sym(np.repeat([5.0, 2.0, -1.0], 10)), 1, tol=1e-10, ncv=3)
    assert exact.hvp_count == 3 and exact.restarts == 0 and exact.converged.all()


def test_start_vectors_of_small_norm_are_normalised() -> None:
    from bnlab.curvature.lanczos import _start_vector

    dim = 20
    e = torch.zeros(2, dim, dtype=torch.float64)
    e[0, 0], e[1, 1] = 1e-3, 5.0  # rows of very different norms count equally
    rnd = torch.randn(dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = (e[0] / 1e-3 + e[1] / 5.0) / math.sqrt(2) + 1e-3 * rnd / rnd.norm()
    torch.testing.assert_close(_start_vector(e, dim, 1, torch.device("cpu")), want / want.norm())
    want = e[0] / 1e-3 + 1e-3 * rnd / rnd.norm()  # one small vector: the kick stays 1e-3 of it
    torch.testing.assert_close(_start_vector(e[0], dim, 1, torch.device("cpu")), want / want.norm())


def test_arpack_budget_and_partial_convergence() -> None:
    # ARPACK restarts in steps of ncv - k products after its first ncv: the budget holds to within one cycle
    for budget, ncv in ((3, 6), (60, 6), (30, 4)):
        res = top_eigenpairs(Sym(SLOW), 3, tol=1e-12, method="arpack", ncv=ncv, max_hvps=budget)
        assert budget <= res.hvp_count <= budget + ncv + 1, (budget, ncv)
    # some pairs converged, not all k: those that came back are flagged unconverged
    part = top_eigenpairs(Sym(spectrum_mixed(200)), 3, tol=1e-12, method="arpack", ncv=6, max_hvps=15)
    assert 0 < len(part.eigenvalues) < 3 and not part.converged.any()


class OnDevice(HeldOn, Sym):
    """Sym held on `device` (conftest.HeldOn)."""


@requires_cuda
@pytest.mark.parametrize("method", ["lanczos", "arpack"])
def test_the_solver_works_on_the_operators_device(method: str) -> None:
    op = OnDevice(spectrum_mixed(60), "cuda")
    res = top_eigenpairs(op, 3, tol=1e-10, method=method, verify=True)
    np.testing.assert_allclose(res.eigenvalues.cpu().numpy(), [30.0, 20.0, 12.0], rtol=1e-9)
    assert res.converged.tolist() == [True] * 3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("case", ["restarts", "fresh directions"])
def test_restarts_and_fresh_directions_stay_on_the_operators_device(device: str, case: str) -> None:
    # the vectors a thick restart builds (SLOW at ncv 10: many restarts) and the fresh directions drawn when a
    # Krylov space closes (three distinct eigenvalues, each 10 times) are made on the operator's device too;
    # OnDevice refuses a product of vectors anywhere else (on the CPU this runs the same checks, device-blind)
    spectrum, k, expect = {"restarts": (SLOW, 2, [1.0, 0.97]),
                           "fresh directions": (np.repeat([5.0, 2.0, -1.0], 10), 3, [5.0, 5.0, 5.0])}[case]
    res = top_eigenpairs(OnDevice(spectrum, device), k, tol=1e-8, ncv=10, verify=True)
    np.testing.assert_allclose(res.eigenvalues.numpy(), expect, rtol=1e-7)
    assert res.converged.all() and res.eigenvectors.device == torch.device("cpu")
    assert res.restarts >= 2 if case == "restarts" else res.hvp_count == 10


class Recording(Sym):
    """Sym that also records how many vectors each product block holds."""

    def __init__(self, spectrum, seed: int = 0) -> None:
        super().__init__(spectrum, seed)
        self.blocks: list[int] = []

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.blocks.append(V.shape[0])
        return super().matmat(V)


@pytest.mark.parametrize("block_size", [None, 2])
def test_the_block_method_multiplies_block_size_vectors_per_pass(block_size: int | None) -> None:
    # top_eigenpairs(method="block") hands the problem to bnlab.curvature.block_lanczos: every product is a
    # block of b vectors (default 4), the callback comes after every pass, and LA means LA (LM would be
    # 30, -25, 20 here)
    op = Recording(spectrum_mixed())
    seen: list[int] = []
    res = top_eigenpairs(op, 3, which="LA", tol=1e-8, method="block", block_size=block_size,
                         callback=lambda h, rel: seen.append(h))
    b = block_size or 4
    assert res.method == "block" and res.info["block_size"] == b
    np.testing.assert_allclose(res.eigenvalues.numpy(), [30.0, 20.0, 12.0], rtol=1e-8)
    V = res.eigenvectors.numpy()
    direct = np.linalg.norm(V @ op.A.numpy() - res.eigenvalues.numpy()[:, None] * V, axis=1)
    assert res.converged.all() and np.all(direct <= 1e-8 * 12.0 * (1 + 1e-6))
    assert len(op.blocks) > 1 and set(op.blocks) == {b}  # never one vector at a time, as the Lanczos method does
    assert res.hvp_count == op.products and seen == [b * (i + 1) for i in range(len(op.blocks))]


def test_the_block_method_keeps_the_budget_and_the_krylov_size() -> None:
    # a budget of 10 products in blocks of 4: two full blocks and one cut to the 2 products left
    op = Recording(SLOW)
    res = top_eigenpairs(op, 2, tol=1e-14, method="block", max_hvps=10)
    assert op.blocks == [4, 4, 2] and res.hvp_count == 10 and not res.converged.all()
    # a Krylov size above the block solver's minimum (k + 8 b) is the one it uses
    assert top_eigenpairs(Sym(SLOW), 2, tol=1e-4, method="block", ncv=50).info["ncv"] == 50


def test_a_block_warm_start_gives_the_block_method_its_rows() -> None:
    # a warm start of m rows (the previous checkpoint's eigenvectors) starts the block method from the rows
    # themselves (each with a 1e-3 kick), not only from their sum: after its first pass of 3 products the
    # basis holds the exact top eigenvectors up to the kick, so the relative residuals are ~1e-3 (from the sum
    # and two random directions they are O(1))
    op = Sym(spectrum_mixed(), seed=1)
    top = torch.from_numpy(op.vectors([0, 1, 2]).T.copy())
    seen: list[tuple[int, np.ndarray]] = []
    res = top_eigenpairs(op, 3, tol=1e-10, v0=top * 3.0, method="block", block_size=3,
                         callback=lambda h, rel: seen.append((h, rel.copy())))
    assert seen[0][0] == 3 and np.all(seen[0][1] < 1e-2)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [30.0, 20.0, 12.0], rtol=1e-9)


class _AskedOn(Exception):
    """Raised by OnMeta's first product with the device of the vectors it was asked to multiply."""


class OnMeta(SymmetricOperator):
    """An operator on PyTorch's meta device (tensors with shapes but no data). No solver runs on it to the
    end (there are no numbers to read), but its first product shows where the solver built its start
    vector and basis, and meta tensors refuse to mix with host tensors (as CUDA ones do)."""

    dim = 12

    @property
    def device(self) -> torch.device:
        return torch.device("meta")

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        raise _AskedOn(V.device)


@pytest.mark.parametrize("start", ["none", "vector", "block"])
def test_the_first_product_is_asked_on_the_operators_device(start: str) -> None:
    # the CPU-observable part of the device contract (the full run is the CUDA test above): the start vector,
    # from the seed or from a warm start given on the host (float32 for the block), and the Lanczos basis
    # live on the operator's device
    g = torch.Generator().manual_seed(0)
    v0 = {"none": None, "vector": torch.randn(12, generator=g, dtype=torch.float64),
          "block": torch.randn(3, 12, generator=g)}[start]
    with pytest.raises(_AskedOn) as asked:
        top_eigenpairs(OnMeta(), 2, tol=1e-6, v0=v0)
    assert asked.value.args[0] == torch.device("meta")


def test_residual_norms_are_taken_on_the_products_device() -> None:
    # eigenvalues given on the host are moved to the products' device (meta here, CUDA in use)
    class MetaProducts(OnMeta):
        def matmat(self, V: torch.Tensor) -> torch.Tensor:
            assert V.device == torch.device("meta")
            return torch.empty_like(V)

    V = torch.empty(2, 12, dtype=torch.float64, device="meta")
    r = residual_norms(MetaProducts(), torch.tensor([1.0, 2.0], dtype=torch.float64), V)
    assert r.device == torch.device("meta") and r.shape == (2,)


@pytest.mark.parametrize("verify", [False, True])
def test_the_zero_operator_is_solved_and_converged(verify: bool) -> None:
    # H = 0 (e.g. a block of parameters the loss does not see): every product is exactly 0, so the eigenvalues
    # and residuals are exactly 0 and ‖Hv − λv‖ ≤ tol·|λ| holds with equality: the pairs are converged
    op = Sym(np.zeros(10))
    assert not op.A.any()
    res = top_eigenpairs(op, 2, tol=1e-6, verify=verify)
    assert res.eigenvalues.tolist() == [0.0, 0.0] and res.residuals.tolist() == [0.0, 0.0]
    assert res.converged.tolist() == [True, True]
    V = res.eigenvectors.numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(2), atol=1e-12)


def _first_cycles(k: int, ncv: int, tol: float) -> list[tuple[int, np.ndarray]]:
    seen: list[tuple[int, np.ndarray]] = []
    top_eigenpairs(Sym(spectrum_mixed(200)), k, tol=tol, ncv=ncv, max_hvps=ncv + 6,
                   callback=lambda h, rel: seen.append((h, rel.copy())))
    return seen


def test_the_stopping_rule_and_the_restart_count_converged_pairs_at_equality() -> None:
    # "converged" is rel ≤ tol, equality included. The first cycle does not depend on tol, so a second run
    # with tol set to one of its relative residuals meets that residual exactly.
    first = _first_cycles(3, 8, 1e-300)[0][1]
    assert len(set(first.tolist())) == 3 and np.all(first > 0)
    # tol = the largest: every wanted pair is converged after the first cycle, and the run stops there
    res = top_eigenpairs(Sym(spectrum_mixed(200)), 3, tol=float(first.max()), ncv=8)
    assert res.hvp_count == 8 and res.restarts == 0
    # tol = the middle one at ncv 6: 2 converged pairs make the restart keep min(ncv - 1, k + max(1, 2)) = 5
    # Ritz vectors (1 product in the next cycle); counted without equality it would keep 4 (2 products)
    first6 = _first_cycles(3, 6, 1e-300)[0][1]
    seen = _first_cycles(3, 6, float(np.sort(first6)[1]))
    assert np.array_equal(seen[0][1], first6) and [h for h, _ in seen[:2]] == [6, 7]


@pytest.mark.parametrize("shape", [(30,), (2, 30)])
def test_a_half_precision_warm_start_is_normalised_in_float64(shape: tuple[int, ...]) -> None:
    # eigenvectors kept in the model's dtype (bfloat16) as a warm start: the start vector is the formula
    # (normalised rows, summed, normalised, + 1e-3 kick) applied to their exact float64 values, not computed in
    # bfloat16 (whose rounding, ~4e-3, is larger than the kick)
    from bnlab.curvature.lanczos import _start_vector

    v0 = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    exact = v0.double()
    if exact.dim() == 2:
        exact = (exact / exact.norm(dim=1, keepdim=True)).sum(0)
    rnd = torch.randn(30, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    want = exact / exact.norm() + 1e-3 * rnd / rnd.norm()
    torch.testing.assert_close(_start_vector(v0, 30, 5, torch.device("cpu")), want / want.norm(), rtol=1e-12,
                               atol=1e-14)
