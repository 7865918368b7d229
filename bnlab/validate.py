"""Domain checks for every numeric option: one line, raised before any work or any file is touched.

Click (and Python's float()) accept "nan" and "inf"; every option that is a number therefore goes
through one of these, named as the user typed it (e.g. "--lr").
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .errors import BnlabError

# One domain for every seed: what numpy's legacy seeding accepts (torch's manual_seed takes all of
# it too), so a seed that passes here is valid for every generator bnlab seeds with it.
SEED_MAX = 2**32 - 1
# Upper bounds of counts that only measure effort (threads, workers, probes, Lanczos steps): far above
# any useful value, low enough that an absurd one is a typo refused up front, not hours of work
# or an overflow deep inside torch.
MAX_WORKERS = 1024


def _num(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BnlabError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise BnlabError(f"{name} must be a finite number, got {value}")
    return float(value)


def finite(name: str, value: Any) -> float:
    return _num(name, value)


def positive(name: str, value: Any) -> float:
    v = _num(name, value)
    if v <= 0:
        raise BnlabError(f"{name} must be positive, got {value}")
    return v


def non_negative(name: str, value: Any) -> float:
    v = _num(name, value)
    if v < 0:
        raise BnlabError(f"{name} must be non-negative, got {value}")
    return v


def in_range(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> float:
    """low <= value <= high (either end open if asked)."""
    v = _num(name, value)
    if v < low or (low_open and v == low) or v > high or (high_open and v == high):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise BnlabError(f"{name} must be in {lo}{low:g}, {high:g}{hi}, got {value}")
    return v


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BnlabError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise BnlabError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise BnlabError(f"{name} must be at most {maximum}, got {value}")
    return value


def seed(name: str, value: Any) -> int:
    """A seed: an integer in 0..SEED_MAX."""
    return integer(name, value, 0, SEED_MAX)


def optional_integer(name: str, value: Any, minimum: int | None = None) -> int | None:
    return None if value is None else integer(name, value, minimum)


def all_finite(name: str, values: Iterable[Any], *, minimum: float | None = None) -> None:
    for v in values:
        x = _num(name, v)
        if minimum is not None and x < minimum:
            raise BnlabError(f"{name} values must be >= {minimum:g}, got {v}")


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if value not in options:
        raise BnlabError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value
