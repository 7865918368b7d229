"""`bnlab dynamics` as a function: options → `run_dynamics(run_dir, options)` → `DynamicsResult.write(out)`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import validate as check
from ..options import opt
from .analysis import Report, analyse_run
from .invariance import DEFAULT_COS_TOL
from .report import write_report


@dataclass(frozen=True)
class DynamicsOptions:
    layers: tuple[str, ...] | None = opt(None, multiple=True, help="Parameters to analyse: names, module prefixes "
                                         "or globs (repeatable or comma-separated).", default_text="all")
    channels: bool = opt(False, help="Also per output channel (needs a run trained with --log-channels).")
    window: float = opt(0.25, help="Final window over which angles are averaged (RMS).",
                        unit="fraction of the logged steps", domain="(0, 1]")
    eq_tol: float = opt(0.15, help="Relative band around the prediction that counts as 'at equilibrium'.",
                        unit="fraction of the predicted angle", domain="(0, 1]")
    cos_tol: float = opt(DEFAULT_COS_TOL, help="Median |cos(w, g)| below which a tensor counts as scale-invariant "
                         "(bf16 runs: ~2e-3).", domain="(0, 1)")
    checkpoint_check: bool = opt(True, flag="--checkpoint-check/--no-checkpoint-check",
                                 help="Also evaluate the Euler identity on the newest checkpoint (float64).")

    def validate(self) -> None:
        check.in_range("--window", self.window, 0.0, 1.0, low_open=True)
        check.in_range("--eq-tol", self.eq_tol, 0.0, 1.0, low_open=True)
        check.in_range("--cos-tol", self.cos_tol, 0.0, 1.0, low_open=True, high_open=True)


@dataclass
class DynamicsResult:
    report: Report

    def write(self, out: str | Path) -> list[Path]:
        """dynamics_summary.json, dynamics_layers.csv, dynamics_series.csv (+ dynamics_channels_summary.csv)."""
        return list(write_report(self.report, Path(out)).values())


def run_dynamics(run_dir: str | Path, opts: DynamicsOptions | None = None) -> DynamicsResult:
    """Measured vs predicted equilibrium of every layer of a run directory (also while it trains)."""
    opts = opts or DynamicsOptions()
    opts.validate()
    report = analyse_run(run_dir, layers=list(opts.layers) if opts.layers else None, channels=opts.channels,
                         check_checkpoint=opts.checkpoint_check, window=opts.window, eq_tol=opts.eq_tol,
                         cos_tol=opts.cos_tol)
    return DynamicsResult(report)
