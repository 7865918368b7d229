"""Batch norm with batch statistics whose backward is cheap to differentiate again (for HVPs).

`batch_norm_batch_stats(x, weight, bias, eps)` is exactly ``F.batch_norm(x, None, None, weight,
bias, training=True, eps=eps)`` (no running statistics read or written), value and derivatives of
every order. It exists for Hessian-vector products by double backward: PyTorch differentiates its
batch-norm backward with a generic formula (``batchnorm_double_backward``, about a third of an HVP
of a BN DavidNet on CPU); here the backward of the backward is written out for this case.

Per channel, with M elements, x̂ = (x - μ)·r, r = (σ² + eps)^-½, γ the weight (1 without affine):

    first backward    dx = γ r (dy - mean(dy) - x̂ mean(dy x̂)),  dγ = Σ dy x̂,  dβ = Σ dy
    second backward   (grads a, bγ, bβ on dx, dγ, dβ)
      d/d dy = γ r (a - mean(a) - x̂ mean(a x̂)) + bγ x̂ + bβ          (BN's backward applied to a)
      d/dγ   = r (Σ a dy - M mean(a) mean(dy) - M mean(a x̂) mean(dy x̂))
      d/dx   = r (G - mean(G) - x̂ (mean(G x̂) + γ d/dγ / M)),
               G = -γ r (mean(dy x̂) a + mean(a x̂) dy) + bγ dy

The per-channel means of G and G x̂ follow from the other reductions, so the second backward costs
three fused reductions (two ``native_batch_norm_backward`` calls) and two outputs that are per-channel
linear combinations of a, dy and x: no generic autograd formula, no x̂ stored.

Both backward passes run PyTorch's fused kernels when no graph is being built. A third derivative
(create_graph through the second backward) recomputes the statistics from x with differentiable ops
and goes through the same formulas, so it is exact too (just not fast). Under ``torch.func``
transforms `batch_norm_batch_stats` is plain ``F.batch_norm``: the dense-Hessian ground truth never
goes through this code.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_native_backward = torch.ops.aten.native_batch_norm_backward.default
_use_generic = False


@contextmanager
def generic_batch_norm(enabled: bool = True) -> Iterator[None]:
    """While active, `batch_norm_batch_stats` is plain ``F.batch_norm`` (PyTorch's generic double
    backward): lets a benchmark time both paths side by side in one process."""
    global _use_generic
    previous, _use_generic = _use_generic, enabled
    try:
        yield
    finally:
        _use_generic = previous


def batch_norm_batch_stats(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                           eps: float) -> torch.Tensor:
    """``F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)``, with a cheap double backward."""
    if (_use_generic or torch._C._are_functorch_transforms_active() or not torch.is_grad_enabled()
            or not any(t is not None and t.requires_grad for t in (x, weight, bias))):
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    if x.dim() < 2 or x.numel() <= x.shape[1]:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)  # raises its usual error
    return _BatchStatsNorm.apply(x, weight, bias, eps)


def _dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _view(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-channel (C,) tensor as a broadcastable (1, C, 1, ...) view."""
    return t.view((1, -1) + (1,) * (x.dim() - 2))


def _fused_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                    invstd: torch.Tensor, eps: float, mask: list[bool]) -> tuple[torch.Tensor, ...]:
    """PyTorch's fused BN backward at the statistics (mean, invstd): (γ-scaled dx, Σ grad x̂, Σ grad).

    Without a weight it is given ones (the same function, γ = 1): the CUDA kernel returns empty
    Σ grad x̂ and Σ grad when it has no weight.
    """
    w = weight if weight is not None else torch.ones_like(mean)
    return _native_backward(grad, x, w, None, None, mean, invstd, True, eps, mask)


def _like(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`t` in `x`'s memory format (the fused kernels want grad and input laid out alike)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


class _BatchStatsNorm(torch.autograd.Function):
    """y = γ x̂ + β with batch statistics; the backward is `_BatchStatsNormGrad` when it is differentiated."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,  # noqa: ANN001
                eps: float) -> torch.Tensor:
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # noqa: ANN001, ANN205
        x, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        dy = _like(x, dy)
        if torch.is_grad_enabled():  # create_graph: a backward whose own backward is written out
            dx, dw, db = _BatchStatsNormGrad.apply(dy, x, weight, mean, invstd, ctx.eps)
        else:
            dx, dw, db = _fused_backward(dy, x, weight, mean, invstd, ctx.eps, [need[0], need[1], need[2]])
        return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None, None)


class _BatchStatsNormGrad(torch.autograd.Function):
    """(dy, x, γ) -> (dx, Σ dy x̂, Σ dy): BN's first backward, differentiated by the formulas above."""

    @staticmethod
    def forward(ctx, dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,  # noqa: ANN001
                mean: torch.Tensor, invstd: torch.Tensor, eps: float):  # noqa: ANN205
        dx, sum_dy_xhat, sum_dy = _fused_backward(dy, x, weight, mean, invstd, eps, [True, True, True])
        ctx.save_for_backward(dy, x, weight, mean, invstd, sum_dy, sum_dy_xhat)
        ctx.eps = eps
        ctx.set_materialize_grads(False)
        return dx, sum_dy_xhat, sum_dy

    @staticmethod
    def backward(ctx, a: torch.Tensor | None, b_w: torch.Tensor | None,  # noqa: ANN001, ANN205
                 b_b: torch.Tensor | None):
        dy, x, weight, mean, invstd, sum_dy, sum_dy_xhat = ctx.saved_tensors
        eps = ctx.eps
        need_dy, need_x, need_w = ctx.needs_input_grad[:3]
        dims = _dims(x)
        m = x.numel() // x.shape[1]
        if torch.is_grad_enabled():
            # Third derivatives: the statistics as differentiable functions of x and dy.
            var, mean = torch.var_mean(x, dims, unbiased=False)
            invstd = torch.rsqrt(var + eps)
            sum_dy = dy.sum(dims)
            sum_dy_xhat = (dy * (x - _view(x, mean)) * _view(x, invstd)).sum(dims)
            return _second_backward(dy, x, weight, mean, invstd, sum_dy, sum_dy_xhat, a, b_w, b_b, m,
                                    need_dy, need_x, need_w, fused=False, eps=eps)
        return _second_backward(dy, x, weight, mean, invstd, sum_dy, sum_dy_xhat, a, b_w, b_b, m,
                                need_dy, need_x, need_w, fused=True, eps=eps)


def _second_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
                     invstd: torch.Tensor, sum_dy: torch.Tensor, sum_dy_xhat: torch.Tensor,
                     a: torch.Tensor | None, b_w: torch.Tensor | None, b_b: torch.Tensor | None, m: int,
                     need_dy: bool, need_x: bool, need_w: bool, *, fused: bool, eps: float,
                     ) -> tuple[torch.Tensor | None, ...]:
    """Gradients on (dy, x, weight) of <a, dx> + <b_w, dγ> + <b_b, dβ> (module docstring's formulas).

    fused: use the in-place / fused-kernel forms (no graph is built); otherwise differentiable ops only.
    """
    dims = _dims(x)
    r = invstd
    gamma = weight if weight is not None else torch.ones_like(r)
    gr = gamma * r
    mean_dy = sum_dy / m
    mean_dyx = sum_dy_xhat / m
    zero = torch.zeros_like(r)
    if a is not None:
        a = _like(x, a)
        if fused:
            # One fused pass: γ r (a - mean(a) - x̂ mean(a x̂)) (= the dy part), Σ a x̂, Σ a.
            gdy_a, sum_ax, sum_a = _fused_backward(a, x, weight, mean, r, eps, [need_dy, True, True])
            # Σ a dy, by the same kernel with "statistics" (0, 1) so that its x̂ is dy itself.
            if need_x or need_w:
                _, sum_ady, _ = _fused_backward(a, dy, None, zero, torch.ones_like(r), eps, [False, True, False])
        else:
            xhat = (x - _view(x, mean)) * _view(x, r)
            sum_a = a.sum(dims)
            sum_ax = (a * xhat).sum(dims)
            sum_ady = (a * dy).sum(dims)
            gdy_a = _view(x, gr) * (a - _view(x, sum_a / m) - xhat * _view(x, sum_ax / m))
        mean_a, mean_ax = sum_a / m, sum_ax / m
    else:
        gdy_a = None
        mean_a = mean_ax = sum_ady = zero
    bw = b_w if b_w is not None else zero
    bb = b_b if b_b is not None else zero

    g_dy = None
    if need_dy:
        # + bγ x̂ + bβ, written on x: bγ r x + (bβ - bγ r μ).
        cx, c0 = bw * r, bb - bw * r * mean
        if gdy_a is None:
            g_dy = torch.addcmul(_view(x, c0), x, _view(x, cx))
        elif b_w is None and b_b is None:
            g_dy = gdy_a
        elif fused:
            g_dy = gdy_a.addcmul_(x, _view(x, cx)).add_(_view(x, c0))
        else:
            g_dy = gdy_a + _view(x, cx) * x + _view(x, c0)

    # K / γ: the derivative in r at fixed x̂, divided by γ (also the weight's gradient over r).
    k = sum_ady - m * mean_a * mean_dy - m * mean_ax * mean_dyx
    g_w = r * k if need_w and weight is not None else None

    g_x = None
    if need_x:
        c1 = -gr * mean_dyx  # G = c1 a + c2 dy
        c2 = bw - gr * mean_ax
        mean_g = c1 * mean_a + c2 * mean_dy
        mean_gx = c1 * mean_ax + c2 * mean_dyx
        cxh = -r * (mean_gx + r * gamma * k / m)  # coefficient of x̂
        # r (c1 a + c2 dy - mean_g) + cxh x̂, with x̂ = r (x - μ) folded into the constants.
        cx, c0 = cxh * r, -r * mean_g - cxh * r * mean
        if fused:
            g_x = torch.addcmul(_view(x, c0), x, _view(x, cx))
            if a is not None:
                g_x.addcmul_(a, _view(x, r * c1))
            g_x.addcmul_(dy, _view(x, r * c2))
        else:
            g_x = _view(x, c0) + _view(x, cx) * x + _view(x, r * c2) * dy
            if a is not None:
                g_x = g_x + _view(x, r * c1) * a
    return g_dy, g_x, g_w, None, None, None
