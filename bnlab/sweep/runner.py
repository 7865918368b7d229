"""Running a sweep's points: resumable, parallel, and shared safely between processes.

Every point is trained by `bnlab.train.train` into OUT/points/NAME, an ordinary run directory.
A process claims a point with an OS-level lock on OUT/points/.NAME.lock (held while it trains the
point; the kernel drops it when the process dies, however it dies). So:

- `run_sweep(..., jobs=N)` trains N points at a time in worker processes of its own; a plain sweep
  holds the sweep directory's lock exclusively, so a second plain sweep of the same folder is refused;
- `run_sweep(..., worker=True)` (`bnlab sweep DIR --worker`, started any number of times on any
  machines sharing the folder) holds it shared and claims the next unclaimed, unfinished point,
  so nothing runs twice and a dead worker's point is resumed by the next worker that reaches it.

Worker processes of `jobs > 1` watch their parent and exit when it dies (no orphans training on).
"""
from __future__ import annotations

import concurrent.futures as cf
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import validate as check
from ..config import TrainConfig
from ..data.dataset import data_inputs
from ..errors import BnlabError
from ..io.jsonfile import read_json, write_json
from ..progress import Progress
from ..rundir import LOCK_NAME, check_out_dir, output_path
from ..runtime import worker_pool
from ..train import train
from .grid import Grid, Point, read_grid_file

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

DONE = ("finished", "diverged")
GRID_FILE = "grid.json"


def point_dir(out: Path, point: Point) -> Path:
    if not point.name or point.name in (".", "..") or os.sep in point.name or (os.altsep or os.sep) in point.name:
        raise BnlabError(f"grid point {point.index}: {point.name!r} is not a folder name")  # names come from grid.py
    return out / "points" / point.name


def foreign_point_dir(run_dir: Path) -> str | None:
    """Why `run_dir` is not a point folder this sweep may train into (None: it is new, empty or holds a run).

    Points are trained without emptying anything (new or empty folders) or resumed (a folder with the
    run's config.json), so a folder with files but no run, a symbolic link or a file is refused.
    """
    if run_dir.is_symlink():
        return "is a symbolic link"
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        return "is not a directory"
    if not (run_dir / "config.json").is_file() and any(c.name != LOCK_NAME for c in run_dir.iterdir()):
        return "holds files but no training run (config.json)"
    return None


def point_state(run_dir: Path) -> str:
    """finished | diverged | resumable (has last.pt) | new."""
    try:
        status = read_json(run_dir / "status.json").get("status")
    except (BnlabError, AttributeError):
        status = None
    if status in DONE:
        return status
    return "resumable" if (run_dir / "last.pt").is_file() else "new"


@contextmanager
def _flock(path: Path, shared: bool = False, wait: bool = False) -> Iterator[bool]:
    """Hold an flock on `path` for the block; yields False (holding nothing) if it is taken."""
    if fcntl is None:
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            yield False
            return
        yield True
    finally:
        os.close(fd)


def prepare_sweep_dir(grid: Grid, out: Path) -> list[Point]:
    """Check every point, then create OUT and write grid.json; refuse a folder holding anything else.

    OUT must be new, empty, or a sweep of the same grid (rerunning resumes it).
    """
    points = grid.validate()
    # a path that is a file, a dangling link, an unwritable folder; data that lives in the sweep's folder
    check_out_dir(out, inputs=[x for p in points for x in data_inputs(grid.config(p).data)], keep=True)
    if (out / "points").is_symlink() or ((out / "points").exists() and not (out / "points").is_dir()):
        raise BnlabError(f"{out / 'points'} is not a folder of this sweep (a symbolic link or a file); "
                         "choose another --out")
    path = out / GRID_FILE
    if path.exists():
        old = read_grid_file(path)
        if old.to_dict() != grid.to_dict():
            raise BnlabError(f"{out} holds a sweep with a different grid (see {path}); use another --out")
    elif out.exists() and any(c.name != LOCK_NAME for c in out.iterdir()):
        raise BnlabError(f"{out} is not empty and holds no sweep ({GRID_FILE}); choose another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, grid.to_dict())
    (out / "points").mkdir(exist_ok=True)
    return points


def run_point(config_dict: dict[str, Any], run_dir: str, device: str, threads: int, retries: int,
              quiet: bool) -> tuple[str, str]:
    """Claim and train one point to completion in this process: (status, message).

    Top-level, for process pools. Trains with `threads` torch threads and restores the caller's
    setting afterwards. ("claimed", ...) means another process holds the point right now.
    """
    rd = Path(run_dir)
    with _flock(rd.parent / f".{rd.name}.lock") as mine:
        if not mine:
            return "claimed", "another process is training this point"
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return _run_point(config_dict, rd, device, retries, quiet)
        finally:
            torch.set_num_threads(before)


def _run_point(config_dict: dict[str, Any], rd: Path, device: str, retries: int, quiet: bool) -> tuple[str, str]:
    config = TrainConfig.from_dict(config_dict)
    last_error = ""
    for _attempt in range(retries + 1):
        foreign = foreign_point_dir(rd)
        if foreign:  # never emptied: a sweep deletes nothing it did not write
            return "error", f"{rd} {foreign}; move it away to train this point"
        state = point_state(rd)
        if state in DONE:
            return state, "done"
        if (rd / "config.json").is_file():
            old = TrainConfig.from_dict(read_json(rd / "config.json", "run config"))
            if old != config:
                return "error", f"{rd} holds a run with a different config"
        try:
            if state == "resumable" or (rd / "config.json").is_file():  # no last.pt yet: restarts, same config
                res = train(None, rd, device=device, resume=True, quiet=quiet)
            else:
                res = train(config, rd, device=device, quiet=quiet)
            return res.status, "ran"
        except Exception as e:  # a crashed point is retried (resumed from last.pt when there is one)
            text = " ".join(str(e).split())[:300]  # one line (torch's write errors span several)
            last_error = text if isinstance(e, BnlabError) else f"{type(e).__name__}: {text}"
    return "crashed", last_error


@dataclass
class SweepOutcome:
    ran: dict[int, str]  # index -> status of points run now
    skipped: list[int]  # indices already finished/diverged
    failed: dict[int, str]  # index -> error message
    claimed: list[int]  # indices another process was training


def run_sweep(grid: Grid, out: str | os.PathLike, *, jobs: int = 1, device: str = "cpu", retries: int = 1,
              only: list[int] | None = None, quiet: bool = False, worker: bool = False) -> SweepOutcome:
    """Run every (or only the listed) point not yet done, `jobs` at a time in separate processes.

    worker: share the folder with other workers (see module docs) instead of owning it.
    """
    out = output_path(out)
    check.integer("--jobs", jobs, 1, check.MAX_WORKERS)
    points = grid.validate()
    if only is not None:  # refused before the sweep folder exists
        bad = [i for i in only if not 0 <= i < len(points)]
        if bad:
            raise BnlabError(f"--point {bad[0]} out of range: the grid has {len(points)} points (0..{len(points) - 1})")
    points = prepare_sweep_dir(grid, out)
    if only is not None:
        points = [points[i] for i in only]
    with _flock(out / LOCK_NAME, shared=worker) as ok:
        if not ok:
            raise BnlabError(f"{out} is in use by another bnlab sweep"
                             + (" (not started with --worker)" if worker else "; to share it, start every "
                                "process with --worker"))
        return _run_points(grid, out, points, jobs, device, retries, quiet)


def _run_points(grid: Grid, out: Path, points: list[Point], jobs: int, device: str, retries: int,
                quiet: bool) -> SweepOutcome:
    skipped = [p.index for p in points  # a foreign folder's finished run is not this sweep's: refused below
               if not foreign_point_dir(point_dir(out, p)) and point_state(point_dir(out, p)) in DONE]
    todo = [p for p in points if p.index not in skipped]
    outcome = SweepOutcome(ran={}, skipped=skipped, failed={}, claimed=[])
    if not todo:
        return outcome
    jobs = max(1, min(jobs, len(todo)))
    args = [(grid.config(p).to_dict(), str(point_dir(out, p)), device, grid.threads, retries, quiet or jobs > 1)
            for p in todo]
    bar = Progress(len(todo), "sweep points", quiet=quiet, unit="point")

    def record(p: Point, status: str, msg: str) -> None:
        if status in DONE:
            outcome.ran[p.index] = status
        elif status == "claimed":
            outcome.claimed.append(p.index)
        else:
            outcome.failed[p.index] = msg or status
        bar.update(1, f"{p.name}: {status}")

    if jobs == 1:
        for p, a in zip(todo, args):
            record(p, *run_point(*a))
    else:
        with worker_pool(jobs) as pool:  # workers die with this process (bnlab.runtime)
            futures = {pool.submit(run_point, *a): p for p, a in zip(todo, args)}
            for fut in cf.as_completed(futures):
                try:
                    record(futures[fut], *fut.result())
                except Exception as e:  # the worker process itself died
                    record(futures[fut], "crashed", f"{type(e).__name__}: {e}")
    bar.close()
    return outcome
