"""`bnlab sweep`: a resumable, parallel grid of training runs and its lr*wd-grouped summary."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import BnlabError
from ..sweep import (
    Grid,
    canonical_key,
    format_summary,
    parse_grid,
    parse_value,
    read_grid_file,
    run_sweep,
    summarise_sweep,
)
from .common import device_option, quiet_option


@click.command("sweep")
@click.option("--grid", "grid_spec", default=None,
              help='Axes, e.g. "lr=0.1,0.2,0.4 wd=1.25e-4,2.5e-4,5e-4 momentum=0.9" (see bnlab.sweep).')
@click.option("--grid-file", type=click.Path(), default=None, help="A grid.json (as written into --out) instead "
              "of --grid: how a cluster job array runs single points.")
@click.option("--out", "out_dir", type=click.Path(), required=True, help="Sweep directory.")
@click.option("--variant", default=None, help="Training variant of every point (bn, no_bn, ...).")
@click.option("--width", type=int, default=None)
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--lr-schedule", default=None, help="piecewise, exp or const.")
@click.option("--dataset", default=None, help="cifar10 or synthetic.")
@click.option("--data-dir", type=click.Path(), default=None)
@click.option("--subset", type=int, default=None)
@click.option("--test-subset", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--log-every", type=int, default=None)
@click.option("--set", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any other train option for every point (same keys as the grid), repeatable.")
@click.option("--jobs", "-j", type=int, default=1, show_default=True, help="Points trained in parallel processes.")
@click.option("--retries", type=int, default=1, show_default=True, help="Extra attempts for a crashing point.")
@click.option("--point", "points", type=int, multiple=True, help="Run only these point indices (repeatable).")
@click.option("--plan-only", is_flag=True, help="Write grid.json and list the points; train nothing.")
@click.option("--summary-only", is_flag=True, help="Summarise what is there; train nothing.")
@click.option("--summary/--no-summary", default=True, show_default=True, help="Write and print the summary.")
@device_option
@quiet_option
def command(grid_spec: str | None, grid_file: str | None, out_dir: str, variant: str | None, extra: tuple[str, ...],
            jobs: int, retries: int, points: tuple[int, ...], plan_only: bool, summary_only: bool, summary: bool,
            device: str, quiet: bool, **train_options: object) -> None:
    """Train every point of a hyper-parameter grid into OUT/points/NAME and summarise by lr*wd.

    Rerunning skips finished points and resumes crashed ones.
    """
    out = Path(out_dir)
    if (grid_spec is None) == (grid_file is None):
        if grid_spec is None and (out / "grid.json").is_file():
            grid_file = str(out / "grid.json")
        else:
            raise click.UsageError("give exactly one of --grid and --grid-file")
    base = {k: v for k, v in train_options.items() if v is not None}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise BnlabError(f"--set {item!r}: expected KEY=VALUE")
        key = canonical_key(key)
        base[key] = parse_value(key, value)
    if grid_file is not None:
        grid = read_grid_file(grid_file)
        if base or variant:
            raise click.UsageError("--grid-file carries its own train options; drop the others")
    else:
        grid = Grid(axes=parse_grid(grid_spec or ""), base=base, variant=variant)
    if plan_only:
        from ..sweep import prepare_sweep_dir
        for p in prepare_sweep_dir(grid, out):
            click.echo(f"{p.index}\t{p.name}")
        click.echo(f"wrote {out / 'grid.json'}")
        return
    if not summary_only:
        outcome = run_sweep(grid, out, jobs=jobs, device=device, retries=retries, only=list(points) or None,
                            quiet=quiet)
        if not quiet:
            click.echo(f"sweep: {len(outcome.ran)} run, {len(outcome.skipped)} already done, "
                       f"{len(outcome.failed)} failed")
        for i, msg in sorted(outcome.failed.items()):
            click.echo(f"point {i} failed: {msg}", err=True)
    if summary or summary_only:
        s = summarise_sweep(out, grid)
        if not quiet:
            click.echo(format_summary(s))
            click.echo(f"wrote {out / 'summary.csv'}, {out / 'summary.json'}")
    if not summary_only and outcome.failed:
        raise BnlabError(f"{len(outcome.failed)} point(s) failed; rerun the same command to retry them")
