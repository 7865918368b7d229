"""Which weights are scale-invariant: detected, never assumed from a layer's name.

Two independent tests:

- From the log: scale invariance means ``<w, grad L(w)> = 0`` exactly (Euler's identity for a
  degree-0 homogeneous loss), so ``|cos(w, g)|`` stays at rounding level over the whole run. A
  non-invariant tensor has ``cos(w, g) = -lambda ||w|| / ||g||`` on average even at its own equilibrium
  (weight decay balances the radial gradient), so it sits orders of magnitude above rounding.
- On a checkpoint: rescale the tensor (each output channel by its own random factor in [1/2, 2])
  and see whether the training-mode loss on a fixed random batch changes. Per-channel factors test
  per-channel invariance, which implies whole-tensor invariance.
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
DEFAULT_LOSS_TOL = 1e-4  # relative loss change under rescaling that still counts as invariant


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


@torch.no_grad()
def rescale_loss_change(model: nn.Module, *, batch: int = 32, image_size: int = 32, seed: int = 0,
                        num_classes: int = 10) -> dict[str, float]:
    """For every parameter: relative change of the training-mode loss when it is rescaled.

    Uses a copy of `model` (nothing of the original changes, BN running statistics included) and a
    fixed random batch: invariance is an algebraic property, so real images are not needed. BN
    layers use batch statistics, as during training (what the optimizer's loss is).
    """
    model = copy.deepcopy(model).float().cpu()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    out: dict[str, float] = {}
    with bn_mode(model, resolve_bn_mode(model, None)):
        base = F.cross_entropy(model(x), y).item()
        for name, p in model.named_parameters():
            shape = (p.shape[0],) + (1,) * (p.dim() - 1) if p.dim() >= 2 else (1,)
            factor = torch.exp(torch.empty(shape).uniform_(-np.log(2), np.log(2), generator=gen))
            saved = p.detach().clone()
            p.mul_(factor)
            out[name] = abs(F.cross_entropy(model(x), y).item() - base) / max(abs(base), 1e-12)
            p.copy_(saved)
    return out
