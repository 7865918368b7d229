"""Normalisation layers of the DavidNet variants.

`make_norm(kind, channels)` builds one of:

- ``bn``: BatchNorm2d with learnable affine (DavidNet default).
- ``bn_fixed_affine``: BatchNorm2d with gamma=1, beta=0 frozen (the batch-norm post's nets).
- ``ghost``: ghost batch norm, statistics over ``splits`` equal chunks of the batch.
- ``frozen``: a fixed per-channel affine map ``(x - mean) / sqrt(var + eps) * w + b`` whose mean/var
  are buffers set once (from training data at initialisation, or from a BN layer's running stats
  by ``bnlab freeze``) and never updated: the output of an example never depends on its batch.
- ``none``: identity (no-BN nets; see ``models`` for the init used then).

Every layer that normalises with batch statistics is a ``torch.nn.modules.batchnorm._BatchNorm``, so
``bnlab.bnmode`` can switch them all between batch and running statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import BnlabError

NORMS = ("bn", "bn_fixed_affine", "ghost", "frozen", "none")
# Affine default per norm kind; `bn_fixed_affine` is by definition without learnable affine.
DEFAULT_AFFINE = {"bn": True, "bn_fixed_affine": False, "ghost": True, "frozen": True, "none": False}


class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from `splits` equal chunks of the batch.

    Running statistics are the average over chunks, so eval mode matches plain BN.
    Implemented as one fused batch_norm call over a (N/s, s*C, H, W) view, as in Page's code.
    """

    def __init__(self, num_features: int, splits: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        if splits < 1:
            raise BnlabError(f"ghost batch norm needs splits >= 1, got {splits}")
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.splits
        if n % s:
            raise BnlabError(f"ghost batch norm with {s} splits needs a batch size divisible by {s}, got {n}")
        xs = x.reshape(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
        update = self.track_running_stats
        rm = self.running_mean.repeat(s) if update else None
        rv = self.running_var.repeat(s) if update else None
        factor = 0.0
        if update:
            self.num_batches_tracked.add_(1)
            # momentum None = cumulative average, as in torch's BatchNorm (used by `bnlab freeze`)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        y = F.batch_norm(xs, rm, rv, None, None, True, factor, self.eps)
        if update:
            with torch.no_grad():
                self.running_mean.copy_(rm.view(s, c).mean(0))
                self.running_var.copy_(rv.view(s, c).mean(0))
        y = y.reshape(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", splits={self.splits}"


class FrozenNorm(nn.Module):
    """Fixed per-channel affine normalisation; statistics are buffers that training never touches.

    State-dict keys match BatchNorm2d (minus ``num_batches_tracked``) so a BN layer's running
    statistics and affine parameters load straight into it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        self._calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._calibrating:
            with torch.no_grad():
                self.running_mean.copy_(x.mean(dim=(0, 2, 3)))
                self.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
        scale = torch.rsqrt(self.running_var + self.eps)
        shift = -self.running_mean * scale
        if self.affine:
            shift = shift * self.weight + self.bias
            scale = scale * self.weight
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


@torch.no_grad()
def calibrate_frozen_norms(model: nn.Module, x: torch.Tensor) -> None:
    """Set every FrozenNorm's statistics from one forward pass of `x` (layer by layer, in order).

    Each layer is calibrated on the already-normalised output of the layers before it, so the
    network starts out behaving like BN on this batch. Other modules run in eval mode and are
    left untouched.
    """
    frozen = [m for m in model.modules() if isinstance(m, FrozenNorm)]
    if not frozen:
        return
    was_training = model.training
    model.eval()
    for m in frozen:
        m._calibrating = True
    try:
        model(x)
    finally:
        for m in frozen:
            m._calibrating = False
        model.train(was_training)


def make_norm(kind: str, channels: int, *, affine: bool | None = None, ghost_splits: int = 16,
              eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    """Build the normalisation layer `kind` for `channels` channels (see module docstring)."""
    if kind not in NORMS:
        raise BnlabError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
    if affine is None:
        affine = DEFAULT_AFFINE[kind]
    if kind == "bn_fixed_affine" and affine:
        raise BnlabError("norm 'bn_fixed_affine' has no learnable affine; use norm 'bn' for that")
    if kind == "bn" or kind == "bn_fixed_affine":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=affine)
    if kind == "ghost":
        return GhostBatchNorm(channels, ghost_splits, eps=eps, momentum=momentum, affine=affine)
    if kind == "frozen":
        return FrozenNorm(channels, eps=eps, affine=affine)
    return nn.Identity()


def freeze_scale(norm: nn.Module) -> nn.Module:
    """Fix a norm layer's scale γ at its value (1 at init): the parameter becomes a buffer of the same
    name, so state dicts keep their keys, the forward is unchanged, and neither the optimizer nor the
    analyses (which take `named_parameters`) see it. Layers without a learnable scale are left as they are."""
    weight = getattr(norm, "weight", None)
    if isinstance(weight, nn.Parameter):
        del norm.weight
        norm.register_buffer("weight", weight.detach().clone())
    return norm


def batch_norm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """All layers of `model` that normalise with batch statistics in training mode."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
