"""A finding as one object: its spec (the report row's static text), the stages it reads, `load` (the
stages' files -> the plain data `decide` takes), `decide` (that data -> a `FindingRecord`) and `figure` (its
panel of the report, drawn from a `bnlab.plotting.panels.FindingView`; matplotlib is imported only there);
optionally the stages it reads when the plan has them, and the numbers of the posts it measures (`posts`).

Each finding module (bnlab/findings/f*.py) declares one `FINDING`; `bnlab.findings.registry` collects them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .posts import PostNumber
from .record import Finding, FindingRecord, not_run

Outs = dict[str, Path]  # stage name -> its `out` folder (finished stages only)


@dataclass(frozen=True)
class FindingDef:
    """One row of the reproduction report and everything that produces it."""

    spec: Finding
    stages: tuple[str, ...]  # the stage names (bnlab.reproduce.plan) whose files `load` reads
    load: Callable[[Outs], dict[str, Any]]  # the keyword arguments of `decide`, read from the stages' files
    decide: Callable[..., FindingRecord]  # plain data -> the verdict (testable on hand-made input)
    figure: Callable[[Any], Any] | None = None  # FindingView -> matplotlib Figure
    optional: tuple[str, ...] = ()  # stages `load` reads when the plan has them (e.g. a sample check)
    posts: tuple[PostNumber, ...] = ()  # the numbers the posts print that this finding measures

    @property
    def id(self) -> str:
        return self.spec.id

    def reads(self, planned: Any) -> tuple[str, ...]:
        """The stages it reads in a plan: its own, and those optional ones the plan has."""
        return self.stages + tuple(s for s in self.optional if s in planned)

    def evaluate(self, outs: Outs) -> FindingRecord:
        """The record from the finished stages in `outs` (NOT RUN when one of them is missing)."""
        missing = [s for s in self.stages if s not in outs]
        if missing:
            return not_run(self.spec, f"not requested, or its stages did not finish ({', '.join(missing)})")
        return self.decide(**self.load(outs))
