"""The posts beside us: every number the weight-decay and batch-norm posts print, with our measurement of the
same quantity at the scale run and their ratio. Each number is declared by the finding that measures it
(`FindingDef.posts`), so a source value lives in one place; `posts_table` reads ours from the report's
records (their `values`), nothing is recomputed."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

POST6 = "https://myrtle.ai/learn/how-to-train-your-resnet-6-weight-decay/"
POST7 = "https://myrtle.ai/learn/how-to-train-your-resnet-7-batch-norm/"


@dataclass(frozen=True)
class PostNumber:
    """One number a post prints, and where our record holds the same quantity."""

    quantity: str  # what it is, in words (with its units)
    model: str  # "BN", "frozen BN", "no BN", or "" for a number of no one model
    source: float | None  # the post's value (None: the post states it without a number we can divide by)
    source_text: str  # the post's number as it prints it ("0.80-0.89", "never fails up to ~29")
    ours: Callable[[dict[str, Any]], float | None]  # the finding record's values -> our number (None: not measured)
    link: str = POST7  # the post (the batch-norm post's numbers: the post and its notebook)

    def row(self, fid: str, values: dict[str, Any] | None) -> dict[str, Any]:
        ours = _safe(self.ours, values) if values else None
        ratio = ours / self.source if ours is not None and self.source not in (None, 0) else None
        return {"finding": fid, "quantity": self.quantity, "model": self.model, "source": self.source,
                "source_text": self.source_text, "ours": ours, "ratio": ratio, "link": self.link}


def _safe(get: Callable[[dict[str, Any]], float | None], values: dict[str, Any]) -> float | None:
    """Our number, or None when the record does not hold it (a finding decided at a scale without it)."""
    try:
        x = get(values)
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return None
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def posts_table(records: Iterable[dict[str, Any]], numbers: dict[str, tuple[PostNumber, ...]]) -> list[dict[str, Any]]:
    """One row per post number (`numbers`: finding id -> its PostNumbers), ours from that finding's record
    (None where it was not decided)."""
    by_id = {r["id"]: r for r in records}
    rows = []
    for fid, nums in numbers.items():
        rec = by_id.get(fid)
        values = rec.get("values") if rec and rec.get("verdict") != "NOT RUN" else None
        rows += [n.row(fid, values) for n in nums]
    return rows
