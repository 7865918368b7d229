"""What every finding check returns: one row of the reproduction report.

A `Finding` is the static part (the claim, its source and the source's number, the threshold);
a `FindingRecord` adds what was measured, the verdict and why. Verdicts are decided by the finding
functions only; nothing else in the package turns numbers into PASS/FAIL.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"
VERDICTS = (PASS, FAIL, NOT_RUN)
GROUPS = ("weight-decay", "batch-norm")


@dataclass(frozen=True)
class Finding:
    """A claim of the posts (or of the literature they rest on) and the check that decides it."""

    id: str
    group: str  # which post's reproduction it belongs to (`bnlab reproduce weight-decay|batch-norm`)
    title: str  # a few words, for the verdict table
    claim: str
    source: str  # P: Page's posts / notebook, L: literature, A: analysis (derivable, simulable)
    source_number: str  # what the source reports, in its units
    threshold: str  # when the check passes, in words; the numbers are the finding function's constants


@dataclass
class FindingRecord:
    """One decided (or not run) finding; `values` holds every number the verdict used."""

    id: str
    title: str
    claim: str
    source: str
    source_number: str
    threshold: str
    verdict: str
    measured: str  # the measured numbers in one line, for the verdict table
    reason: str  # one line: why PASS, or what failed
    values: dict[str, Any] = field(default_factory=dict)
    setting: dict[str, Any] = field(default_factory=dict)  # scale, widths, data, steps, stage keys
    figure: str | None = None  # path relative to the report folder
    notes: list[str] = field(default_factory=list)  # context a reader needs (not part of the verdict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(spec: Finding, checks: list[tuple[str, bool]], measured: str, values: dict[str, Any],
           *, notes: list[str] | None = None) -> FindingRecord:
    """PASS when every (description, ok) check holds; the reason names the failing ones."""
    failed = [what for what, ok in checks if not ok]
    verdict = PASS if not failed else FAIL
    reason = ("all checks hold: " + "; ".join(what for what, _ in checks)) if not failed else (
        "not met: " + "; ".join(failed))
    return FindingRecord(id=spec.id, title=spec.title, claim=spec.claim, source=spec.source,
                         source_number=spec.source_number, threshold=spec.threshold, verdict=verdict,
                         measured=measured, reason=reason, values=values, notes=list(notes or []))


def not_run(spec: Finding, reason: str) -> FindingRecord:
    return FindingRecord(id=spec.id, title=spec.title, claim=spec.claim, source=spec.source,
                         source_number=spec.source_number, threshold=spec.threshold, verdict=NOT_RUN,
                         measured="-", reason=reason)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number for the report; None/NaN as '-'."""
    return format(x, spec) if finite(x) else "-"
