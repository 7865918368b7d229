"""JSON files: the one writer (atomic, strictly valid JSON) and reader every module uses.

Strict means what `json.loads` and every other language's parser accept: NaN and ±inf (which
Python would write as bare `NaN`/`Infinity`) become null; numpy scalars and arrays, tuples,
paths and dataclasses become their plain JSON equivalents.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from ..errors import BnlabError
from .textfile import write_text


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
    return write_text(path, dumps(obj, indent))


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse path; a missing or malformed file is a one-line BnlabError naming `what`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BnlabError(f"no {what} at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BnlabError(f"{path} is not a readable {what} ({type(e).__name__}: {str(e)[:120]})") from None
