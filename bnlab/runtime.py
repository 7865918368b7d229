"""Process-level performance settings, applied once and recorded in every run's provenance.

glibc's malloc serves blocks above its mmap threshold (128 KiB at first, adapting up to 32 MiB)
with fresh mmap()s and unmaps them on free. A training step allocates and frees tens of MB of
activations, so every step faulted its activation memory in again from the kernel: on a 2-core
CPU this cost a third of the wall time in system time (DavidNet width 16, batch 512). Raising the
mmap and trim thresholds keeps freed blocks in the heap for reuse; memory then stays at its
peak, which a training or analysis process reaches anyway. Set BNLAB_MALLOC_TUNING=0 to skip it.
"""
from __future__ import annotations

import concurrent.futures as cf
import ctypes
import ctypes.util
import multiprocessing as mp
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# mallopt parameter numbers (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: larger than any per-step block of the nets we train

_applied: dict[str, Any] | None = None


def tune_allocator() -> dict[str, Any]:
    """Raise glibc's mmap/trim thresholds (idempotent). Returns what was set, for the record."""
    global _applied
    if _applied is not None:
        return _applied
    record: dict[str, Any] = {"malloc": "default"}
    if os.environ.get("BNLAB_MALLOC_TUNING", "1").strip() in ("0", "off", "false", "no"):
        record["malloc"] = "default (BNLAB_MALLOC_TUNING=0)"
    elif platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1
            ok = libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1 and ok
        except (OSError, AttributeError):
            ok = False
        if ok:
            record = {"malloc": "glibc mallopt", "M_MMAP_THRESHOLD": _THRESHOLD, "M_TRIM_THRESHOLD": _THRESHOLD}
    _applied = record
    return record


def runtime_info(device: torch.device) -> dict[str, Any]:
    """What the process runs with: allocator tuning, threads, memory format, device name."""
    info: dict[str, Any] = {"allocator": tune_allocator(), "torch_threads": torch.get_num_threads(),
                            "memory_format": "channels_last", "device": str(device)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return info


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent: int | None = None, poll_seconds: float = 1.0) -> None:
    """In a worker process: exit as soon as the process that started it (pid `parent`) is gone.

    On Linux the kernel kills the worker when its parent dies (PR_SET_PDEATHSIG). Everywhere, a
    daemon thread polls the parent pid. `parent` must be the pid the parent passed in: a worker
    whose parent died while it was still starting (importing torch takes seconds) has already been
    re-parented, so its own getppid() would name the wrong process and it would train on as an orphan.
    """
    parent = os.getppid() if parent is None else parent
    if platform.system() == "Linux":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the polling thread still works
    if os.getppid() != parent:  # died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="bnlab-exit-with-parent", daemon=True).start()


def _init_worker(parent: int, setup: Callable[[], None] | None) -> None:
    exit_with_parent(parent)
    tune_allocator()
    if setup is not None:
        setup()


@contextmanager
def worker_pool(jobs: int, setup: Callable[[], None] | None = None) -> Iterator[cf.ProcessPoolExecutor]:
    """A pool of `jobs` spawned worker processes (no forked copies of torch's thread pools) that never
    outlive this process: they die with it however it dies (see `exit_with_parent`), a SIGTERM to it
    kills them before it exits (status 143), and leaving the block by an exception kills them too.
    `setup` (a top-level function) runs in each worker after it is tied to this process."""
    pool = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                  initargs=(os.getpid(), setup))

    def on_term(signum: int, frame: Any) -> None:
        _kill_workers(pool)
        raise SystemExit(128 + signum)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield pool
    except BaseException:
        _kill_workers(pool)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _kill_workers(pool: cf.ProcessPoolExecutor) -> None:
    for proc in list((getattr(pool, "_processes", None) or {}).values()):  # no public handle on them
        try:
            proc.kill()
        except (OSError, ValueError):
            pass
