"""`bnlab dynamics` as a function: options → `run_dynamics(run_dir, options)` → `DynamicsResult.write(out)`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import validate as check
from .analysis import Report, analyse_run
from .invariance import DEFAULT_COS_TOL
from .report import write_report


@dataclass(frozen=True)
class DynamicsOptions:
    layers: tuple[str, ...] | None = None  # names, module prefixes or globs; None: all
    channels: bool = False  # also per output channel (run trained with --log-channels)
    window: float = 0.25  # final fraction of logged steps over which angles are averaged (RMS)
    eq_tol: float = 0.15  # relative band around the prediction that counts as "at equilibrium"
    cos_tol: float = DEFAULT_COS_TOL  # median |cos(w, g)| below which a tensor counts as scale-invariant
    checkpoint_check: bool = True  # also the Euler identity on the newest checkpoint (float64)

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
