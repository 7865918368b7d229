"""torch files written atomically: the one torch.save every bnlab writer goes through."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import BnlabError


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """torch.save to a temp file beside `path`, fsync, rename: readers never see half a file."""
    if path.is_dir():
        raise BnlabError(f"{path} is a directory; name a file to write")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
