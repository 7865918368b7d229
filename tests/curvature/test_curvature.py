"""Curvature engine against float64 dense ground truth on tiny nets of every variant and BN mode."""
from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlab.bnmode import bn_mode
from bnlab.curvature import (
    DenseOperator,
    HessianOperator,
    dense_hessian,
    hutchinson_trace,
    hutchpp_trace,
    slq_density,
    top_eigenpairs,
)
from bnlab.errors import BnlabError
from bnlab.models import ModelSpec, build_model
from bnlab.norms import batch_norm_layers

# (model, norm, bn modes to test)
VARIANTS = [("simple", "bn_fixed_affine", ("batch", "running")), ("davidnet", "bn", ("batch", "running")),
            ("simple", "ghost", ("batch", "running")), ("simple", "frozen", ("none",)), ("simple", "none", ("none",))]
# Dense-truth cases (a dense Hessian costs seconds): every variant, BN in both modes; the model-never-
# changes test covers every (variant, mode) pair.
CASES = [("simple", "bn_fixed_affine", "batch"), ("simple", "bn_fixed_affine", "running"),
         ("davidnet", "bn", "batch"), ("simple", "ghost", "batch"), ("simple", "frozen", "none"),
         ("simple", "none", "none")]
LOSS = functools.partial(F.cross_entropy, label_smoothing=0.1)


def tiny(model: str, norm: str, act: str = "softplus", seed: int = 0):
    """A float64 width-1 net on 8 random 8x8 images in batches of 4 and 4, with non-trivial BN buffers."""
    torch.manual_seed(seed)
    spec = ModelSpec(model=model, width=1, norm=norm, act=act, ghost_splits=2,
                     affine=False if (model == "simple" and norm == "ghost") else None)
    net = build_model(spec).double()
    with torch.no_grad():
        for _, m in batch_norm_layers(net):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
        for mod in net.modules():  # frozen norms: non-identity fixed statistics
            if hasattr(mod, "running_mean") and not batch_norm_layers(mod):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    return net, [(x[:4], y[:4]), (x[4:], y[4:])]


@functools.cache
def case(model: str, norm: str, mode: str):
    net, batches = tiny(model, norm)
    H = dense_hessian(net, batches, LOSS, mode)
    return net, batches, H


# The dense matrix as an operator: tests the eigensolvers cheaply once the HVP is proven equal to it.
DenseOp = DenseOperator


# Cases whose eigenpairs are also computed end to end through the HVP operator (seconds each).
END_TO_END_EIG = {("davidnet", "bn", "batch"), ("simple", "frozen", "none"), ("simple", "ghost", "batch")}


def snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}, {n: m.training for n, m in net.named_modules()}, \
        [p.requires_grad for p in net.parameters()]


def assert_unchanged(net, snap):
    sd, training, flags = snap
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k]), f"{k} changed"
    assert {n: m.training for n, m in net.named_modules()} == training
    assert [p.requires_grad for p in net.parameters()] == flags
    for _, m in batch_norm_layers(net):
        assert m.track_running_stats


@pytest.mark.parametrize("model,norm,mode", CASES)
def test_hvp_and_eigenpairs_match_dense(model, norm, mode):
    net, batches, H = case(model, norm, mode)
    snap = snapshot(net)
    V = torch.randn(3, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for method in ("double_backward", "func"):
        op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode=mode, method=method, cache_graphs=False)
        assert op.dim == H.shape[0]
        torch.testing.assert_close(op.matmat(V), V @ H, rtol=1e-9, atol=1e-11 * H.abs().max().item())
        torch.testing.assert_close(op.matvec(V[0]), H @ V[0], rtol=1e-9, atol=1e-11 * H.abs().max().item())
        assert op.hvp_count == 4
    cached = HessianOperator(net, batches, loss_fn=LOSS, bn_mode=mode, cache_graphs=True)
    for _ in range(2):
        torch.testing.assert_close(cached.matmat(V), V @ H, rtol=1e-9, atol=1e-11 * H.abs().max().item())
    # Top-k eigenpairs against numpy.linalg.eigh of the dense Hessian.
    k = 5
    evals, evecs = np.linalg.eigh(H.numpy())
    solver_op = op if (model, norm, mode) in END_TO_END_EIG else DenseOp(H)
    res = top_eigenpairs(solver_op, k, which="LA", tol=1e-10, ncv=40, verify=True)
    ref = evals[::-1][:k]
    assert np.allclose(res.eigenvalues.numpy(), ref, rtol=1e-8, atol=1e-8 * abs(ref[0]))
    assert bool(res.converged.all())
    assert (res.residuals <= 1e-10 * res.eigenvalues.abs() * 1.0001).all()
    # Eigenvectors: principal angles between the computed and true top-k subspaces (where the
    # gap after the k-th eigenvalue makes the subspace well defined).
    U = evecs[:, ::-1][:, :k]
    s = np.linalg.svd(U.T @ res.eigenvectors.numpy().T, compute_uv=False)
    assert np.all(s > 1 - 1e-8)
    assert_unchanged(net, snap)


@pytest.mark.parametrize("which", ["SA", "LM"])
@pytest.mark.parametrize("solver", ["lanczos", "arpack"])
def test_which_and_solvers(which, solver):
    net, batches, H = case("simple", "bn_fixed_affine", "batch")
    op = DenseOp(H)
    evals = np.linalg.eigvalsh(H.numpy())
    ref = np.sort(evals)[:4] if which == "SA" else evals[np.argsort(-np.abs(evals))][:4]
    res = top_eigenpairs(op, 4, which=which, tol=1e-10, method=solver, ncv=40, verify=True)
    assert np.allclose(res.eigenvalues.numpy(), ref, rtol=1e-8, atol=1e-8 * np.abs(evals).max())
    assert res.hvp_count > 0 and res.wall_time > 0


def test_loss_scale_weight_decay_and_param_subset():
    net, batches, H = case("davidnet", "bn", "batch")
    wd = 5e-4
    op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", loss_scale="batch-sum", batch_size=256,
                         weight_decay=wd)
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), 256 * (H @ v + wd * v), rtol=1e-9, atol=1e-9)
    # A subset: the block of the full Hessian on those parameters (the others held fixed).
    sub = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", params=["layer3*", "!*.norm.*"])
    names = [n for n, _ in net.named_parameters()]
    sizes = [p.numel() for p in net.parameters()]
    offs = np.cumsum([0] + sizes)
    idx = np.concatenate([np.arange(offs[i], offs[i + 1]) for i, n in enumerate(names)
                          if n in sub.param_names])
    assert all(n.startswith("layer3") and ".norm." not in n for n in sub.param_names)
    Hs = H[idx][:, idx]
    u = torch.randn(sub.dim, dtype=torch.float64)
    torch.testing.assert_close(sub.matvec(u), Hs @ u, rtol=1e-9, atol=1e-11)
    with pytest.raises(BnlabError):
        HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", params=["nothing*"])


def test_finite_difference_of_gradient():
    net, batches = tiny("davidnet", "bn")
    op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch")
    theta = op.flat_params()
    v = torch.randn(op.dim, dtype=torch.float64)
    v /= v.norm()

    def grad_at(t):
        with torch.no_grad():
            for p, c in zip(op._params, op.layout.split(t)):
                p.copy_(c)
        return op.gradient()

    eps = 1e-4
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    fd2 = (grad_at(theta + 0.5 * eps * v) - grad_at(theta - 0.5 * eps * v)) / eps
    grad_at(theta)
    richardson = (4 * fd2 - fd) / 3  # cancels the O(eps²) error
    hv = op.matvec(v)
    assert ((hv - richardson).norm() / hv.norm()) < 1e-7


def test_auto_graph_cache_decides_by_budget_and_gives_the_same_products():
    net, batches, H = case("davidnet", "bn", "batch")
    V = torch.randn(2, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    tol = dict(rtol=1e-9, atol=1e-11 * H.abs().max().item())
    roomy = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", cache_budget=1e12)
    tight = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", cache_budget=0)
    default = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch")
    assert roomy.describe()["graph_cache"] == {"mode": "auto"}  # undecided until the first product
    for op in (roomy, tight, default):
        for _ in range(2):
            torch.testing.assert_close(op.matmat(V), V @ H, **tol)
    info = roomy.describe()["graph_cache"]
    assert info["cached"] is True and roomy._cache is not None and len(roomy._cache) == len(batches)
    assert 0 < info["estimated_bytes"] <= info["budget_bytes"]
    assert tight.describe()["graph_cache"]["cached"] is False and tight._cache is None
    assert default.describe()["graph_cache"]["cached"] is True  # a tiny net fits any machine
    # An in-place change of the parameters invalidates the cache (the products follow the new weights).
    net2 = copy.deepcopy(net)
    op2 = HessianOperator(net2, batches, loss_fn=LOSS, bn_mode="batch", cache_graphs=True)
    op2.matmat(V)
    with torch.no_grad():
        next(net2.parameters()).mul_(1.5)
    fresh = HessianOperator(net2, batches, loss_fn=LOSS, bn_mode="batch", cache_graphs=False)
    torch.testing.assert_close(op2.matmat(V), fresh.matmat(V), **tol)


def test_model_never_changes_any_variant_any_call():
    for model, norm, modes in VARIANTS:
        net, batches = tiny(model, norm)
        net.train()  # even a model left in train mode stays in it, with its buffers untouched
        snap = snapshot(net)
        for mode in modes:
            for method, cache in (("double_backward", False), ("double_backward", True), ("double_backward", "auto"),
                                  ("func", False)):
                op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode=mode, method=method, cache_graphs=cache)
                op.matmat(torch.ones(2, op.dim, dtype=torch.float64))
                assert_unchanged(net, snap)
            op.gradient()
            op.loss()
            top_eigenpairs(op, 1, tol=1e-3, ncv=3, max_hvps=4)
            slq_density(op, num_probes=2, lanczos_steps=2)
            assert_unchanged(net, snap)


def test_density_and_trace_within_stated_error():
    net, batches, H = case("simple", "bn_fixed_affine", "batch")
    evals = np.linalg.eigvalsh(H.numpy())
    dim = len(evals)
    op = DenseOp(H)  # the HVP equals H (test above); this tests the estimators and their error bars
    d = slq_density(op, num_probes=10, lanczos_steps=40, seed=3)
    sigma = (evals.max() - evals.min()) / 50
    grid = np.linspace(evals.min(), evals.max(), 60)
    est, se = d.density(grid, sigma)
    truth = np.exp(-0.5 * ((grid[:, None] - evals[None]) / sigma) ** 2).sum(1) / (dim * sigma * np.sqrt(2 * np.pi))
    assert np.all(np.abs(est - truth) <= 4 * se + 0.02 * truth.max())
    assert abs(np.trapezoid(est, grid) - 1) < 0.05
    tr, tr_se = d.trace()
    assert abs(tr - evals.sum()) <= 4 * tr_se
    m2, m2_se = d.moment(2)
    assert abs(m2 - (evals ** 2).mean()) <= 4 * m2_se
    for res in (hutchinson_trace(op, 30, seed=1), hutchpp_trace(op, 30, seed=1)):
        assert abs(res.estimate - evals.sum()) <= 4 * res.stderr, res
        assert res.stderr > 0


def test_deterministic_with_fixed_seed():
    net, batches = tiny("simple", "ghost")
    runs = []
    for _ in range(2):
        op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch")
        r = top_eigenpairs(op, 2, tol=1e-3, ncv=6, max_hvps=12, seed=5)
        d = slq_density(op, num_probes=2, lanczos_steps=8, seed=5)
        runs.append((r.eigenvalues, r.eigenvectors, r.hvp_count, d.nodes))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][2] == runs[1][2] and np.array_equal(runs[0][3], runs[1][3])


def test_warm_start_needs_fewer_hvps():
    net, batches, H = case("simple", "bn_fixed_affine", "running")
    op = DenseOp(H)
    cold = top_eigenpairs(op, 4, tol=1e-8)
    warm = top_eigenpairs(op, 4, tol=1e-8, v0=cold.eigenvectors)
    torch.testing.assert_close(warm.eigenvalues, cold.eigenvalues, rtol=1e-7, atol=0)
    assert warm.hvp_count < cold.hvp_count


def test_relu_runs_and_duck_typed_operator():
    net, batches = tiny("davidnet", "bn", act="relu")
    op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch")
    u, v = torch.randn(2, op.dim, dtype=torch.float64)
    assert abs(u @ op.matvec(v) - v @ op.matvec(u)) < 1e-8 * op.matvec(v).norm() * u.norm()

    class Diag:  # any object with .dim and .matvec works (e.g. a projected Hessian)
        dim = 50

        def matvec(self, x):
            return torch.arange(50, dtype=torch.float64) * x

    r = top_eigenpairs(Diag(), 3, tol=1e-10)
    assert r.eigenvalues.tolist() == pytest.approx([49, 48, 47], rel=1e-10)
    with pytest.raises(BnlabError, match="larger than"):
        top_eigenpairs(Diag(), 51)
    # scipy LinearOperator view
    lo = op.as_linear_operator()
    assert np.allclose(lo @ v.numpy(), op.matvec(v).numpy())


def test_bn_mode_is_a_real_choice():
    net, batches, Hb = case("simple", "bn_fixed_affine", "batch")
    _, _, Hr = case("simple", "bn_fixed_affine", "running")
    assert not torch.allclose(Hb, Hr)
    with bn_mode(net, "batch"):
        pass
    assert_unchanged(net, snapshot(net))
