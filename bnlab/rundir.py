"""Output directories: one rule for every command that writes, and one writer at a time.

The rule: everything is validated before this module is called; then the directory is created,
locked, and (only if it holds files and --force was given) emptied. A directory that is not empty
is refused without --force (or --resume where a command has it). If the command then fails, a
directory this call created is removed again, so failed commands leave nothing behind.

Inputs: a command names the paths it reads (checkpoint, run directory, data folder, eigenvectors, warm
start); an output that is one of them, lies inside one or contains one (real paths, through symbolic
links) is refused, with or without --force, before anything is created or removed. --force never
empties the current directory, the home directory or a filesystem root (nor a folder holding them).

The lock is an OS-level lock (flock) on DIR/.bnlab.lock: the kernel releases it when the process
dies, however it dies, so a killed run never leaves a stale lock; a second process that wants the
same directory is refused with one line while the first one runs.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BnlabError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, runs are not guarded
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".bnlab.lock"

# (what the path is, e.g. "checkpoint" or "data folder"; the path, or None where the command has none)
Inputs = Iterable[tuple[str, "str | os.PathLike[str] | None"]]


def _is_empty(p: Path) -> bool:
    return not any(c.name != LOCK_NAME for c in p.iterdir())


def output_path(out: str | os.PathLike) -> Path:
    """`out` as a Path; an empty name (an unset shell variable) is refused rather than read as '.'."""
    if not os.fspath(out).strip():
        raise BnlabError("the output path is empty (an unset shell variable?); name the output explicitly")
    return Path(out)


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_apart(out: str | os.PathLike, inputs: Inputs) -> None:
    """Refuse an output that is, lies inside or contains one of the inputs; touches nothing.

    Real paths are compared, so a symbolic link on either side is seen through.
    """
    o = os.path.realpath(output_path(out))
    for what, path in inputs:
        if path is None:
            continue
        i = os.path.realpath(path)
        relation = ("is" if o == i else "lies inside" if _within(o, i) else "contains" if _within(i, o) else None)
        if relation is not None:
            raise BnlabError(f"the output {out} {relation} the {what} {path}, an input; choose an output apart "
                             "from every input")


def _check_force_target(p: Path) -> None:
    """--force empties folders: never the working directory, the home directory or a root, nor above them."""
    real = os.path.realpath(p)
    try:
        cwd = os.getcwd()
    except OSError:  # the working directory was deleted: nothing there to protect
        cwd = None
    for what, keep in (("the current directory", cwd), ("the home directory", os.path.expanduser("~"))):
        if keep is not None and _within(os.path.realpath(keep), real):
            raise BnlabError(f"--force would empty {p}, which is or holds {what}; choose another output")
    if os.path.ismount(real):
        raise BnlabError(f"--force would empty {p}, a filesystem root; choose another output")


def check_out_dir(out: str | os.PathLike, *, force: bool = False, resumable: bool = False,
                  inputs: Inputs = (), keep: bool = False) -> Path:
    """Refuse (one line) an output path that cannot be used or that would touch an input; touches nothing.

    force: a non-empty directory will be emptied. keep: a non-empty directory is used as it is (its
    writer continues what is there, e.g. a sweep).
    """
    p = output_path(out)
    check_apart(p, inputs)
    if force and not keep and p.exists():
        _check_force_target(p)
    if p.is_symlink() and not p.exists():
        raise BnlabError(f"output path {p} is a dangling symbolic link")
    if p.exists() and not p.is_dir():
        raise BnlabError(f"output path {p} exists and is not a directory")
    if p.exists():
        if not os.access(p, os.W_OK | os.X_OK):
            raise BnlabError(f"output directory {p} is not writable")
        if not _is_empty(p) and not (force or keep):
            raise BnlabError(f"output directory {p} is not empty; pass --force to overwrite"
                             + (" or --resume to continue" if resumable else ""))
    else:
        parent = next((a for a in p.absolute().parents if a.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise BnlabError(f"cannot create output directory {p} ({parent} is not a writable directory)")
    return p


@contextmanager
def lock_dir(p: Path) -> Iterator[None]:
    """Hold the directory's lock for the block; refuse if another process holds it."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(p / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise BnlabError(f"cannot lock {p} ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BnlabError(f"{p} is in use by another bnlab process (pid {holder}); wait for it or "
                             "choose another directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _empty(p: Path) -> None:
    for child in p.iterdir():
        if child.name == LOCK_NAME:
            continue
        try:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        except OSError as e:
            raise BnlabError(f"cannot empty {p}: {child.name} ({e.strerror})") from None


@contextmanager
def claim_out_dir(out: str | os.PathLike, *, force: bool = False, resume: bool = False,
                  resumable: bool = False, inputs: Inputs = ()) -> Iterator[Path]:
    """Create, lock and (with force) empty the output directory for the block that writes it.

    resume: the directory holds a run to continue (must exist; nothing is emptied).
    resumable: the command has --resume, so a refusal names it.
    inputs: the paths the command reads; the directory must be apart from each (see `check_apart`).
    """
    p = output_path(out)
    if resume:
        check_apart(p, inputs)
        if not p.is_dir():
            raise BnlabError(f"nothing to resume: {p} is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise BnlabError(f"run directory {p} is not writable")
        created = False
    else:
        check_out_dir(p, force=force, resumable=resumable, inputs=inputs)
        created = not p.exists()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BnlabError(f"cannot create output directory {p} ({e.strerror})") from None
    ok = False
    try:
        with lock_dir(p):
            if not resume:
                if not _is_empty(p) and not force:  # filled since the check, by another process
                    raise BnlabError(f"output directory {p} is not empty; pass --force to overwrite")
                if force:
                    _empty(p)
            yield p
            ok = True
    finally:
        if not ok and created and p.is_dir() and _is_empty(p):
            shutil.rmtree(p, ignore_errors=True)


def prepare_out_dir(out: str | os.PathLike, *, force: bool = False, resumable: bool = False,
                    inputs: Inputs = ()) -> Path:
    """Check, create and (with force) empty an output directory without holding a lock.

    For writers that finish within one call and are not resumable; long-running writers use
    `claim_out_dir`.
    """
    p = check_out_dir(out, force=force, resumable=resumable, inputs=inputs)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnlabError(f"cannot create output directory {p} ({e.strerror})") from None
    if force:
        _empty(p)
    return p
