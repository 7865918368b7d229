"""Explicit choice of which statistics BN layers use while a model is analysed.

The Hessian of a BN network differs by orders of magnitude between batch statistics (as in
training) and running statistics (eval) on the same weights (docs/background.md, "Curvature"), so every analysis names
its mode, and nothing it computes may change the model. `bn_mode` guarantees both:

- ``"batch"``: BN layers normalise with each batch's statistics, and their running buffers are
  neither read nor written (``track_running_stats`` is switched off for the duration). This also
  makes BN usable inside ``torch.func`` transforms, which reject in-place buffer updates. BN layers
  (plain and ghost) compute it with `bnlab.bnfunc.batch_norm_batch_stats`: the same function as
  ``F.batch_norm(training=True)``, with a double backward written for it (HVPs ~20% cheaper on a
  width-16 DavidNet, see that module); under ``torch.func`` transforms it is ``F.batch_norm`` itself.
- ``"running"``: the whole model is in eval mode; BN is a fixed affine map, and is computed as one
  (x * scale + shift, from the running statistics and the affine parameters) rather than through
  ``F.batch_norm``: the same function, but its double backward is a few multiplications instead of
  the generic batch-norm double-backward formula (measured: HVPs ~15% cheaper on a width-16 DavidNet).

The previous training flags and ``track_running_stats`` are restored on exit.
"""
from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .bnfunc import batch_norm_batch_stats
from .errors import BnlabError
from .norms import GhostBatchNorm, batch_norm_layers

BN_MODES = ("batch", "running")


def has_batch_stats(model: nn.Module) -> bool:
    """True if some layer of `model` normalises with batch statistics (so a BN mode is a choice)."""
    return bool(batch_norm_layers(model))


def resolve_bn_mode(model: nn.Module, mode: str | None) -> str:
    """The BN mode an analysis of `model` uses: `mode`, the default "batch", or "none".

    A model without batch-statistics layers (no-BN, frozen BN) has no choice: returns "none",
    and an explicitly requested mode is refused with a clear error rather than silently ignored.
    """
    if not has_batch_stats(model):
        if mode not in (None, "none"):
            raise BnlabError(f"--bn-mode {mode} is impossible: this model has no batch-norm layers "
                             "(no-BN or frozen BN); leave --bn-mode out")
        return "none"
    if mode is None:
        return "batch"
    if mode not in BN_MODES:
        raise BnlabError(f"unknown BN mode {mode!r}; choose one of {', '.join(BN_MODES)}")
    return mode


@contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Put `model` in BN mode `mode` ("batch", "running" or "none") for the duration."""
    if mode not in (*BN_MODES, "none"):
        raise BnlabError(f"unknown BN mode {mode!r}; choose one of {', '.join(BN_MODES)}")
    training = {m: m.training for m in model.modules()}
    tracking = {m: m.track_running_stats for _, m in batch_norm_layers(model)}
    saved: dict[nn.Module, object] = {}  # BN layer -> its instance-level forward before (or _UNSET)
    try:
        if mode == "batch":
            model.train()
            for m in tracking:
                m.track_running_stats = False
        else:
            model.eval()
        for m in tracking:
            if mode == "batch":
                forward = _BATCH_FORWARDS.get(type(m))
            elif mode == "running" and getattr(m, "running_var", None) is not None:
                forward = _running_affine
            else:
                forward = None
            _set_forward(m, forward, saved)
        yield model
    finally:
        for m, previous in saved.items():
            if previous is _UNSET:
                m.__dict__.pop("forward", None)
            else:
                m.forward = previous
        for m, flag in training.items():
            m.training = flag
        for m, flag in tracking.items():
            m.track_running_stats = flag


_UNSET = object()


def _set_forward(m: nn.Module, forward: Callable[..., torch.Tensor] | None, saved: dict[nn.Module, object]) -> None:
    """Give `m` the instance-level `forward` (None: its class's), remembering what it had.

    Replaces only bn_mode's own forwards, so nested bn_mode calls each get their mode (an inner
    "running" inside "batch" must not keep the batch-statistics forward); an instance forward set
    by anyone else is left alone.
    """
    previous = m.__dict__.get("forward", _UNSET)
    if previous is not _UNSET and getattr(previous, "__func__", None) not in _OWN_FORWARDS:
        return
    saved.setdefault(m, previous)
    if forward is None:
        m.__dict__.pop("forward", None)
    else:
        m.forward = types.MethodType(forward, m)


def _running_affine(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm written as the affine map it is (see the module docstring)."""
    scale = torch.rsqrt(self.running_var + self.eps)
    shift = -self.running_mean * scale
    if self.affine:
        scale = scale * self.weight
        shift = shift * self.weight + self.bias
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.to(x.dtype).view(shape) + shift.to(x.dtype).view(shape)


def _batch_stats(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """nn.BatchNormNd in training mode without running statistics (see the module docstring)."""
    self._check_input_dim(x)
    return batch_norm_batch_stats(x, self.weight, self.bias, self.eps)


def _ghost_batch_stats(self: GhostBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """GhostBatchNorm.forward without running statistics, through `batch_norm_batch_stats`."""
    self._check_input_dim(x)
    s = self.splits
    if s == 1:
        return batch_norm_batch_stats(x, self.weight, self.bias, self.eps)
    n, c, h, w = x.shape
    if n % s:
        raise BnlabError(f"ghost batch norm with {s} splits needs a batch size divisible by {s}, got {n}")
    # Statistics per (chunk, channel): the same (N/s, s*C, H, W) view as GhostBatchNorm, with the
    # affine parameters repeated per chunk (one fused normalise-and-scale instead of two passes).
    xs = x.reshape(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
    weight = self.weight.repeat(s) if self.affine else None
    bias = self.bias.repeat(s) if self.affine else None
    y = batch_norm_batch_stats(xs, weight, bias, self.eps)
    return y.reshape(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)


# Exact types only: a subclass may have its own forward, which then runs unchanged.
_BATCH_FORWARDS = {nn.BatchNorm1d: _batch_stats, nn.BatchNorm2d: _batch_stats, nn.BatchNorm3d: _batch_stats,
                   GhostBatchNorm: _ghost_batch_stats}
_OWN_FORWARDS = (_running_affine, _batch_stats, _ghost_batch_stats)
