"""Block Lanczos (`top_eigenpairs(..., method="block")`) on spectra known by construction (Q diag(λ) Qᵀ:
outliers over a bulk, clustered and repeated eigenvalues), against ARPACK on a random symmetric matrix,
and on the dense Hessian of a tiny BN network; every product and pass counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.curvature import HessianOperator, dense_hessian, top_eigenpairs
from bnlab.curvature.block_lanczos import DEFAULT_BLOCK, block_lanczos, orthonormal_block, start_block
from bnlab.curvature.lanczos import EIG_METHODS
from bnlab.curvature.linop import SymmetricOperator
from conftest import HeldOn, requires_cuda

pytestmark = pytest.mark.usefixtures("one_thread")


class Counted(SymmetricOperator):
    """Q diag(spectrum) Qᵀ; records the rows of every matmat call."""

    def __init__(self, spectrum, seed: int = 0) -> None:
        self.spectrum = np.asarray(spectrum, dtype=np.float64)
        self.dim = len(self.spectrum)
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((self.dim, self.dim)))
        self.Q = q
        self.A = torch.from_numpy((q * self.spectrum) @ q.T)
        self.calls: list[int] = []

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.calls.append(V.shape[0])
        return V @ self.A


def outliers_and_bulk(dim: int = 120) -> np.ndarray:
    return np.concatenate([[30.0, 20.0, 12.0, -25.0, -15.0], np.linspace(-1, 1, dim - 5)])


def cosines(U: np.ndarray, V: torch.Tensor) -> np.ndarray:
    """Cosines of the principal angles between span(U's columns) and span(V's rows)."""
    return np.linalg.svd(U.T @ V.numpy().T, compute_uv=False)


def test_block_is_an_eigensolver_choice() -> None:
    assert "block" in EIG_METHODS and DEFAULT_BLOCK >= 2


@pytest.mark.parametrize("b", [1, 3, 4])
@pytest.mark.parametrize("which,expect", [("LA", [30.0, 20.0, 12.0]), ("SA", [-25.0, -15.0, -1.0]),
                                          ("LM", [30.0, -25.0, 20.0])])
def test_eigenpairs_residuals_and_counts(b: int, which: str, expect: list[float]) -> None:
    op = Counted(outliers_and_bulk())
    res = top_eigenpairs(op, 3, which=which, tol=1e-10, method="block", block_size=b)
    assert res.method == "block" and res.info["block_size"] == b
    np.testing.assert_allclose(res.eigenvalues.numpy(), expect, rtol=1e-9)
    idx = [int(np.flatnonzero(op.spectrum == e)[0]) for e in expect]
    assert np.all(cosines(op.Q[:, idx], res.eigenvectors) > 1 - 1e-9)
    V = res.eigenvectors.numpy()
    np.testing.assert_allclose(V @ V.T, np.eye(3), atol=1e-10)
    # The residuals are measured from the kept products: recomputed here, they agree.
    direct = np.linalg.norm(V @ op.A.numpy() - res.eigenvalues.numpy()[:, None] * V, axis=1)
    np.testing.assert_allclose(res.residuals.numpy(), direct, rtol=1e-6, atol=1e-12)
    assert res.converged.all() and np.all(direct <= 1e-10 * np.abs(expect))
    # Every product counted, one matmat per pass, never more than b rows in one.
    assert res.hvp_count == sum(op.calls) and res.info["passes"] == len(op.calls) and max(op.calls) == b
    assert res.wall_time > 0 and not res.verified


def test_block_cuts_the_passes_for_a_few_more_products() -> None:
    counts = {}
    for b in (1, 4):
        op = Counted(outliers_and_bulk(200))
        res = top_eigenpairs(op, 5, tol=1e-4, method="block", block_size=b)
        assert res.converged.all()
        counts[b] = (res.hvp_count, res.info["passes"])
    lanczos = top_eigenpairs(Counted(outliers_and_bulk(200)), 5, tol=1e-4)
    assert counts[1][0] == counts[1][1]  # b = 1: a pass per product
    assert counts[4][1] * 2 < lanczos.hvp_count  # a pass per product for Lanczos: b = 4 needs < half the passes
    assert counts[4][0] < 2 * lanczos.hvp_count


def test_repeated_and_clustered_eigenvalues() -> None:
    # 5 (x3), 3 (x2), a cluster 2.0, 1.999, 1.998, then a bulk: a block of 4 finds the multiplicities.
    spectrum = np.concatenate([[5.0, 5.0, 5.0, 3.0, 3.0, 2.0, 1.999, 1.998], np.linspace(0.0, 1.0, 142)])
    op = Counted(spectrum, seed=3)
    res = top_eigenpairs(op, 8, tol=1e-9, method="block", block_size=4)
    np.testing.assert_allclose(res.eigenvalues.numpy(), spectrum[:8], rtol=1e-8)
    assert np.all(cosines(op.Q[:, :3], res.eigenvectors[:3]) > 1 - 1e-8)  # the whole 3-dim eigenspace of 5
    assert np.all(cosines(op.Q[:, 3:5], res.eigenvectors[3:5]) > 1 - 1e-8)
    assert res.converged.all()


def test_agrees_with_arpack_on_a_random_symmetric_matrix() -> None:
    g = np.random.default_rng(7)
    a = g.standard_normal((150, 150))
    op = Counted(np.linalg.eigvalsh((a + a.T) / 2))  # a GOE spectrum: no gaps to speak of at the edge
    block = top_eigenpairs(op, 4, tol=1e-8, method="block", block_size=3, verify=True)
    arpack = top_eigenpairs(op, 4, tol=1e-10, method="arpack")
    np.testing.assert_allclose(block.eigenvalues.numpy(), arpack.eigenvalues.numpy(), rtol=1e-8)
    np.testing.assert_allclose(block.eigenvalues.numpy(), np.sort(op.spectrum)[::-1][:4], rtol=1e-8)
    assert block.verified and block.verify_hvps == 4 and block.converged.all()
    assert np.all(block.residuals.numpy() <= 1e-8 * np.abs(block.eigenvalues.numpy()))


def test_budget_is_exact_and_unconverged_pairs_are_flagged() -> None:
    op = Counted(outliers_and_bulk(200))
    res = top_eigenpairs(op, 5, tol=1e-12, method="block", block_size=4, max_hvps=30)
    assert res.hvp_count == 30 == sum(op.calls) and op.calls[-1] == 2  # the last block cut to the budget
    assert not res.converged.all()
    rel = res.residuals / res.eigenvalues.abs()
    assert res.converged.tolist() == (rel <= 1e-12).tolist()


def test_a_small_operator_is_solved_exactly_in_whole_blocks() -> None:
    op = Counted([4.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    res = top_eigenpairs(op, 6, tol=1e-12, method="block", block_size=4)
    np.testing.assert_allclose(res.eigenvalues.numpy(), op.spectrum, rtol=1e-12)
    assert op.calls == [4, 2] and res.hvp_count == 6 and res.converged.all()
    # A block larger than the space is cut to its dimension.
    op = Counted([2.0, 1.0, -0.5])
    res = top_eigenpairs(op, 3, which="LM", tol=1e-12, method="block", block_size=8)
    assert op.calls == [3] and res.info["block_size"] == 3
    np.testing.assert_allclose(res.eigenvalues.numpy(), [2.0, 1.0, -0.5], rtol=1e-12)


def test_warm_start_block_and_determinism() -> None:
    op = Counted(outliers_and_bulk(200))
    cold = top_eigenpairs(op, 3, tol=1e-6, method="block", block_size=3, seed=5)
    again = top_eigenpairs(op, 3, tol=1e-6, method="block", block_size=3, seed=5)
    assert torch.equal(cold.eigenvalues, again.eigenvalues) and cold.hvp_count == again.hvp_count
    v0 = torch.from_numpy(op.Q[:, :3].T.copy()) * torch.tensor([[2.0], [0.5], [3.0]])  # any row norms
    warm = top_eigenpairs(op, 3, tol=1e-6, method="block", block_size=3, v0=v0)
    np.testing.assert_allclose(warm.eigenvalues.numpy(), [30.0, 20.0, 12.0], rtol=1e-10)
    assert warm.hvp_count < cold.hvp_count and warm.converged.all()
    # The warm rows are the start block itself: one block of 3 products already gives all three.
    first = top_eigenpairs(op, 3, tol=1e-6, method="block", block_size=3, v0=v0, max_hvps=3)
    assert first.hvp_count == 3
    np.testing.assert_allclose(first.eigenvalues.numpy(), [30.0, 20.0, 12.0], rtol=1e-4)


def test_start_block_rows() -> None:
    q0 = torch.zeros(6, dtype=torch.float64)
    q0[0] = 1.0
    rows = start_block(None, q0, 3, seed=0)
    assert rows.shape == (3, 6) and torch.equal(rows[0], q0)
    v0 = torch.eye(6, dtype=torch.float64)[1:5] * 7.0  # four rows into a block of 3: the last two summed
    rows = start_block(v0, q0, 3, seed=0)
    assert torch.allclose(rows[0], torch.eye(6, dtype=torch.float64)[1], atol=2e-3)
    assert torch.allclose(rows[2], torch.eye(6, dtype=torch.float64)[3] + torch.eye(6, dtype=torch.float64)[4],
                          atol=2e-3)
    assert not torch.equal(rows[0], torch.eye(6, dtype=torch.float64)[1])  # the seeded kick is there


def test_orthonormal_block_replaces_vanished_directions() -> None:
    g = torch.Generator().manual_seed(0)
    Q = torch.eye(5, dtype=torch.float64)[:2]
    R = torch.stack([Q[0] + Q[1] + torch.eye(5, dtype=torch.float64)[2], Q[0] * 3.0, Q[1]])  # 2nd, 3rd in span(Q)
    X = orthonormal_block(R, Q, R.norm(dim=1), g)
    basis = torch.cat([Q, X])
    torch.testing.assert_close(basis @ basis.T, torch.eye(5, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(X[0] @ torch.eye(5, dtype=torch.float64)[2]) == pytest.approx(1.0)  # its one new direction
    assert torch.equal(X, orthonormal_block(R, Q, R.norm(dim=1), torch.Generator().manual_seed(0)))  # seeded


def tiny_bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Softplus(), nn.Linear(6, 3)).double()


def test_tiny_network_hessian_against_dense_truth() -> None:
    net = tiny_bn_net()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g))
               for n in (8, 5)]
    truth = torch.linalg.eigvalsh(dense_hessian(net, batches, F.cross_entropy, "batch")).flip(0)
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", block_size=16)
    res = top_eigenpairs(op, 5, which="LA", tol=1e-9, method="block", block_size=4, verify=True)
    np.testing.assert_allclose(res.eigenvalues.numpy(), truth[:5].numpy(), rtol=1e-7)
    assert res.converged.all() and res.verified
    # One pass over the two batches per block (plus one for the verification's matmat of 5).
    assert op.passes == res.info["passes"] + 1 and op.hvp_count == res.hvp_count + 5


# --- Progress reports, scale invariance, seeded fresh directions (written against mutation survivors) ---


def test_callback_gets_the_products_so_far_and_the_measured_relative_residuals() -> None:
    # After every block: the products spent so far (the running sum of the matmat rows the operator saw)
    # and ‖A v − θ v‖/|θ| of the k wanted pairs; the last report is the returned result's.
    op = Counted(outliers_and_bulk())
    seen: list[tuple[int, np.ndarray]] = []
    res = top_eigenpairs(op, 3, tol=1e-8, method="block", block_size=3,
                         callback=lambda h, rel: seen.append((h, np.array(rel, copy=True))))
    assert [h for h, _ in seen] == list(np.cumsum(op.calls)) and len(seen) == res.info["passes"] > 2
    assert all(rel.shape == (3,) for _, rel in seen)
    final = res.residuals.numpy() / np.abs(res.eigenvalues.numpy())
    np.testing.assert_allclose(seen[-1][1], final, rtol=1e-12)
    assert np.all(seen[-1][1] <= 1e-8) and not np.all(seen[0][1] <= 1e-8)  # it stopped at the first block that met tol
    assert not np.all(seen[-2][1] <= 1e-8)


@pytest.mark.parametrize("scale", [2.0 ** -12, 2.0 ** 12])
def test_convergence_is_relative_to_the_eigenvalue(scale: float) -> None:
    # c·A (c a power of two: every product, norm and projection scales exactly) has the same Krylov
    # spaces and the same relative residuals, so it takes the same blocks; only the eigenvalues and
    # the absolute residuals scale. (Eigenvalues far below 1 and far above: a criterion that is not
    # relative to |λ|, or floors |λ| at 1, stops at another block.)
    base = Counted(outliers_and_bulk())
    ref = top_eigenpairs(base, 3, tol=1e-7, method="block", block_size=2)
    scaled = Counted(outliers_and_bulk())
    scaled.A = scaled.A * scale
    res = top_eigenpairs(scaled, 3, tol=1e-7, method="block", block_size=2)
    assert scaled.calls == base.calls and res.converged.all() and ref.converged.all()
    np.testing.assert_allclose(res.eigenvalues.numpy(), scale * np.array([30.0, 20.0, 12.0]), rtol=1e-9)
    np.testing.assert_allclose(res.residuals.numpy(), scale * ref.residuals.numpy(), rtol=1e-6, atol=scale * 1e-14)


def test_fresh_directions_come_from_the_seed_not_the_global_generator() -> None:
    # A start block with a repeated row (its copy is replaced by a fresh random direction) and a spectrum
    # of two distinct eigenvalues, 2 (three-fold) and 1: two blocks span an invariant subspace holding the
    # whole eigenspace of 2, and which orthonormal basis of it comes back depends on the fresh direction.
    # It must depend on `seed` only, not on torch's global generator state.
    op = Counted([2.0] * 3 + [1.0] * 5, seed=2)
    g = torch.Generator().manual_seed(9)
    row = torch.randn(8, generator=g, dtype=torch.float64)
    start = torch.stack([row, row, torch.randn(8, generator=g, dtype=torch.float64)])
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        runs.append(block_lanczos(op, 3, "LA", 1e-10, start, 8, 100, 3, None))
    for res in runs:
        np.testing.assert_allclose(res.eigenvalues.numpy(), [2.0] * 3, rtol=1e-12)
        assert np.all(cosines(op.Q[:, :3], res.eigenvectors) > 1 - 1e-10)  # the whole eigenspace of 2
    assert torch.equal(runs[0].eigenvectors, runs[1].eigenvectors)
    other = block_lanczos(op, 3, "LA", 1e-10, start, 8, 100, 4, None)  # another seed: other fresh directions
    assert not torch.allclose(other.eigenvectors, runs[0].eigenvectors, atol=1e-3)


def test_restarts_keep_the_basis_within_ncv_on_a_schedule_worked_out_by_hand() -> None:
    # k = 2, b = 2: the basis floor k + 8b = 18 overrides the ncv of 5 asked for. A tolerance no pair can
    # meet and a budget of 60 products: the basis grows 2, 4, ..., 18 (18 products); the next block would
    # exceed 18, so it restarts on k + (18 − b − k)//2 = 9 Ritz vectors and grows 11, 13, 15, 17 before the
    # next restart, i.e. restarts after products 18, 26, 34, 42, 50 and 58, and stops at the budget (60).
    op = Counted(outliers_and_bulk(200))
    res = top_eigenpairs(op, 2, tol=1e-30, method="block", block_size=2, ncv=5, max_hvps=60)
    assert res.info["ncv"] == 18 and res.restarts == 6
    assert res.hvp_count == 60 and res.info["passes"] == 30 and op.calls == [2] * 30
    np.testing.assert_allclose(res.eigenvalues.numpy(), [30.0, 20.0], rtol=1e-9)  # restarts lost nothing
    assert not res.converged.any()


@pytest.mark.parametrize("k,b,ncv,dim,expect", [(3, 4, None, 200, 35), (3, 1, None, 200, 20), (3, 4, 50, 200, 50),
                                                 (3, 4, None, 30, 30)])
def test_the_basis_size_is_at_least_k_plus_8_blocks(k: int, b: int, ncv, dim: int, expect: int) -> None:
    # ncv = min(dim, max(ncv asked (top_eigenpairs's default max(2k + 10, 20)), k + 8b)): the module's
    # measured floor; the record says which size ran, and the result's fields say what was asked.
    op = Counted(outliers_and_bulk(dim))
    res = top_eigenpairs(op, k, which="SA", tol=1e-3, method="block", block_size=b, ncv=ncv)
    assert res.info == {"ncv": expect, "block_size": b, "passes": len(op.calls)}
    assert (res.which, res.tol, res.method) == ("SA", 1e-3, "block")


def test_a_basis_spanning_the_space_stops_the_solver_even_unconverged() -> None:
    # A singular operator: the zero eigenvalue can never meet a tolerance relative to |λ|, but once the
    # basis spans the space (6 products for dim 6) the Ritz pairs are exact and nothing more is to be had.
    op = Counted([3.0, 2.0, 1.0, 0.5, 0.0, 0.0])
    res = top_eigenpairs(op, 2, which="SA", tol=1e-10, method="block", block_size=3, max_hvps=40)
    assert op.calls == [3, 3] and res.hvp_count == 6
    np.testing.assert_allclose(res.eigenvalues.numpy(), [0.0, 0.0], atol=1e-12)
    assert np.all(res.residuals.numpy() < 1e-12) and not res.converged.any()


def test_a_start_block_of_eigenvectors_stops_after_one_block() -> None:
    # The stop test runs after every block, the first included: a start block that already spans the
    # wanted eigenvectors (k = b) has exact Ritz pairs after its b products.
    op = Counted(outliers_and_bulk())
    start = torch.from_numpy(op.Q[:, :3].T.copy())
    res = block_lanczos(op, 3, "LA", 1e-10, start, 20, 100, 0, None)
    assert op.calls == [3] and res.hvp_count == 3 and res.info["passes"] == 1 and res.converged.all()
    np.testing.assert_allclose(res.eigenvalues.numpy(), [30.0, 20.0, 12.0], rtol=1e-12)


def test_a_residual_equal_to_tol_counts_as_converged() -> None:
    # The criterion is ‖A v − θ v‖ ≤ tol·|θ|, equality included: for the stop (relative residual ≤ tol)
    # and for the converged flags. Record the relative residuals block by block (every run below makes the
    # same computations up to where it stops), and take for tol the worst one of a block that beats every
    # earlier block, nudged up by a few ulps until tol·|θ| is that pair's residual exactly.
    seen: list[np.ndarray] = []
    top_eigenpairs(Counted(outliers_and_bulk()), 3, tol=1e-300, method="block", block_size=3, max_hvps=60,
                   callback=lambda h, rel: seen.append(np.array(rel, copy=True)))
    worst = [float(r.max()) for r in seen]
    for j in (j for j in range(1, len(worst)) if worst[j] < min(worst[:j]) and worst[j] < 1e-3):
        upto = top_eigenpairs(Counted(outliers_and_bulk()), 3, tol=1e-300, method="block", block_size=3,
                              max_hvps=3 * (j + 1))  # the pairs at block j
        i = int(np.argmax(seen[j]))
        r, lam = float(upto.residuals[i]), abs(float(upto.eigenvalues[i]))
        tols = [worst[j]]
        while len(tols) < 8:
            tols.append(float(np.nextafter(tols[-1], np.inf)))
        exact = [t for t in tols if t * lam == r and t < min(worst[:j])]
        if exact:
            break
    else:
        pytest.fail("no block with a tolerance that meets a residual exactly")
    res = top_eigenpairs(Counted(outliers_and_bulk()), 3, tol=exact[0], method="block", block_size=3, max_hvps=60)
    assert res.info["passes"] == j + 1 and res.hvp_count == 3 * (j + 1)
    assert float(res.residuals[i]) == exact[0] * lam and res.converged.all()


class Recorded(Counted):
    """Counted, keeping a copy of every block it was asked to multiply."""

    def __init__(self, spectrum, seed: int = 0) -> None:
        super().__init__(spectrum, seed)
        self.blocks: list[torch.Tensor] = []

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.blocks.append(V.clone())
        return super().matmat(V)


def test_every_block_is_orthonormal_and_orthogonal_to_the_one_before_across_restarts() -> None:
    # Block Lanczos multiplies orthonormal blocks, each orthogonal to the whole basis so far, and the
    # first block after a thick restart to the whole basis it restarted from (the restart keeps Ritz
    # vectors, combinations of it): so every block is orthogonal to the block before it.
    op = Recorded(outliers_and_bulk(200))
    res = top_eigenpairs(op, 2, tol=1e-30, method="block", block_size=2, ncv=5, max_hvps=60)
    assert res.restarts == 6 and len(op.blocks) == 30
    for prev, X in zip(op.blocks, op.blocks[1:]):
        torch.testing.assert_close(X @ X.T, torch.eye(2, dtype=torch.float64), atol=1e-12, rtol=0)
        assert float((X @ prev.T).abs().max()) < 1e-12
    # No restart before the basis would exceed ncv = 18: the first 9 blocks are one orthonormal basis,
    # and the 10th, the first after the restart, is orthogonal to all of it.
    first = torch.cat(op.blocks[:10])
    torch.testing.assert_close(first @ first.T, torch.eye(20, dtype=torch.float64), atol=1e-12, rtol=0)


def test_start_block_puts_the_warm_rows_first_with_a_small_kick_and_keeps_the_seeded_fill() -> None:
    # Two warm rows of small norm (0.01, 0.05: each is normalised first) into a block of 4: row i is
    # v_i/|v_i| + 1e-3·f_i/|f_i|, f the block a cold start would have (row 0 of it is q0), and rows 2, 3
    # are the cold start's rows. A float32 warm start gives the same block as its float64 copy.
    dim, seed = 7, 3
    q0 = torch.randn(dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q0 = q0 / q0.norm()
    cold = start_block(None, q0, 4, seed)
    assert cold.shape == (4, dim) and torch.equal(cold[0], q0)
    v0 = (torch.randn(2, dim, generator=torch.Generator().manual_seed(2)) * torch.tensor([[0.01], [0.05]])).float()
    warm = start_block(v0, q0, 4, seed)
    v = v0.double()
    want = v / v.norm(dim=1, keepdim=True) + 1e-3 * cold[:2] / cold[:2].norm(dim=1, keepdim=True)
    torch.testing.assert_close(warm[:2], want, atol=1e-15, rtol=0)
    assert torch.equal(warm[2:], cold[2:])
    assert torch.equal(warm, start_block(v, q0, 4, seed))
    # The fill is seeded: another seed, another fill (row 0 is q0 either way).
    other = start_block(None, q0, 4, seed + 1)
    assert torch.equal(other[0], q0) and not torch.allclose(other[1:], cold[1:])


def test_start_block_of_a_single_warm_vector_is_the_cold_block() -> None:
    # One warm vector, flat or as a (1, dim) block, is already in q0 (top_eigenpairs's start vector):
    # the block is q0 and the seeded fill, as without a warm start.
    q0 = torch.eye(5, dtype=torch.float64)[2]
    cold = start_block(None, q0, 3, 0)
    v = torch.arange(5, dtype=torch.float64) + 1.0
    assert torch.equal(start_block(v, q0, 3, 0), cold)
    assert torch.equal(start_block(v[None], q0, 3, 0), cold)


def test_orthonormal_block_of_no_rows_is_empty() -> None:
    Q = torch.eye(4, dtype=torch.float64)[:2]
    R = torch.zeros(0, 4, dtype=torch.float64)
    out = orthonormal_block(R, Q, R.norm(dim=1), torch.Generator().manual_seed(0))
    assert out.shape == (0, 4) and out.dtype == torch.float64


def test_a_direction_vanishes_relative_to_its_size_before_the_projections() -> None:
    # A row 1e6·(q_0 + q_1) + 1e-8·e_2 keeps 1e-8 after Q is projected out: below 1e-10 of its size, so it
    # is rounding, not a direction, and a random one replaces it. The same 1e-8·e_2 on its own is kept.
    Q = torch.eye(5, dtype=torch.float64)[:2]
    e2 = torch.eye(5, dtype=torch.float64)[2]
    big = (1e6 * (Q[0] + Q[1]) + 1e-8 * e2)[None]
    X = orthonormal_block(big, Q, big.norm(dim=1), torch.Generator().manual_seed(0))
    assert abs(float(X[0] @ e2)) < 0.99 and float((X @ Q.T).abs().max()) < 1e-12
    small = (1e-8 * e2)[None]
    X = orthonormal_block(small, Q, small.norm(dim=1), torch.Generator().manual_seed(0))
    assert float(X[0] @ e2) == pytest.approx(1.0, abs=1e-12)


class OnDevice(HeldOn, Counted):
    """Counted held on `device` (conftest.HeldOn)."""


@requires_cuda
def test_the_block_solver_works_on_the_operators_device() -> None:
    # Cold, with restarts (ncv floor 2 + 8·2 = 18 on a 60-dim space), from a warm block given on the CPU,
    # and through an invariant subspace.
    op = OnDevice(outliers_and_bulk(60), "cuda")
    res = top_eigenpairs(op, 2, tol=1e-10, method="block", block_size=2, ncv=5, verify=True)
    np.testing.assert_allclose(res.eigenvalues.cpu().numpy(), [30.0, 20.0], rtol=1e-9)
    assert res.converged.tolist() == [True] * 2 and res.restarts > 0 and res.eigenvectors.device.type == "cpu"
    v0 = torch.from_numpy(op.Q[:, :3].T.copy())
    warm = top_eigenpairs(op, 3, tol=1e-10, method="block", block_size=3, v0=v0)
    np.testing.assert_allclose(warm.eigenvalues.cpu().numpy(), [30.0, 20.0, 12.0], rtol=1e-9)
    assert warm.converged.all()
    # Fresh random directions (an invariant subspace after 2 blocks) are drawn on the CPU and moved there.
    null = OnDevice([0.0] * 4 + [1.0] * 4, "cuda")
    res = top_eigenpairs(null, 1, which="SA", tol=1e-8, method="block", block_size=1)
    assert res.hvp_count == 8 and abs(float(res.eigenvalues[0])) < 1e-12


def test_fresh_directions_after_an_invariant_subspace_come_from_the_seed() -> None:
    # Eigenvalues 0 (four-fold) and 1 (four-fold), one vector per block: the Krylov space of the start
    # vector closes after 2 blocks, so blocks 3, 5 and 7 start from fresh random directions, until the
    # basis spans the space (a zero eigenvalue never meets a relative tolerance). Which null vector
    # comes back depends on those directions: on `seed` only, not on torch's global generator.
    op = Counted([0.0] * 4 + [1.0] * 4, seed=4)
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        runs.append(top_eigenpairs(op, 1, which="SA", tol=1e-8, method="block", block_size=1, seed=2))
    for res in runs:
        assert res.hvp_count == 8 and abs(float(res.eigenvalues[0])) < 1e-12
        assert cosines(op.Q[:, :4], res.eigenvectors)[0] > 1 - 1e-10  # a null vector
    assert torch.equal(runs[0].eigenvectors, runs[1].eigenvectors)
