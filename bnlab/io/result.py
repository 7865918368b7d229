"""Writing a result's files as one unit: the record (the file that says "this result is complete")
last, and nothing left behind when a write fails half-way (a full disk, a quota)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


def write_files(writers: Sequence[Callable[[], Path]]) -> list[Path]:
    """Call each writer in order (each writes one file atomically and returns its path; put the record
    last). If one fails, the files the earlier ones wrote are removed and the error is re-raised."""
    done: list[Path] = []
    try:
        for write in writers:
            done.append(write())
    except BaseException:
        for p in done:
            p.unlink(missing_ok=True)
        raise
    return done
