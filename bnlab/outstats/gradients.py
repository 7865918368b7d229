"""Output statistics of a model and their exact gradients w.r.t. all trainable parameters.

For fixed batches (the evaluation set of `bnlab hessian`), every requested statistic of every
chosen channel (see `moments` for what exactly is computed) and its gradient are accumulated
over the batches. Gradients are taken one statistic at a time with a retained graph (one
forward per batch, one backward per statistic), accumulated in float64. Nothing is written to
the model: no `.grad`, no running statistics (`bn_mode` guards BN buffers).

Under torch.distributed (every rank holding the same model and batches) each rank takes a
contiguous block of whole batches and the summed terms and gradients are all_reduced: the terms are
linear in per-batch quantities, so the sum is exact (up to rounding order).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .. import distributed
from ..bnmode import bn_mode
from ..errors import BnlabError
from ..progress import Progress
from .moments import MOMENTS, STATS, batch_terms, channel_count, channel_view, finalize
from .target import Target, forward_with_target

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


def trainable_parameters(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """All parameters in model order: the same flat layout as the curvature engine's vectors."""
    named = list(model.named_parameters())
    return [n for n, _ in named], [p for _, p in named]


@contextmanager
def grads_enabled(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """requires_grad on every parameter for the duration (a loaded model may have some off)."""
    flags = [p.requires_grad for p in params]
    try:
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@dataclass
class StatGradients:
    """Statistics `values` (S, C) and gradients `grads` (S, C, P) over the flat trainable parameters."""

    stats: tuple[str, ...]
    target: Target
    channels: list[int]
    values: torch.Tensor
    grads: torch.Tensor
    param_names: list[str]
    param_shapes: list[tuple[int, ...]]
    moments: str
    bn_mode: str
    num_samples: int
    num_batches: int
    extra: dict = field(default_factory=dict)

    def flat(self, stats: Sequence[str] | None = None) -> torch.Tensor:
        """Gradients as rows (K, P), in the order of `stats` (default: all, e.g. means, vars, skews)."""
        stats = self.stats if stats is None else tuple(stats)
        return torch.cat([self.grads[self.stats.index(s)] for s in stats])

    def labels(self, stats: Sequence[str] | None = None) -> list[str]:
        stats = self.stats if stats is None else tuple(stats)
        return [f"{s}[{c}]" for s in stats for c in self.channels]

    def of(self, stat: str) -> torch.Tensor:
        if stat not in self.stats:
            raise BnlabError(f"statistic {stat!r} was not computed (have {', '.join(self.stats)})")
        return self.grads[self.stats.index(stat)]


def check_stats(stats: Sequence[str]) -> tuple[str, ...]:
    stats = tuple(stats)
    bad = [s for s in stats if s not in STATS]
    if bad or not stats or len(set(stats)) != len(stats):
        raise BnlabError(f"--stats must be distinct names from {','.join(STATS)}, got {','.join(stats)}")
    return tuple(s for s in STATS if s in stats)  # canonical order: means, variances, skews


@torch.no_grad()
def _pooled_shift(model: nn.Module, batches: Batches, target: Target, group: object = None) -> torch.Tensor:
    total, count = None, 0
    for x, _ in batches:
        v = channel_view(forward_with_target(model, x, target)[1]).double()
        s = v.sum(dim=(0, 2))
        total = s if total is None else total + s
        count += channel_count(v)
    if group is not None:  # every rank holds at least one batch (see stat_gradients)
        both = distributed.all_reduce_sum(torch.cat([total, total.new_full((1,), float(count))]), group)
        total, count = both[:-1], both[-1]
    return total / count


def stat_gradients(model: nn.Module, batches: Batches, *, stats: Sequence[str] = ("mean",),
                   target: Target | None = None, moments: str = "per-batch", mode: str = "none",
                   quiet: bool = True, process_group: object = "auto") -> StatGradients:
    """Statistics of `target`'s output over `batches` and their gradients (see module docs).

    process_group: as for `HessianOperator` ("auto": shard when several ranks are initialised).
    With fewer batches than ranks every rank computes them all.
    """
    stats = check_stats(stats)
    target = target or Target()
    target.check(model)
    if moments not in MOMENTS:
        raise BnlabError(f"unknown --moments {moments!r}; choose one of {', '.join(MOMENTS)}")
    if not batches:
        raise BnlabError("no batches to compute statistics on")
    names, params = trainable_parameters(model)
    if not params:
        raise BnlabError("the model has no trainable parameters")
    n_total = sum(int(y.shape[0]) for _, y in batches)
    dim = sum(p.numel() for p in params)
    group = distributed.resolve_group(process_group)
    if group is not None and len(batches) < dist.get_world_size(group):
        group = None
    local = batches if group is None else [batches[i] for i in distributed.shard_range(
        len(batches), dist.get_rank(group), dist.get_world_size(group))]
    terms_sum = grads = None
    progress = Progress(len(local), "output-statistic gradients", quiet=quiet)
    with bn_mode(model, mode), grads_enabled(params):
        shift = _pooled_shift(model, local, target, group) if moments == "pooled" else None
        for x, y in local:
            _, out = forward_with_target(model, x, target)
            terms = batch_terms(out, stats, moments, weight=y.shape[0] / n_total, shift=shift)
            flat_terms = terms.reshape(-1)
            if grads is None:
                grads = torch.zeros(flat_terms.numel(), dim, dtype=torch.float64, device=out.device)
                terms_sum = torch.zeros(terms.shape, dtype=torch.float64, device=out.device)
            for k in range(flat_terms.numel()):
                gs = torch.autograd.grad(flat_terms[k], params, retain_graph=k + 1 < flat_terms.numel(),
                                         allow_unused=True)
                grads[k] += torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                       for g, p in zip(gs, params)]).double()
            terms_sum += terms.detach().double()
            progress.update()
    progress.close()
    if group is not None:
        distributed.all_reduce_sum(grads, group)
        distributed.all_reduce_sum(terms_sum, group)
    n_terms, n_channels = terms_sum.shape
    values, g = finalize(terms_sum, grads.view(n_terms, n_channels, dim), stats, moments, shift)
    channels = list(target.channels) if target.channels is not None else list(range(n_channels))
    return StatGradients(stats=stats, target=target, channels=channels, values=values, grads=g,
                         param_names=names, param_shapes=[tuple(p.shape) for p in params],
                         moments=moments, bn_mode=mode, num_samples=n_total, num_batches=len(batches))
