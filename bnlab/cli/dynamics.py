"""`bnlab dynamics RUN_DIR`: per-layer angular updates and norms vs the weight-decay equilibrium."""
from __future__ import annotations

from typing import Any

import click

from ..dynamics import format_table
from ..dynamics.options import DynamicsOptions, run_dynamics
from ..rundir import check_out_dir, claim_out_dir
from .common import force_option, out_option
from .options import options_from


@click.command("dynamics")
@click.argument("run_dir", type=click.Path())
@options_from(DynamicsOptions)
@out_option()
@force_option
@click.option("--quiet", "-q", is_flag=True, help="Do not print the table.")
def command(run_dir: str, out: str, force: bool, quiet: bool, **options: Any) -> None:
    """Measured vs predicted equilibrium angle per layer of RUN_DIR (works while the run is still training).

    Writes dynamics_summary.json, dynamics_layers.csv (one row per parameter), dynamics_series.csv
    (per logged step: angle, smoothed angle, predicted equilibrium and lagged prediction, norms) and,
    with --channels, dynamics_channels_summary.csv.
    """
    opts = DynamicsOptions(**options)
    opts.validate()
    inputs = [("run directory", run_dir)]
    check_out_dir(out, force=force, inputs=inputs)
    result = run_dynamics(run_dir, opts)  # reads the log: every refusal happens before --out is touched
    with claim_out_dir(out, force=force, inputs=inputs) as out_dir:
        paths = result.write(out_dir)
    if not quiet:
        click.echo(format_table(result.report))
        click.echo(f"wrote {', '.join(str(p) for p in paths)}")
