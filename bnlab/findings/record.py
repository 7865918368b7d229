"""What every finding check returns: one row of the reproduction report.

A `Finding` is the static part (the claim, its source and the source's number, the threshold);
a `FindingRecord` adds what was measured, the verdict and why. Verdicts are decided by the finding
functions only; nothing else in the package turns numbers into PASS/FAIL.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, UNDECIDED, NOT_RUN = "PASS", "FAIL", "UNDECIDED", "NOT RUN"
VERDICTS = (PASS, FAIL, UNDECIDED, NOT_RUN)
UNDECIDABLE = "not decidable at this scale"  # how an UNDECIDED reason starts
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
    threshold: str  # when the check passes, in words, written from the finding module's constants


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
    sample: str | None = None  # beside the verdict: whether a smaller sample than the post's suffices

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(spec: Finding, checks: list[tuple[str, bool]], measured: str, values: dict[str, Any],
           *, notes: list[str] | None = None, needs: list[tuple[str, bool]] | None = None,
           sample: str | None = None) -> FindingRecord:
    """PASS when every (description, ok) check holds; the reason names the failing ones.

    `needs` are what the claim asks of the setting (steps, relaxation times, eigenpairs, depth): when one is
    not met the run cannot test the claim either way, so the verdict is UNDECIDED (not FAIL), and the reason
    names the unmet needs and then how the checks came out at this scale.
    """
    needs = list(needs or [])
    short = [what for what, ok in needs if not ok]
    failed = [what for what, ok in checks if not ok]
    if short:
        verdict = UNDECIDED
        outcome = "; ".join(f"{what} ({'holds' if ok else 'not met'})" for what, ok in checks)
        reason = f"{UNDECIDABLE}: needs {'; '.join(short)}" + (f". At this scale: {outcome}" if checks else "")
    elif failed:
        verdict, reason = FAIL, "not met: " + "; ".join(failed)
    else:
        verdict = PASS
        reason = "all checks hold: " + "; ".join(what for what, _ in [*needs, *checks])
    return FindingRecord(id=spec.id, title=spec.title, claim=spec.claim, source=spec.source,
                         source_number=spec.source_number, threshold=spec.threshold, verdict=verdict,
                         measured=measured, reason=reason, values=values, notes=list(notes or []), sample=sample)


def not_run(spec: Finding, reason: str) -> FindingRecord:
    return FindingRecord(id=spec.id, title=spec.title, claim=spec.claim, source=spec.source,
                         source_number=spec.source_number, threshold=spec.threshold, verdict=NOT_RUN,
                         measured="-", reason=reason)


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number for the report; None/NaN as '-'."""
    return format(x, spec) if finite(x) else "-"


def num(x: float) -> str:
    """A threshold constant in prose: 0.15, 3, 1e-3, 2.5e-4 (never 0.001 or 1e-06)."""
    if x and abs(x) < 1e-2:
        mantissa, exponent = f"{x:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:g}"
