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
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bnmode import bn_mode, resolve_bn_mode

# Median |cos(w, g)| below this counts as zero. Measured (DavidNet w16, fp32): BN-preceded convs
# 1e-7..1e-6; BN gammas 1e-3..2e-1 -- a gamma feeding a conv+BN while its beta is still ~0 is *nearly*
# invariant (ReLU(gamma x) is homogeneous) and sits at ~1e-3, so the threshold stays two decades below.
# bf16-autocast runs (GPU) round the identity to ~1e-3: pass a larger tolerance (--cos-tol) for those.
DEFAULT_COS_TOL = 1e-4


# A tensor that fails the exact test can still move on the sphere to within a few per cent: BN's eps
# breaks invariance where a channel's pre-BN variance is only ~100x eps (a fading residual branch gives
# |cos| ~ 5e-4), and a gamma feeding ReLU -> conv -> BN with beta ~ 0 is nearly homogeneous. Such a
# tensor is "approximately" invariant when its median |cos| < 1e-2 and |cos| / rel_step < 0.1 (the
# radial gradient below a tenth of the step); the theory is applied to it and it is flagged as such.
APPROX_COS_TOL = 1e-2
APPROX_DRIFT_TOL = 0.1


@dataclass
class CosStats:
    median_abs_cos: float
    p90_abs_cos: float
    invariant: bool
    approximate: bool = False  # not exactly invariant, but spherical to within APPROX_DRIFT_TOL


# ... and the radial gradient must be negligible against the step itself: |cos| / rel_step below this.
# 2 |cos| ||w|| / (lr ||g||) is the Pythagorean residual of plain SGD, so this bounds how far the norm
# dynamics can deviate from the scale-invariant theory (catches the nearly-invariant gammas early on).
DEFAULT_DRIFT_TOL = 1e-2


def cos_stats(cos_wg: np.ndarray, rel_step: np.ndarray | None = None, tol: float = DEFAULT_COS_TOL,
              drift_tol: float = DEFAULT_DRIFT_TOL) -> CosStats:
    """Summary of one tensor's logged cos(w, g); invariant if the median |cos| is below `tol` and the
    median |cos| / rel_step below `drift_tol`.

    Medians (not maxima) so that one step of a diverging or restarted run does not decide it; the
    90th percentile is reported so a reader can see how clean the zero is.
    """
    ok = np.isfinite(cos_wg)
    a = np.abs(cos_wg[ok])
    if a.size == 0:
        return CosStats(float("nan"), float("nan"), False)
    med = float(np.median(a))
    invariant = med < tol
    approximate = False
    if rel_step is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            drift = np.abs(cos_wg) / rel_step
        drift = drift[np.isfinite(drift)]
        drift_med = float(np.median(drift)) if drift.size else float("inf")
        invariant = invariant and drift_med < drift_tol
        approximate = not invariant and med < APPROX_COS_TOL and drift_med < APPROX_DRIFT_TOL
    return CosStats(med, float(np.quantile(a, 0.9)), bool(invariant), bool(approximate))


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
                denom = float(p.detach().norm() * g.norm()) if g is not None else 0.0
                cos[b, i] = abs(float((p.detach() * g).sum())) / denom if denom > 0 else np.nan
    with warnings.catch_warnings():  # a zero tensor (BN bias at init) has no direction: NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        median = np.nanmedian(cos, axis=0)
    return dict(zip(names, median.tolist()))
