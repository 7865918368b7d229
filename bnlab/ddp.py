"""The model side of data-parallel training: which function BN computes when a batch is split over ranks.

Each of W ranks holds rows [r·B/W, (r+1)·B/W) of the global batch of B (`bnlab.data.train_batches`
with `shard`). BN then normalises either

- with its rank's rows (default, what DDP does): exactly ghost BN with W splits of the global batch
  (`GhostBatchNorm`'s chunk r is the same rows). A ghost-BN model of s splits keeps s/W splits per
  rank, so it computes the same function as one process (s must be divisible by W); or
- with statistics of the whole global batch (`sync_bn`, `SyncBatchNorm2d`): the same function as
  one process. torch's own SyncBatchNorm runs on GPUs only; this one runs on any backend (gloo on
  CPUs, NCCL on GPUs) with two small all_reduces per layer forward and two in backward.

Running statistics: with per-rank BN each rank updates its buffers from its own rows. The update is
affine in the buffers with the same coefficients on every rank, so averaging the ranks' buffers
(`average_running_stats`, before every evaluation and checkpoint) gives exactly the average over
chunks that ghost BN keeps. With sync BN every rank holds the same buffers already.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import distributed
from .config import TrainConfig
from .errors import BnlabError
from .norms import GhostBatchNorm


class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x, differentiable: the gradient of every rank's x is Σ_ranks of the gradients of y."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(x.clone(memory_format=torch.contiguous_format))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(grad.clone(memory_format=torch.contiguous_format))


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return _SumOverRanks.apply(x)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks.

    Same parameters, buffers and state-dict keys as BatchNorm2d (checkpoints load into plain BN).
    Outside a process group of several ranks, or in eval mode, it is BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.active()):
            return super().forward(x)
        out_dtype = x.dtype
        if x.dtype not in (torch.float32, torch.float64):  # bf16 under autocast: statistics in fp32, as BN
            x = x.float()
        c = x.shape[1]
        # Differentiable sums (their backward all_reduces the gradients), two passes for accuracy:
        # the mean first, then the variance about it.
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.new_full((1,), x.numel() / c)])
        total = _sum_over_ranks(local)
        n = total[c].detach()
        mean = total[:c] / n
        xc = x - mean.view(1, -1, 1, 1)
        var = _sum_over_ranks((xc * xc).sum(dim=(0, 2, 3))) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)  # unbiased, as BN
        y = xc * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(out_dtype)


def check_split(config: TrainConfig, world: int) -> None:
    """Refuse (one line) a run that cannot be split over `world` ranks as described in the module docs."""
    if world == 1:
        return
    if config.batch_size % world:
        raise BnlabError(f"--batch-size {config.batch_size} (the global batch) must be divisible by the "
                         f"number of processes ({world})")
    if config.model.norm == "ghost" and config.model.ghost_splits % world:
        raise BnlabError(f"ghost BN with {config.model.ghost_splits} splits over {world} processes: the splits "
                         f"must be divisible by the number of processes (each keeps splits/{world})")


def for_ranks(model: nn.Module, config: TrainConfig, world: int) -> nn.Module:
    """Make `model` (before its optimizer exists) compute on its rank's rows what the run promises.

    sync_bn: BatchNorm2d layers become SyncBatchNorm2d (the class is swapped in place, so parameters,
    buffers and state-dict keys stay). Ghost BN: splits/world splits per rank. Otherwise unchanged.
    """
    if world == 1:
        return model
    for m in model.modules():
        if config.sync_bn and type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
        elif isinstance(m, GhostBatchNorm):
            m.splits //= world
    return model


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (gradients averaged over ranks in backward).

    Buffers are not broadcast from rank 0 at every forward: per-rank BN statistics are averaged
    instead (`average_running_stats`), which keeps every rank's contribution.
    """
    from torch.nn.parallel import DistributedDataParallel

    # Newer torch renames the switch (and still syncs buffers once at construction: harmless, every
    # rank starts from the same state).
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def _running_buffers(model: nn.Module) -> list[torch.Tensor]:
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    return [b for m in layers for b in (m.running_mean, m.running_var) if b is not None]


def average_running_stats(model: nn.Module, config: TrainConfig) -> None:
    """Average per-rank BN running statistics over the ranks (no-op for sync BN or one process)."""
    if not distributed.active() or config.sync_bn:
        return
    bufs = _running_buffers(model)
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1).double() for b in bufs])
    distributed.all_reduce_sum(flat).div_(distributed.world_size())
    torch._foreach_copy_(bufs, [t.view_as(b) for t, b in zip(flat.split([b.numel() for b in bufs]), bufs)])


def describe(config: TrainConfig, world: int, previous: dict[str, Any] | None, epoch: int) -> dict[str, Any] | None:
    """The distributed part of a run's runtime record (None for a run that never had several ranks).

    previous: the runtime record of the checkpoint resumed from; its history of world sizes goes on.
    """
    history = list(((previous or {}).get("distributed") or {}).get("history", []))
    if world == 1 and not history:
        return None
    history.append({"from_epoch": epoch, "world_size": world})
    b = config.batch_size // world
    if world == 1 or config.sync_bn or config.model.norm not in ("bn", "bn_fixed_affine", "ghost"):
        bn = ("global batch (sync BN)" if config.sync_bn and world > 1 else
              "as one process" if config.model.norm in ("bn", "bn_fixed_affine", "ghost") else "no batch statistics")
    elif config.model.norm == "ghost":
        bn = f"ghost BN, {config.model.ghost_splits // world} splits per rank (as one process)"
    else:
        bn = f"per rank: ghost BN of {world} splits (ghost batch {b})"
    return {"world_size": world, "backend": distributed.backend(), "per_rank_batch": b, "bn_statistics": bn,
            "history": history}
