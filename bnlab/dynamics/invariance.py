"""Which weights are scale-invariant: detected, never assumed from a layer's name.

Two independent tests:

- From the log: scale invariance means ``<w, grad L(w)> = 0`` exactly (Euler's identity for a
  degree-0 homogeneous loss), so ``|cos(w, g)|`` stays at rounding level over the whole run. A
  non-invariant tensor has ``cos(w, g) = -lambda ||w|| / ||g||`` on average even at its own equilibrium
  (weight decay balances the radial gradient), so it sits orders of magnitude above rounding.
- On a checkpoint (`euler_cos`): the same identity evaluated in float64 on random batches, i.e. the
  derivative of the loss along the rescaling direction. Reported beside the log's verdict; the log
  decides, because it covers the whole run while a checkpoint can hold eps-degraded (dead) channels.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bnmode import bn_mode, resolve_bn_mode

# Median |cos(w, g)| below this counts as zero: fp32 rounding gives ~1e-7..1e-5, bf16 autocast ~1e-3
# at worst, a non-invariant tensor at its weight-decay equilibrium lambda ||w|| / ||g|| ~ 1e-2.
DEFAULT_COS_TOL = 2e-3


@dataclass
class CosStats:
    median_abs_cos: float
    p90_abs_cos: float
    invariant: bool


def cos_stats(cos_wg: np.ndarray, tol: float = DEFAULT_COS_TOL) -> CosStats:
    """Summary of one tensor's logged cos(w, g); invariant if the median |cos| is below `tol`.

    The median (not the max) so that one step of a diverging or restarted run does not decide it;
    the 90th percentile is reported so a reader can see how clean the zero is.
    """
    a = np.abs(cos_wg[np.isfinite(cos_wg)])
    if a.size == 0:
        return CosStats(float("nan"), float("nan"), False)
    med = float(np.median(a))
    return CosStats(med, float(np.quantile(a, 0.9)), med < tol)


def euler_cos(model: nn.Module, *, batches: int = 3, batch: int = 32, image_size: int = 32, seed: int = 0,
              num_classes: int = 10) -> dict[str, float]:
    """For every parameter of a checkpointed model: median over random batches of |cos(w, grad L)|, in float64.

    Euler's identity makes this exactly 0 for a scale-invariant tensor up to BN's eps (which breaks
    invariance where a channel's pre-BN variance is not >> eps, e.g. dead channels). Uses a float64
    copy of `model` (the original and its BN running statistics are untouched) and random inputs:
    invariance is an algebraic property of the network, so real images are not needed. BN uses
    batch statistics, as in training (the loss the optimizer saw).
    """
    model = copy.deepcopy(model).double().cpu()
    gen = torch.Generator().manual_seed(seed)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    cos = np.zeros((batches, len(params)))
    with bn_mode(model, resolve_bn_mode(model, None)):
        for b in range(batches):
            x = torch.randn(batch, 3, image_size, image_size, generator=gen, dtype=torch.float64)
            y = torch.randint(0, num_classes, (batch,), generator=gen)
            grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, allow_unused=True)
            for i, (p, g) in enumerate(zip(params, grads)):
                denom = float(p.norm() * g.norm()) if g is not None else 0.0
                cos[b, i] = abs(float((p * g).sum())) / denom if denom > 0 else np.nan
    return dict(zip(names, np.nanmedian(cos, axis=0).tolist()))
