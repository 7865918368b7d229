"""torch.distributed for bnlab: joining torchrun's process group, rank helpers, agreement, sharding.

`torchrun --nproc-per-node N -m bnlab CMD ...` starts N copies of a command. Each one joins the
process group from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT): NCCL with one GPU per process (cuda:LOCAL_RANK) on GPUs, gloo on CPUs. Without those
variables (or with WORLD_SIZE=1) nothing here does anything: every command is the single-process one.

The rules every distributed command follows:

- every rank validates, loads and computes; rank 0 alone claims output folders and writes files;
- a refusal on any rank is a refusal on every rank (`agree`): the ranks exchange their errors
  before the next collective computation, so no rank waits forever on one that gave up, and rank 0
  prints the one line (the others exit with the same code, silently; `printed_here`). Options are
  validated alike on every rank before the group is joined, so those refusals are rank 0's to print too;
- work is split by whole units (a training batch by contiguous rows, an analysis's fixed batches by
  contiguous blocks of batches: `shard_range`), and partial results are summed with one all_reduce
  (`all_reduce_sum`, which also counts the bytes it moves, for the benchmarks).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .device import resolve_device
from .errors import BnlabError

T = TypeVar("T")


class AgreedError(BnlabError):
    """A refusal every rank raises together; `quiet` on ranks other than 0 (rank 0 prints the line)."""

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


@dataclass
class CommStats:
    """What `all_reduce_sum` moved in this process: calls and payload bytes (not the wire traffic)."""

    calls: int = 0
    bytes: int = 0

    def reset(self) -> None:
        self.calls, self.bytes = 0, 0


COMM = CommStats()


# ----------------------------------------------------------------------------- who am I
def env_world_size() -> int:
    """The world size torchrun announces (1 without torchrun), known before the group is joined."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(raw)
    except ValueError:
        raise BnlabError(f"WORLD_SIZE={raw!r} in the environment is not an integer") from None
    if n < 1:
        raise BnlabError(f"WORLD_SIZE={n} in the environment; it must be at least 1")
    return n


def active() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def backend() -> str | None:
    return str(dist.get_backend()) if active() else None


def rank_device(name: str | torch.device | None = "auto") -> torch.device:
    """The device of this rank: `name` resolved, with CUDA meaning cuda:LOCAL_RANK under torchrun."""
    dev = resolve_device(name) if not isinstance(name, torch.device) else name
    if dev.type != "cuda" or (env_world_size() == 1 and not active()):
        return dev
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.index is not None and dev.index != local:
        raise BnlabError(f"--device {dev} under torchrun: each process uses the GPU of its local rank "
                         f"(cuda:LOCAL_RANK); pass --device cuda (or auto)")
    if local >= torch.cuda.device_count():
        error = BnlabError(f"local rank {local} has no GPU (this node has {torch.cuda.device_count()}); "
                           "start at most that many processes per node")
        error.rank_specific = True  # type: ignore[attr-defined]
        raise error
    return torch.device("cuda", local)


_joined = 0  # torchrun groups this process initialised (bnlab.cli skips finalisation after one)


def groups_joined() -> int:
    return _joined


@contextmanager
def launch(device: str | torch.device | None = "auto") -> Iterator[torch.device]:
    """Join torchrun's process group for the block (if the environment names one); yields this rank's device.

    NCCL for CUDA devices, gloo otherwise. A group the caller already initialised is used as it is
    and left alone.
    """
    if env_world_size() == 1 or (dist.is_available() and dist.is_initialized()):
        with _in_group():
            yield rank_device(device)
        return
    if not dist.is_available():
        raise BnlabError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dev = rank_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL and the object collectives use the current device
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                            device_id=dev if dev.type == "cuda" else None)
    global _joined
    _joined += 1
    try:
        with _in_group():
            yield dev
    finally:
        dist.destroy_process_group()


@contextmanager
def _in_group() -> Iterator[None]:
    try:
        yield
    except BnlabError as e:  # raised on this rank after joining: possibly this rank's alone
        e.in_group = True  # type: ignore[attr-defined]
        raise


def printed_here(error: BaseException) -> bool:
    """Whether this process prints `error`'s one line (see the module docs): always in one process;
    under torchrun rank 0 prints the refusals every rank makes alike, each rank its own others."""
    if getattr(error, "quiet", False):
        return False
    if getattr(error, "in_group", False) or getattr(error, "rank_specific", False):
        return True
    try:
        return env_world_size() == 1 or int(os.environ.get("RANK", "0")) == 0
    except (BnlabError, ValueError):
        return True


# ----------------------------------------------------------------------------- agreement
def _exchange(error: BaseException | None) -> None:
    """Every rank learns whether any rank failed; all raise together (rank 0's message first)."""
    if not active():
        if error is not None:
            raise error
        return
    message = None if error is None else (str(error) if isinstance(error, BnlabError)
                                          else f"{type(error).__name__}: {error}")
    messages: list[str | None] = [None] * world_size()
    dist.all_gather_object(messages, message)
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if not failed:
        return
    if error is not None and not isinstance(error, BnlabError):
        raise error  # a bug (or the file system) on this rank: keep its own traceback / message
    r, m = failed[0]
    raise AgreedError(m if r == 0 else f"rank {r}: {m}", quiet=not is_main()) from None


def agree(fn: Callable[[], T]) -> T:
    """fn() on every rank; if it fails on any rank, every rank raises (see module docs)."""
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
        _exchange(e)
        raise
    _exchange(None)
    return result


def on_main(fn: Callable[[], T]) -> T:
    """fn() on rank 0 only; its result (pickled) or its refusal reaches every rank."""
    if not active():
        return fn()
    result = agree(lambda: fn() if is_main() else None)
    box = [result]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


@contextmanager
def main_context(factory: Callable[[], AbstractContextManager[T]]) -> Iterator[T | None]:
    """Enter factory() on rank 0 only (e.g. claiming the output folder); refusals reach every rank.

    Yields the context's value on rank 0 and None elsewhere.
    """
    if not active():
        with factory() as value:
            yield value
        return
    with ExitStack() as stack:
        value = agree(lambda: stack.enter_context(factory()) if is_main() else None)
        yield value


def barrier() -> None:
    if active():
        dist.barrier()


# ----------------------------------------------------------------------------- sums and shards
def all_reduce_sum(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum `t` over the ranks of `group` (default: the world) in place; returns it."""
    COMM.calls += 1
    COMM.bytes += t.numel() * t.element_size()
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def shard_range(n: int, rank_: int, world: int) -> range:
    """Contiguous block `rank_` of n items split over `world` ranks (sizes differ by at most one)."""
    return range(n * rank_ // world, n * (rank_ + 1) // world)


def resolve_group(group: Any) -> Any:
    """"auto" -> the world group when one of several ranks is initialised, else None (no sharding)."""
    if isinstance(group, str):
        if group != "auto":
            raise BnlabError(f"process_group must be 'auto', None or a ProcessGroup, got {group!r}")
        return dist.group.WORLD if active() else None
    if group is not None and dist.get_world_size(group) == 1:
        return None
    return group
