"""JSON files: the one writer (atomic, strictly valid JSON) and reader every module uses.

Strict means what `json.loads` and every other language's parser accept: NaN and ±inf (which
Python would write as bare `NaN`/`Infinity`) become null; numpy scalars and arrays, tuples,
paths and dataclasses become their plain JSON equivalents.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..errors import BnlabError
from .torchfile import write_error


def to_jsonable(x: Any) -> Any:
    """x as plain JSON values: non-finite floats -> None, numpy -> Python, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return to_jsonable(dataclasses.asdict(x))
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, PurePath):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if hasattr(x, "tolist"):  # torch tensors
        return to_jsonable(x.tolist())
    return str(x)


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write obj to path atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    text = dumps(obj, indent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):  # others (a missing folder, ...) as before
            raise write_error(path, e) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse path; a missing or malformed file is a one-line BnlabError naming `what`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BnlabError(f"no {what} at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BnlabError(f"{path} is not a readable {what} ({type(e).__name__}: {str(e)[:120]})") from None
