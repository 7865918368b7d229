"""The dense Hessian by `torch.func.hessian`: ground truth for tiny nets (tests, sanity checks).

Independent of the HVP code paths: the loss is a function of one flat parameter vector through
`functional_call`, differentiated twice by torch.func as ``jacfwd(grad(f))``. Memory O(dim²) — tiny
models only. Not ``torch.func.hessian`` (= ``jacfwd(jacrev(f))``): with BN in batch-statistics mode
and affine parameters, torch 2.13's ``jacrev`` path returned a Hessian off by ~1e-2 relative,
while ``jacfwd(grad)``, reverse-over-reverse and central finite differences all agree.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacfwd

from ..bnmode import bn_mode as bn_mode_ctx
from .hvp import LossFn
from .params import FlatLayout, select_parameters


def dense_hessian(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: LossFn,
                  bn_mode: str, params: Sequence[str] | None = None, scale: float = 1.0,
                  weight_decay: float = 0.0) -> torch.Tensor:
    """(dim, dim) Hessian of scale·[Σ_b (n_b/N) loss_b + wd/2 ‖θ‖²] over the selected parameters."""
    named = select_parameters(model, params)
    layout = FlatLayout(named)
    theta = layout.flatten([p.detach() for _, p in named])
    batches = list(batches)
    n_total = sum(len(y) for _, y in batches)

    def total_loss(flat: torch.Tensor) -> torch.Tensor:
        p = layout.unflatten(flat)
        out = sum(loss_fn(functional_call(model, p, (x,), strict=False), y) * (len(y) / n_total) for x, y in batches)
        return scale * (out + 0.5 * weight_decay * (flat ** 2).sum())

    with bn_mode_ctx(model, bn_mode):
        H = jacfwd(grad(total_loss))(theta)
    return H.detach().to(torch.float64)
