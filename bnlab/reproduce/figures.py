"""The report's figures, drawn by the package: each decided finding's `figure` (its module's), from the
report record and the stage folders it names, saved as DIR/figures/<id>.png and .pdf.

matplotlib and seaborn are imported only when a figure is drawn; a finding whose figure fails costs only
its own figure (`FigureOutcome.failed` says which and why).
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..findings.record import NOT_RUN
from ..findings.registry import BY_ID

FIGURES_DIR = "figures"


@dataclass
class FigureOutcome:
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # finding id -> its traceback

    def problem(self) -> str | None:
        """One line for the report when some figure could not be drawn, else None."""
        if not self.failed:
            return None
        last = {fid: (tb.strip().splitlines() or ["?"])[-1][:200] for fid, tb in self.failed.items()}
        return "figures: no figure for " + "; ".join(f"{fid} ({why})" for fid, why in last.items())


def draw_findings(root: Path, report: dict[str, Any], out: Path | None = None,
                  only: set[str] | None = None, quiet: bool = True) -> FigureOutcome:
    """Every decided finding's figure of the reproduction folder `root` (its `report` record) into `out`
    (default ROOT/figures), PNG and PDF."""
    import contextlib
    import io

    from ..plotting import style
    from ..plotting.panels import FindingView

    out = Path(out) if out is not None else Path(root) / FIGURES_DIR
    outcome = FigureOutcome()
    for rec in report["findings"]:
        f = BY_ID.get(rec["id"])
        if rec["verdict"] == NOT_RUN or f is None or f.figure is None or (only and rec["id"] not in only):
            continue
        try:
            fig = f.figure(FindingView(Path(root), rec))
            with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
                outcome.written += style.save(fig, out / rec["id"])
        except Exception:  # one broken figure must not cost the others (nor the report)
            outcome.failed[rec["id"]] = traceback.format_exc()
    return outcome


def draw_report_figures(root: Path, report: dict[str, Any]) -> str | None:
    """The report's figures; returns a one-line problem, or None when every one drew."""
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError as e:
        return f"no figures: matplotlib is not installed ({e})"
    try:
        return draw_findings(root, report).problem()
    except ImportError as e:  # seaborn or pandas missing
        return f"no figures: {e}"
