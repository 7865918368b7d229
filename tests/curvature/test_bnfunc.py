"""bnlab.bnfunc: batch norm with batch statistics and a written-out double backward.

It must be exactly F.batch_norm(training=True): values, first and second derivatives against
PyTorch in float64, third derivatives against finite differences, and HVPs of tiny nets (every BN
kind, ghost with splits, without affine, channels_last) against the dense torch.func Hessian.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from bnlab import bnfunc
from bnlab.bnfunc import batch_norm_batch_stats, generic_batch_norm
from bnlab.bnmode import bn_mode
from bnlab.curvature import HessianOperator, dense_hessian
from bnlab.models import ModelSpec, build_model
from bnlab.norms import GhostBatchNorm, batch_norm_layers
from conftest import requires_cuda

EPS = 1e-5
LOSS = functools.partial(F.cross_entropy, label_smoothing=0.1)


def reference(x, w, b):
    if w is None and b is not None:
        # PyTorch's own double backward fails for a bias without weight ("Expected a proper Tensor
        # but got None", torch 2.13): the same function with the bias added outside.
        return F.batch_norm(x, None, None, None, None, True, 0.0, EPS) + b.view((1, -1) + (1,) * (x.dim() - 2))
    return F.batch_norm(x, None, None, w, b, True, 0.0, EPS)


def mine(x, w, b):
    return batch_norm_batch_stats(x, w, b, EPS)


def make_inputs(shape, affine: bool | str, channels_last: bool, seed: int = 0):
    """x, weight, bias (float64, requiring grad); affine False / True / "weight" only / "bias" only."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=g) * 1.7 + 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    w = torch.rand(c, dtype=torch.float64, generator=g) + 0.5 if affine else None
    b = torch.randn(c, dtype=torch.float64, generator=g) if affine else None
    if affine == "weight":
        b = None
    elif affine == "bias":
        w = None
    return [t.requires_grad_() if t is not None else None for t in (x, w, b)]


def derivatives(f, inputs, seed: int = 1):
    """Output, gradient and an HVP (reverse over reverse) of sum(sin(f(...)) * u) in the inputs."""
    g = torch.Generator().manual_seed(seed)
    ins = [t for t in inputs if t is not None]
    y = f(*inputs)
    u = torch.randn(y.shape, dtype=y.dtype, generator=g).to(y.device)
    loss = (torch.sin(y) * u).sum()  # a non-quadratic loss: the second derivative of BN is exercised fully
    grads = torch.autograd.grad(loss, ins, create_graph=True)
    vs = [torch.randn(t.shape, dtype=t.dtype, generator=g).to(t.device) for t in ins]
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(grads, vs)), ins)
    return y, grads, hv


CASES = [((6, 3, 4, 5), True, False), ((6, 3, 4, 5), False, False), ((6, 3, 4, 5), True, True),
         ((5, 4, 3, 3), False, True), ((7, 3), True, False), ((4, 2, 6), False, False),
         ((3, 2, 2, 3), "weight", False), ((3, 2, 2, 3), "bias", True)]


@pytest.mark.parametrize("shape,affine,channels_last", CASES)
def test_same_function_and_derivatives_as_f_batch_norm(shape, affine, channels_last):
    inputs = make_inputs(shape, affine, channels_last)
    y_ref, g_ref, h_ref = derivatives(reference, inputs)
    y, g, h = derivatives(mine, inputs)
    # Same kernels for value and gradient: agreement to rounding.
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(h, h_ref):  # a different formula for the same second derivative
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
    assert g[0].is_contiguous(memory_format=torch.channels_last) == g_ref[0].is_contiguous(
        memory_format=torch.channels_last)


@requires_cuda
@pytest.mark.parametrize("shape,affine,channels_last", CASES)
def test_the_same_on_cuda(shape, affine, channels_last):
    # the fused CUDA kernel leaves out the weight's gradient when it is given no weight: a BN without
    # affine, and the kernel call that sums a·dy, must pass ones
    inputs = make_inputs(shape, affine, channels_last)
    want = derivatives(reference, inputs)
    on_gpu = [t.detach().cuda().requires_grad_() if t is not None else None for t in inputs]
    if channels_last:
        on_gpu[0] = on_gpu[0].contiguous(memory_format=torch.channels_last).detach().requires_grad_()
    got = derivatives(mine, on_gpu)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-10, atol=1e-12)
    for part in (1, 2):
        for a, b in zip(got[part], want[part]):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("affine", [True, False])
def test_second_and_third_derivatives_by_finite_differences(affine):
    x, w, b = make_inputs((3, 2, 2, 3), affine, False, seed=2)
    ins = tuple(t for t in (x, w, b) if t is not None)

    def f(*t):
        return mine(t[0], *(t[1:] if affine else (None, None)))

    assert torch.autograd.gradcheck(f, ins)
    assert torch.autograd.gradgradcheck(f, ins)
    u = torch.randn(3, 2, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def first(*t):  # gradgradcheck of the gradient checks the third derivative
        return torch.autograd.grad((torch.sin(f(*t)) * u).sum(), t, create_graph=True)

    assert torch.autograd.gradgradcheck(first, ins)


def test_partial_second_order_inputs():
    """Second backward with only some of (dx, dγ, dβ) carrying a gradient, or only some inputs wanted."""
    x, w, b = make_inputs((6, 3, 4, 4), True, False, seed=4)
    for f in (mine, reference):
        y = f(x, w, b)
        gx, gw, gb = torch.autograd.grad((torch.sin(y) * 0.7).sum(), (x, w, b), create_graph=True)
        out = []
        for scal, wrt in (((gw * 1.3).sum(), (x, w)), ((gb ** 2).sum(), (x,)), ((gx * x.detach()).sum(), (w,)),
                          ((gw + gb).sum(), (x, w, b))):
            out.append(torch.autograd.grad(scal, wrt, retain_graph=True, allow_unused=True, materialize_grads=True))
        if f is mine:
            got = out
        else:
            ref = out
    for a, b_ in zip(got, ref):
        for s, t in zip(a, b_):
            torch.testing.assert_close(s, t, rtol=1e-10, atol=1e-11)


def test_used_only_where_it_pays_and_switch():
    x, w, b = make_inputs((4, 3, 2, 2), True, False)
    assert mine(x, w, b).grad_fn.name() == "_BatchStatsNormBackward"
    with generic_batch_norm():
        assert mine(x, w, b).grad_fn.name() == "NativeBatchNormBackward0"
    with torch.no_grad():
        torch.testing.assert_close(mine(x, w, b), reference(x, w, b), rtol=0, atol=0)
    # Under torch.func transforms it is F.batch_norm (the dense ground truth never runs this code).
    calls = []
    orig = bnfunc._BatchStatsNorm.apply
    try:
        bnfunc._BatchStatsNorm.apply = lambda *a: calls.append(1) or orig(*a)
        per_example = vmap(grad(lambda xi: mine(xi.expand(2, -1, -1, -1) * torch.tensor([[[[1.0]]], [[[2.0]]]],
                                                                                   dtype=xi.dtype), w, b)
                                .pow(3).sum()))
        per_example(x.detach())
        assert calls == []
        mine(x, w, b)
        assert calls == [1]
    finally:
        bnfunc._BatchStatsNorm.apply = orig
    with pytest.raises(ValueError):  # F.batch_norm's own error for a single value per channel
        mine(torch.ones(1, 3, requires_grad=True), None, None)


def test_bn_mode_batch_uses_it_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    net = build_model(ModelSpec(model="davidnet", width=1, norm="ghost", ghost_splits=2, act="softplus")).double()
    extra = nn.Sequential(nn.BatchNorm1d(3)).double()  # a plain 1d BN is covered too
    snap = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    with bn_mode(net, "batch"), bn_mode(extra, "batch"):
        out = net(x)
        assert all("forward" in m.__dict__ for _, m in batch_norm_layers(net))
        assert extra(torch.randn(5, 3, dtype=torch.float64, requires_grad=True)).grad_fn.name() == \
            "_BatchStatsNormBackward"
    assert all("forward" not in m.__dict__ for _, m in batch_norm_layers(net))
    for k, v in net.state_dict().items():
        assert torch.equal(v, snap[k]), k
    # The ghost forward equals GhostBatchNorm's own training forward without running statistics.
    with torch.no_grad():
        for _, m in batch_norm_layers(net):
            m.track_running_stats = False
        net.train()
        torch.testing.assert_close(out, net(x), rtol=0, atol=1e-12)
        net.eval()
        for _, m in batch_norm_layers(net):
            m.track_running_stats = True
    with bn_mode(net, "batch"), pytest.raises(Exception, match="divisible"):
        net(x[:3])


class SubclassedBN(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 2


def test_subclass_with_its_own_forward_is_left_alone():
    m = SubclassedBN(3).double()
    with bn_mode(m, "batch"):
        assert "forward" not in m.__dict__
        y = m(torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True))
        assert y.grad_fn.name() == "MulBackward0"


def tiny(model: str, norm: str, affine: bool | None, splits: int = 2, channels_last: bool = False):
    torch.manual_seed(1)
    spec = ModelSpec(model=model, width=1, norm=norm, act="softplus", ghost_splits=splits, affine=affine)
    net = build_model(spec).double()
    with torch.no_grad():
        for _, m in batch_norm_layers(net):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    return net, [(x[:4], y[:4]), (x[4:], y[4:])]


# Beyond test_curvature's dense cases (which now run through this code too: BN, bn_fixed_affine,
# ghost without affine): ghost with affine and 2 chunks of 2 per batch, and BN without affine in a
# channels_last model.
DENSE = [("davidnet", "ghost", None, 2, False), ("simple", "bn_fixed_affine", None, 1, True)]


@pytest.mark.parametrize("model,norm,affine,splits,channels_last", DENSE)
def test_hvp_matches_dense_hessian(model, norm, affine, splits, channels_last):
    net, batches = tiny(model, norm, affine, splits, channels_last)
    H = dense_hessian(net, batches, LOSS, "batch")  # torch.func: F.batch_norm, not this code
    V = torch.randn(2, H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    tol = dict(rtol=1e-9, atol=1e-11 * H.abs().max().item())
    for cache in (False, True):
        op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", cache_graphs=cache)
        torch.testing.assert_close(op.matmat(V), V @ H, **tol)
    with generic_batch_norm():  # and PyTorch's own double backward agrees
        op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", cache_graphs=False)
        torch.testing.assert_close(op.matmat(V), V @ H, **tol)


def test_ghost_splits_one_is_plain_bn():
    m = GhostBatchNorm(3, splits=1).double()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    with bn_mode(m, "batch"):
        y = m(x)
    assert y.grad_fn.name() == "_BatchStatsNormBackward"
    torch.testing.assert_close(y, reference(x, m.weight, m.bias), rtol=0, atol=1e-12)


def test_nested_bn_modes_each_get_their_own_forward():
    net, batches = tiny("davidnet", "bn", None)
    x = batches[0][0]
    close = functools.partial(torch.testing.assert_close, rtol=0, atol=1e-12)
    with torch.no_grad():
        with bn_mode(net, "running"):
            running = net(x)
        with bn_mode(net, "batch"):
            batch = net(x)
        assert not torch.allclose(running, batch)
        for outer, inner, ref_outer, ref_inner in (("batch", "running", batch, running),
                                                   ("running", "batch", running, batch)):
            with bn_mode(net, outer):
                with bn_mode(net, inner):
                    close(net(x), ref_inner)
                close(net(x), ref_outer)
    assert all("forward" not in m.__dict__ for _, m in batch_norm_layers(net))
    # An instance-level forward that bn_mode did not set is left alone, and kept afterwards.
    m = nn.BatchNorm2d(2).double()
    m.forward = lambda t: t * 3
    for mode in ("batch", "running"):
        with bn_mode(m, mode):
            close(m(torch.ones(2, 2, 1, 1, dtype=torch.float64)), torch.full((2, 2, 1, 1), 3.0, dtype=torch.float64))
    assert "forward" in m.__dict__
