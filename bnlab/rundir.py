"""Output directories: created up front, refused when they would silently lose results."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import BnlabError


def prepare_out_dir(out: str | os.PathLike, *, force: bool = False, resumable: bool = False) -> Path:
    """Create the output directory; refuse a non-empty one unless force, or an unwritable one.

    With force, an existing non-empty directory is emptied only after every check passed.
    resumable: the command has --resume, so the refusal names it.
    """
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise BnlabError(f"output path {p} exists and is not a directory")
    if p.exists() and any(p.iterdir()) and not force:
        raise BnlabError(f"output directory {p} is not empty; pass --force to overwrite"
                         + (" or --resume to continue" if resumable else ""))
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BnlabError(f"cannot create output directory {p} ({e.strerror})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise BnlabError(f"output directory {p} is not writable")
    if force:
        for child in p.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    return p
