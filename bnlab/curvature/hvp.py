"""Hessian-vector products of one batch's loss: the two autodiff routes.

- ``double_backward`` (reverse-over-reverse, Pearlmutter): one forward and one backward with
  ``create_graph=True`` build the gradient's graph; each vector then costs one more backward
  through it. The graph is reused for every vector of a block (matmat), and ``GraphCache`` can
  keep it across calls (memory O(N) instead of O(batch)).
- ``func`` (forward-over-reverse): ``torch.func.jvp`` of ``torch.func.grad`` through
  ``functional_call``, ``vmap``-ed over the vectors of a block.
- ``func_compiled``: the same product through ``torch.compile`` (opt-in; compiled at the first
  product of each batch shape and block size, minutes on a CPU; benchmarks/hvp_speed.py measures
  it). Double backward cannot be compiled (AOTAutograd's backward is not differentiable twice).

Both run the forward inside ``bn_mode`` (set by the caller), so BN either uses batch statistics
without touching its running buffers, or is in eval mode. In batch mode the double-backward route
differentiates BN's backward with `bnlab.bnfunc`'s written-out formula (``func`` uses PyTorch's).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HVP_METHODS = ("double_backward", "func", "func_compiled")
_compiled: list[Callable[..., torch.Tensor]] = []  # func_block through torch.compile, made at first use


def batch_gradient(model: nn.Module, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   loss_fn: LossFn, weight: float, create_graph: bool) -> torch.Tensor:
    """Flat gradient of weight * loss_fn(model(x), y) w.r.t. `params` (graph kept if create_graph)."""
    loss = loss_fn(model(x), y) * weight
    g = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return torch.cat([t.reshape(-1) for t in g])


def double_backward_block(gflat: torch.Tensor, params: Sequence[torch.Tensor], V: torch.Tensor,
                          retain_last: bool) -> torch.Tensor:
    """H V for the rows of V (m, dim) by backward passes through the gradient graph `gflat`."""
    m = V.shape[0]
    if not gflat.requires_grad:  # loss linear in the parameters: zero Hessian
        return torch.zeros_like(V)
    out = []
    for j in range(m):  # one backward per vector; the graph's forward work is shared
        hv = torch.autograd.grad(gflat, params, grad_outputs=V[j], retain_graph=retain_last or j < m - 1,
                                 allow_unused=True, materialize_grads=True)
        out.append(torch.cat([t.reshape(-1) for t in hv]))
    return torch.stack(out)


def func_block(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor],
               split: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
               loss_fn: LossFn, weight: float, V: torch.Tensor) -> torch.Tensor:
    """H V for the rows of V (m, dim) by forward-over-reverse, vmapped over the rows."""
    primals = {n: p.detach() for n, p in zip(names, params)}

    def loss_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(model, p, (x,), strict=False), y) * weight

    grad_fn = grad(loss_of)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        tangents = dict(zip(names, split(v)))
        _, hv = jvp(grad_fn, (primals,), (tangents,))
        return torch.cat([hv[n].reshape(-1) for n in names])

    # The parameters outside the selection enter through the model itself; no_grad keeps the outer
    # autograd out of it (the transforms still differentiate), so the result is a plain tensor.
    with torch.no_grad():
        if V.shape[0] == 1:
            return hvp(V[0])[None]
        return vmap(hvp)(V)


def compiled_func_block(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor],
                        split: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
                        loss_fn: LossFn, weight: float, V: torch.Tensor) -> torch.Tensor:
    """`func_block` compiled by torch.compile (static shapes: a new batch shape or block size recompiles)."""
    if not _compiled:
        _compiled.append(torch.compile(func_block, dynamic=False))
    return _compiled[0](model, names, params, split, x, y, loss_fn, weight, V)
