"""`bnlab dynamics RUN_DIR`: per-layer angular updates and norms vs the weight-decay equilibrium."""
from __future__ import annotations

import click

from ..dynamics import format_table
from ..dynamics.invariance import DEFAULT_COS_TOL
from ..dynamics.options import DynamicsOptions, run_dynamics
from ..rundir import check_out_dir, claim_out_dir
from .common import force_option, out_option


@click.command("dynamics")
@click.argument("run_dir", type=click.Path())
@click.option("--layers", multiple=True, help="Parameters to analyse: names, module prefixes or globs "
              "(repeatable or comma-separated); default all.")
@click.option("--channels", is_flag=True, help="Also per output channel (needs a run trained with --log-channels).")
@click.option("--window", type=float, default=0.25, show_default=True,
              help="Final window (fraction of logged steps) over which angles are averaged (RMS).")
@click.option("--eq-tol", type=float, default=0.15, show_default=True,
              help="Relative band around the prediction that counts as 'at equilibrium'.")
@click.option("--cos-tol", type=float, default=DEFAULT_COS_TOL, show_default=True,
              help="Median |cos(w, g)| below which a tensor counts as scale-invariant (bf16 runs: ~2e-3).")
@click.option("--checkpoint-check/--no-checkpoint-check", default=True, show_default=True,
              help="Also evaluate the Euler identity on the newest checkpoint (float64).")
@out_option()
@force_option
@click.option("--quiet", "-q", is_flag=True, help="Do not print the table.")
def command(run_dir: str, layers: tuple[str, ...], channels: bool, window: float, eq_tol: float, cos_tol: float,
            checkpoint_check: bool, out: str, force: bool, quiet: bool) -> None:
    """Measured vs predicted equilibrium angle per layer of RUN_DIR (works while the run is still training).

    Writes dynamics_summary.json, dynamics_layers.csv (one row per parameter), dynamics_series.csv
    (per logged step: angle, smoothed angle, predicted equilibrium and lagged prediction, norms) and,
    with --channels, dynamics_channels_summary.csv.
    """
    patterns = tuple(p for item in layers for p in item.split(",") if p)
    opts = DynamicsOptions(layers=patterns or None, channels=channels, window=window, eq_tol=eq_tol,
                           cos_tol=cos_tol, checkpoint_check=checkpoint_check)
    opts.validate()
    inputs = [("run directory", run_dir)]
    check_out_dir(out, force=force, inputs=inputs)
    result = run_dynamics(run_dir, opts)  # reads the log: every refusal happens before --out is touched
    with claim_out_dir(out, force=force, inputs=inputs) as out_dir:
        paths = result.write(out_dir)
    if not quiet:
        click.echo(format_table(result.report))
        click.echo(f"wrote {', '.join(str(p) for p in paths)}")
