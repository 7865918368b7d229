"""HessianOperator against a float64 truth written here without bnlab: a small BN network whose loss
is spelled out by hand (linear -> batch norm -> softplus -> linear -> cross-entropy) and
differentiated twice by torch.autograd.functional.

The evaluation set has batches of 6 and 2, the normal case whenever --num-samples is not a multiple
of --batch-size: each batch's mean loss must count with weight n_b / N (an equal 1/2 per batch is
a different, wrong Hessian; the tests check that it differs).
"""
from __future__ import annotations

import functools
import gc
import math
import os
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacfwd

from bnlab.curvature import HessianOperator
from bnlab.curvature.base import DataOperator
from bnlab.curvature.operator import available_memory
from bnlab.errors import BnlabError
from bnlab.models import ModelSpec, build_model
from conftest import requires_cuda

SIZES = (6, 2)
EPS = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def mlp(seed: int = 0) -> nn.Sequential:
    """5 -> 4 (BatchNorm1d, learnable affine, non-trivial running stats) -> softplus -> 3 classes."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4, eps=EPS), nn.Softplus(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.3, 0.3)
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def data(sizes: tuple[int, ...] = SIZES, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    edges = np.cumsum((0, *sizes))
    return [(x[a:b].clone(), y[a:b].clone()) for a, b in zip(edges[:-1], edges[1:])]  # own storage each


def hand_loss(theta: torch.Tensor, net: nn.Sequential, batches, mode: str, weights: list[float]) -> torch.Tensor:
    """Σ_b weights[b] · (mean cross-entropy of batch b) for the flat parameters theta, by hand."""
    shapes = [p.shape for p in net.parameters()]
    w1, b1, gamma, beta, w2, b2 = (c.reshape(s) for c, s in
                                   zip(torch.split(theta, [math.prod(s) for s in shapes]), shapes))
    total = theta.new_zeros(())
    for (x, y), wt in zip(batches, weights):
        h = x @ w1.T + b1
        if mode == "batch":
            mu, var = h.mean(0), ((h - h.mean(0)) ** 2).mean(0)  # biased variance, as BN normalises
        else:
            mu, var = net[1].running_mean, net[1].running_var
        a = torch.log1p(torch.exp((h - mu) / torch.sqrt(var + EPS) * gamma + beta))
        z = a @ w2.T + b2
        ce = torch.logsumexp(z, 1) - z.gather(1, y[:, None])[:, 0]
        total = total + wt * ce.mean()
    return total


@functools.cache
def truth(mode: str, equal: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(Hessian, gradient, loss) of the size-weighted mean loss (or, `equal`, the wrong 1/B weighting)."""
    net, batches = mlp(), data()
    n = sum(SIZES)
    weights = [1 / len(SIZES)] * len(SIZES) if equal else [s / n for s in SIZES]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    f = functools.partial(hand_loss, net=net, batches=batches, mode=mode, weights=weights)
    H = torch.autograd.functional.hessian(f, theta)
    g = torch.func.grad(f)(theta)
    return H, g, float(f(theta))


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * float(b.abs().max()))


def test_the_hand_written_loss_is_the_model_and_weighting_matters() -> None:
    # The truth's forward equals the network's own (so the truth is about this model) ...
    net, batches = mlp(), data()
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    net.train()
    with torch.no_grad():
        own = sum(F.cross_entropy(net(x), y) * len(y) / 8 for x, y in batches)
    net.eval()
    assert own.item() == pytest.approx(float(hand_loss(theta, net, batches, "batch", [6 / 8, 2 / 8])), rel=1e-12)
    # ... and batches of 6 and 2 make the weighting matter: 1/B per batch is far off.
    for mode in ("batch", "running"):
        H, _, _ = truth(mode)
        wrong, _, _ = truth(mode, equal=True)
        assert (wrong - H).norm() > 0.05 * H.norm()


@pytest.mark.parametrize("mode", ["batch", "running"])
def test_dense_ground_truth_weights_unequal_batches_by_size(mode: str) -> None:
    # bnlab.curvature.dense_hessian is the truth other tests compare with: it must be this one too.
    from bnlab.curvature import dense_hessian

    H, _, _ = truth(mode)
    close(dense_hessian(mlp(), data(), F.cross_entropy, mode), H)


@pytest.mark.parametrize("mode", ["batch", "running"])
@pytest.mark.parametrize("method,cache", [("double_backward", False), ("double_backward", True),
                                          ("double_backward", "auto"), ("func", False)])
def test_unequal_batches_weighted_by_size(mode: str, method: str, cache: bool | str) -> None:
    H, g, loss = truth(mode)
    net, batches = mlp(), data()
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode=mode, method=method, cache_graphs=cache)
    V = torch.randn(3, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for _ in range(2):  # the second call reuses cached graphs when there are any
        close(op.matmat(V), V @ H)
    close(op.matvec(V[0]), H @ V[0])
    close(op.gradient(), g)
    assert op.loss() == pytest.approx(loss, rel=1e-12)
    assert op.sizes == list(SIZES) and op.num_samples == 8 and op.hvp_count == 7 and op.passes == 3


@pytest.mark.parametrize("method", ["double_backward", "func"])
def test_a_parameter_off_the_loss_path_has_zero_curvature_and_no_products_are_empty(method: str) -> None:
    H, g, _ = truth("batch")
    net = mlp()
    net.register_parameter("unused", nn.Parameter(torch.randn(3, dtype=torch.float64)))  # first in parameters()
    op = HessianOperator(net, data(), loss_fn=F.cross_entropy, bn_mode="batch", method=method)
    assert op.dim == H.shape[0] + 3
    V = torch.randn(2, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    close(op.matmat(V), torch.cat([torch.zeros(2, 3, dtype=torch.float64), V[:, 3:] @ H], dim=1))
    close(op.gradient(), torch.cat([torch.zeros(3, dtype=torch.float64), g]))
    assert op.matmat(V[:0]).shape == (0, op.dim)


@pytest.mark.parametrize("cache", [True, False])
def test_a_loss_linear_in_the_selected_parameters_has_a_zero_hessian(cache: bool) -> None:
    # sum of the logits is linear in the last layer's weight and bias: with the rest of the net frozen
    # (as a loaded model may be) its gradient has no graph left to differentiate
    net, batches = mlp(), data()
    for p in net.parameters():
        p.requires_grad_(False)
    op = HessianOperator(net, batches, loss_fn=lambda out, y: out.sum(), bn_mode="batch", params=["3.*"],
                         cache_graphs=cache)
    V = torch.randn(3, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert op.dim == 4 * 3 + 3
    assert torch.equal(op.matmat(V), torch.zeros(3, op.dim, dtype=torch.float64))


def test_streamed_batches_and_running_mode_one_batch() -> None:
    # Running statistics do not depend on how the set is split: 6 + 2 equals one batch of 8.
    H, _, _ = truth("running")
    net, batches = mlp(), data()
    whole = [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))]
    v = torch.randn(op_dim := sum(p.numel() for p in net.parameters()), dtype=torch.float64)
    one = HessianOperator(net, whole, loss_fn=F.cross_entropy, bn_mode="running")
    streamed = HessianOperator(net, lambda: iter(batches), loss_fn=F.cross_entropy, bn_mode="running")
    assert one.dim == streamed.dim == op_dim
    close(one.matvec(v), H @ v)
    close(streamed.matvec(v), H @ v)


def test_batch_sum_units_weight_decay_and_subset() -> None:
    H, g, loss = truth("batch")
    net, batches = mlp(), data()
    names = [n for n, _ in net.named_parameters()]
    sizes = [p.numel() for p in net.parameters()]
    decayed = torch.cat([torch.full((s,), float(n.endswith("weight"))) for n, s in zip(names, sizes)]).double()
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    wd = 0.03
    v = torch.randn(len(theta), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    # batch-sum: the loss summed over a batch of `batch_size` = batch_size x the mean loss
    for bs, expect_bs in ((None, 6), (4, 4)):
        op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", loss_scale="batch-sum",
                             batch_size=bs, weight_decay=wd, decayed=lambda n: n.endswith("weight"))
        assert op.batch_size == expect_bs and op.scale == expect_bs
        close(op.matvec(v), expect_bs * (H @ v + wd * decayed * v))
        close(op.gradient(), expect_bs * (g + wd * decayed * theta))
        assert op.loss() == pytest.approx(expect_bs * (loss + 0.5 * wd * float((decayed * theta ** 2).sum())),
                                          rel=1e-12)
        d = op.describe()
        assert (d["num_samples"], d["num_batches"], d["batch_size"], d["scale_factor"]) == (8, 2, expect_bs, expect_bs)
        assert (d["loss_scale"], d["weight_decay_term"], d["bn_mode"], d["dtype"]) == ("batch-sum", wd, "batch",
                                                                                       "float64")
        assert d["dim"] == len(theta) and d["num_param_tensors"] == 6 and d["hvp_method"] == "double_backward"
    # mean units with every parameter decayed (the default, as trained)
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", weight_decay=wd)
    assert op.batch_size == 6 and op.scale == 1.0
    close(op.matvec(v), H @ v + wd * v)
    # a subset: the block of the full Hessian (other parameters held fixed)
    idx = np.concatenate([np.arange(a, a + s) for a, s, n in zip(np.cumsum([0] + sizes[:-1]), sizes, names)
                          if n.startswith("1.") or n == "3.weight"])
    U = torch.randn(2, len(idx), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for method in ("double_backward", "func"):
        sub = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", params=["1.*", "3.weight"],
                              method=method)
        assert sub.param_names == ["1.weight", "1.bias", "3.weight"] and sub.dim == len(idx)
        # plain tensors out (the func route once returned results attached to the unselected parameters)
        hv, HU = sub.matvec(U[0]), sub.matmat(U)
        assert not hv.requires_grad and not HU.requires_grad
        close(hv, H[idx][:, idx] @ U[0])
        close(HU, U @ H[idx][:, idx])
    u = U[0]
    parts = sub.unflatten(u)
    assert [tuple(t.shape) for t in parts.values()] == [(4,), (4,), (3, 4)]
    close(sub.flat_params(), theta[idx])


def test_blocks_counts_scipy_view_and_flags() -> None:
    H, _, _ = truth("batch")
    net, batches = mlp(), data()
    for p in net.parameters():
        p.requires_grad_(False)  # a loaded model may have them off: products still work, flags come back
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", block_size=2, cache_graphs=False)
    V = torch.randn(5, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    close(op.matmat(V), V @ H)
    assert op.hvp_count == 5 and op.passes == 3  # ceil(5 / 2) passes over the data
    assert not any(p.requires_grad for p in net.parameters())
    lo = op.as_linear_operator()
    X = V[:2].T.numpy().copy()
    atol = 1e-13 * float(H.abs().max())  # entries near 0 of products with entries ~1e2-1e3
    np.testing.assert_allclose(lo @ X[:, 0], (H @ V[0]).numpy(), rtol=1e-10, atol=atol)
    np.testing.assert_allclose(lo.matmat(X), (H @ V[:2].T).numpy(), rtol=1e-10, atol=atol)
    np.testing.assert_allclose(lo.rmatvec(X[:, 1]), (H @ V[1]).numpy(), rtol=1e-10, atol=atol)
    assert lo.shape == (op.dim, op.dim) and lo.dtype == np.float64 and op.hvp_count == 5 + 1 + 2 + 1
    with pytest.raises(BnlabError, match="expected vectors of shape"):
        op.matmat(torch.ones(2, op.dim + 1, dtype=torch.float64))
    with pytest.raises(BnlabError, match="expected vectors of shape"):
        op.matmat(torch.ones(op.dim, dtype=torch.float64))


def test_float32_model_gives_float64_products_of_the_float32_hessian() -> None:
    H, _, _ = truth("batch")
    net, batches = mlp(), data()
    net32 = net.float()
    op = HessianOperator(net32, [(x.float(), y) for x, y in batches], loss_fn=F.cross_entropy, bn_mode="batch")
    assert op.dtype == torch.float32 and op.describe()["dtype"] == "float32"
    v = torch.randn(op.dim, dtype=torch.float64)
    hv = op.matvec(v)
    assert hv.dtype == torch.float64
    torch.testing.assert_close(hv, H @ v, rtol=1e-3, atol=1e-4 * float((H @ v).abs().max()))


def test_graph_cache_decision_boundary() -> None:
    net, batches = mlp(), data()
    probe = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_budget=0)
    probe.matvec(torch.ones(probe.dim, dtype=torch.float64))
    est = probe.cache_info["estimated_bytes"]
    assert probe.cache_info["cached"] is False and probe.cache_info["budget_bytes"] == 0 and est > 0
    # (the record truncates the estimate to whole bytes) a budget just above it fits, just below does not
    fits = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_budget=est + 1)
    fits.matvec(torch.ones(fits.dim, dtype=torch.float64))
    assert fits.cache_info == {"mode": "auto", "cached": True, "estimated_bytes": est, "budget_bytes": est + 1}
    assert fits.cache_graphs is True and len(fits._cache) == 2 and fits.describe()["cache_graphs"] is True
    tight = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_budget=est - 1)
    tight.matvec(torch.ones(tight.dim, dtype=torch.float64))
    assert tight.cache_info["cached"] is False and tight._cache is None and tight.describe()["cache_graphs"] is False
    # the estimate scales with the set: per example of the first batch times N
    big = HessianOperator(net, data((6, 6)), loss_fn=F.cross_entropy, bn_mode="batch", cache_budget=0)
    big.matvec(torch.ones(big.dim, dtype=torch.float64))
    assert big.cache_info["estimated_bytes"] == pytest.approx(est * 12 / 8, abs=2)
    assert HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch",
                           cache_graphs=True).describe()["graph_cache"] == {"mode": "on"}
    assert HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch",
                           cache_graphs=False).describe()["graph_cache"] == {"mode": "off"}
    func = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", method="func")
    assert func.cache_graphs is False and func.describe()["hvp_method"] == "func"


@pytest.mark.parametrize("cache", [True, "auto"])
def test_cached_graphs_are_built_once_and_rebuilt_after_an_update(cache: bool | str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of caching: later products are only the second backward (no forward, no first backward)
    until a parameter changes in place."""
    import bnlab.curvature.operator as operator_module

    H, _, _ = truth("batch")
    net, batches = mlp(), data()
    built = []
    real = operator_module.batch_gradient
    monkeypatch.setattr(operator_module, "batch_gradient", lambda *a, **k: built.append(1) or real(*a, **k))
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_graphs=cache)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        close(op.matvec(v), H @ v)
    assert len(built) == len(batches)
    with torch.no_grad():
        net[3].bias.add_(0.1)  # in place: the cached graphs are stale
    op.matvec(v)
    assert len(built) == 2 * len(batches)
    held = [weakref.ref(g) for g in op._cache]
    op.clear_cache()  # e.g. to free memory between uses: the graphs are released, the next product builds them again
    gc.collect()
    assert op._cache is None and all(r() is None for r in held)
    op.matvec(v)
    assert len(built) == 3 * len(batches)


def test_available_memory_reads_meminfo(tmp_path) -> None:
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    got = available_memory(torch.device("cpu"))
    assert got is not None and abs(got - kib * 1024) < 0.05 * kib * 1024  # it moves a little between reads
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       2000 kB\nMemFree:         100 kB\nMemAvailable:    123 kB\n")
    assert available_memory(torch.device("cpu"), str(fake)) == 123 * 1024
    # no meminfo (not Linux): the free physical pages
    pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    free = available_memory(torch.device("cpu"), str(tmp_path / "missing"))
    assert free is not None and abs(free - pages) < 0.2 * pages


def test_available_memory_by_default_is_memavailable_not_the_free_pages(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path) -> None:
    # MemAvailable counts reclaimable page cache, the free pages do not; on an idle machine the two can
    # be within a few percent, so the free pages are faked to a tiny, distinct number: the default
    # (no meminfo argument) must still read /proc/meminfo, and only a missing file falls back to them.
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    pages = {"SC_PAGE_SIZE": 4096, "SC_AVPHYS_PAGES": 3}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    got = available_memory(torch.device("cpu"))
    assert got is not None and abs(got - kib * 1024) < 0.05 * kib * 1024
    assert available_memory(torch.device("cpu"), str(tmp_path / "missing")) == 3 * 4096

    def unsupported(name: str) -> int:  # a platform without these sysconf names
        raise ValueError(f"unrecognized configuration name {name}")

    monkeypatch.setattr(os, "sysconf", unsupported)
    assert available_memory(torch.device("cpu"), str(tmp_path / "missing")) is None  # unknown, not 0


def test_available_memory_on_cuda_is_the_free_memory_of_the_device_asked_about(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.cuda.mem_get_info(device) returns (free, total) bytes of that device. Faked here (two devices
    # with different numbers, so a CPU machine sees which device is asked and which number is read);
    # the real call is checked on a GPU by the requires_cuda tests below.
    info = {0: (111, 1000), 1: (222, 2000)}
    asked = []

    def mem_get_info(device=None):  # noqa: ANN001, ANN202 - torch's signature
        asked.append(device)
        return info[0 if device is None else torch.device(device).index]

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    assert available_memory(torch.device("cuda", 1)) == 222
    assert available_memory(torch.device("cuda", 0)) == 111
    assert asked == [torch.device("cuda", 1), torch.device("cuda", 0)]


def test_graph_cache_budget_default_and_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    import bnlab.curvature.operator as operator_module

    net, batches = mlp(), data()
    for free, budget in ((1000, 500), (None, 0)):  # half the free memory; nothing when it is unknown
        monkeypatch.setattr(operator_module, "available_memory", lambda device, free=free: free)
        op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch")
        op.matvec(torch.ones(op.dim, dtype=torch.float64))
        assert op.cache_info["budget_bytes"] == budget and op.cache_info["cached"] is False
    # the estimate is per example (measured on the first batch) times N: about the same whichever batch is first
    est = []
    for sizes in ((6, 2), (2, 6)):
        op = HessianOperator(net, data(sizes), loss_fn=F.cross_entropy, bn_mode="batch", cache_budget=0)
        op.matvec(torch.ones(op.dim, dtype=torch.float64))
        est.append(op.cache_info["estimated_bytes"])
    assert 0.5 < est[0] / est[1] < 2
    exact = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_budget=est[0])
    exact.matvec(torch.ones(exact.dim, dtype=torch.float64))
    assert exact.cache_info["cached"] is True  # a budget equal to the estimate fits


def test_block_size_bounds_the_vectors_per_pass() -> None:
    net, batches = mlp(), data()
    V = torch.randn(20, 47, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    H, _, _ = truth("batch")
    for block, passes in ((None, 2), (1, 20), (0, 20), (7, 3)):  # default 16; at least 1
        kw = {} if block is None else {"block_size": block}
        op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_graphs=False, **kw)
        close(op.matmat(V), V @ H)
        assert op.passes == passes and op.block_size == (16 if block is None else max(1, block))


def test_float32_model_returns_float64_vectors_without_graphs() -> None:
    net, batches = mlp(), data()
    net32 = net.float()
    op = HessianOperator(net32, [(x.float(), y) for x, y in batches], loss_fn=F.cross_entropy, bn_mode="batch",
                         weight_decay=0.01)
    theta = torch.cat([p.detach().reshape(-1) for p in net32.parameters()])
    assert op.flat_params().dtype == torch.float64 and torch.equal(op.flat_params(), theta.double())
    g = op.gradient()
    assert g.dtype == torch.float64 and not g.requires_grad
    empty = op.matmat(torch.zeros(0, op.dim, dtype=torch.float64))
    assert empty.dtype == torch.float64 and empty.shape == (0, op.dim)
    # both routes take float64 vectors and compute in the model's dtype
    H, _, _ = truth("batch")
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    for method in ("func", "double_backward"):
        op = HessianOperator(net32, [(x.float(), y) for x, y in batches], loss_fn=F.cross_entropy, bn_mode="batch",
                             method=method, cache_graphs=False)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-3, atol=1e-4 * float((H @ v).abs().max()))


@pytest.mark.parametrize("method,cache", [("func", "auto"), ("func_compiled", "auto"), ("double_backward", False),
                                          ("double_backward", True)])
def test_the_hvp_method_asked_for_is_the_one_that_runs(method: str, cache: bool | str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import bnlab.curvature.hvp as hvp_module
    import bnlab.curvature.operator as operator_module

    # func_compiled gives the same numbers as func, so only counting the calls tells them apart. Its
    # torch.compile (tens of seconds on CPU) is replaced by the plain func_block, called through
    # compiled_func_block's own cache of the compiled function, so the operator's dispatch is the real one.
    monkeypatch.setattr(hvp_module, "_compiled", [hvp_module.func_block])
    calls = {"func_block": 0, "compiled_func_block": 0, "double_backward_block": 0}
    for name in calls:
        real = getattr(operator_module, name)
        monkeypatch.setattr(operator_module, name,
                            lambda *a, _real=real, _name=name, **k: calls.__setitem__(_name, calls[_name] + 1) or
                            _real(*a, **k))
    H, _, _ = truth("batch")
    op = HessianOperator(mlp(), data(), loss_fn=F.cross_entropy, bn_mode="batch", method=method, cache_graphs=cache)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    close(op.matvec(v), H @ v)
    expect = {"func_block": 0, "compiled_func_block": 0, "double_backward_block": 0}
    expect[{"func": "func_block", "func_compiled": "compiled_func_block"}.get(method, "double_backward_block")] = 2
    assert calls == expect  # one call per batch, all of them by the method asked for


def test_graph_building_is_quiet_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    net, batches = mlp(), data()
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_graphs=True)
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    assert capsys.readouterr().err == ""
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", cache_graphs=True)
    op.quiet = False
    op.matvec(torch.ones(op.dim, dtype=torch.float64))
    assert "hessian: gradient graphs: 2/2 batch" in capsys.readouterr().err


@requires_cuda
def test_a_model_on_cuda_takes_and_returns_vectors_on_their_device() -> None:
    H, g, loss = truth("batch")
    net, batches = mlp().cuda(), [(x.cuda(), y.cuda()) for x, y in data()]
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", weight_decay=0.02)
    theta = torch.cat([p.detach().reshape(-1) for p in mlp().parameters()])
    V = torch.randn(3, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    for device in ("cpu", "cuda"):  # vectors on any device come back on it
        out = op.matmat(V.to(device))
        assert out.device.type == device
        close(out.cpu(), V @ (H + 0.02 * torch.eye(op.dim, dtype=torch.float64)))
        assert op.matmat(V[:0].to(device)).device.type == device
    assert op.gradient().device.type == "cuda"
    close(op.gradient().cpu(), g + 0.02 * theta)
    assert op.loss() == pytest.approx(loss + 0.01 * float(theta @ theta), rel=1e-12)
    free, total = torch.cuda.mem_get_info()
    assert abs(available_memory(torch.device("cuda")) - free) < 0.1 * total


@requires_cuda
def test_available_memory_on_a_real_gpu_follows_its_free_memory() -> None:
    # Free, not total: taking a fifth of the free memory must show up in the answer.
    device = torch.device("cuda", torch.cuda.current_device())
    before = available_memory(device)
    free, total = torch.cuda.mem_get_info(device)
    block = torch.empty(int(0.2 * free), dtype=torch.uint8, device=device)
    after = available_memory(device)
    now_free, _ = torch.cuda.mem_get_info(device)
    del block
    assert abs(after - now_free) < 0.02 * total
    assert before - after > 0.15 * free


def test_the_record_keeps_the_provenance_and_names_the_hessian() -> None:
    # settings is what result files store: the data's provenance given to the operator must be in it,
    # next to what the operator itself describes, in the units of the loss asked for.
    net, batches = mlp(), data()
    where = {"checkpoint": "run/final.pt", "eval_set": "test[0:8]"}
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", provenance=where,
                         loss_scale="batch-sum", params=["1.*"])
    s = op.settings
    assert {k: s[k] for k in where} == where and op.provenance == where
    assert (s["matrix"], s["params"], s["hvp_method"], s["dim"]) == ("hessian", ["1.*"], "double_backward", 8)
    assert s["units"] == "loss summed over a batch of 6 (= 6 x mean-loss Hessian)"
    assert HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch").provenance == {}


def test_bad_arguments() -> None:
    net, batches = mlp(), data()
    kw = dict(loss_fn=F.cross_entropy, bn_mode="batch")
    with pytest.raises(BnlabError, match="unknown HVP method"):
        HessianOperator(net, batches, method="reverse", **kw)
    with pytest.raises(BnlabError, match="unknown loss scale"):
        HessianOperator(net, batches, loss_scale="sum", **kw)
    with pytest.raises(BnlabError, match="cache_graphs must be"):
        HessianOperator(net, batches, cache_graphs="yes", **kw)
    with pytest.raises(BnlabError, match="needs method double_backward"):
        HessianOperator(net, batches, cache_graphs=True, method="func", **kw)
    with pytest.raises(BnlabError, match="empty"):
        HessianOperator(net, [], **kw)


def test_a_data_operator_without_a_per_batch_product_says_which() -> None:
    class NoProduct(DataOperator):
        matrix = "none"

    op = NoProduct(mlp(), data(), loss_fn=F.cross_entropy, bn_mode="batch")
    with pytest.raises(NotImplementedError, match="^NoProduct defines no per-batch product$"):
        op.matvec(torch.ones(op.dim, dtype=torch.float64))


def test_real_network_with_batches_of_6_and_2() -> None:
    """The simple BN net of the batch-norm post, BN in batch mode, the same 6 + 2 split: against a
    torch.func Hessian of Σ_i loss_i / N written here (per-example losses summed within each batch)."""
    torch.manual_seed(0)
    net = build_model(ModelSpec(model="simple", width=1, norm="bn_fixed_affine", act="softplus")).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(8) % 10
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def total(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (c.reshape(s) for c, s in zip(torch.split(flat, [math.prod(s) for s in shapes]),
                                                                 shapes))))
        return sum(F.cross_entropy(functional_call(net, params, (xb,)), yb, reduction="sum") for xb, yb in batches) / 8

    net.train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False  # batch statistics, buffers untouched (torch.func needs that)
    H = jacfwd(grad(total))(theta)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = True
    net.eval()
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    V = torch.randn(2, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(op.matmat(V), V @ H, rtol=1e-9, atol=1e-11 * float(H.abs().max()))
