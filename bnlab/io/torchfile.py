"""torch files: the one torch.save every bnlab writer goes through (atomic) and the one torch.load every
reader goes through (`load_torch_file`: tensors and plain containers only, never code)."""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import BnlabError
from .textfile import write_error


def atomic_torch_save(obj: Any, path: Path) -> Path:
    """torch.save to a temp file beside `path`, fsync, rename: readers never see half a file."""
    if path.is_dir():
        raise BnlabError(f"{path} is a directory; name a file to write")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write (full disk) as RuntimeError
        raise write_error(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_torch_file(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """torch.load with weights_only=True: a file that asks to build other objects (and so to run code)
    raises pickle.UnpicklingError (one line) instead. Every torch.load of the repository is this one (a test
    checks)."""
    with warnings.catch_warnings():  # torch warns about legacy/foreign formats: callers' errors say it all
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            raise pickle.UnpicklingError(f"{path} holds objects beyond tensors and plain containers; refused "
                                         "unread (loading them could run code)") from None
