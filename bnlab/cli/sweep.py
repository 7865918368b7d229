"""`bnlab sweep`: a resumable, parallel grid of training runs and its lr*wd-grouped summary."""
from __future__ import annotations

import os
from pathlib import Path

import click

from .. import validate as check
from ..config import DataSpec, TrainConfig
from ..errors import BnlabError
from ..models import ModelSpec
from ..sweep import (
    Grid,
    canonical_key,
    format_summary,
    parse_grid,
    parse_value,
    prepare_sweep_dir,
    read_grid_file,
    run_sweep,
    summarise_sweep,
)
from ..sweep.runner import GRID_FILE
from .common import OutPath, device_option, quiet_option
from .options import options_from


@click.command("sweep")
@click.argument("sweep_dir", required=False, type=OutPath())
@click.option("--grid", "grid_spec", default=None,
              help='Axes, e.g. "lr=0.1,0.2,0.4 wd=1.25e-4,2.5e-4,5e-4 momentum=0.9" (see bnlab.sweep).')
@click.option("--grid-file", type=click.Path(), default=None, help="A grid.json (as written into the sweep "
              "folder) instead of --grid: how a cluster job array runs single points.")
@click.option("--out", "-o", "out_dir", type=OutPath(), default=None,
              help="Sweep directory (or give it as the first argument).")
@options_from(Grid, only=("variant",))
@options_from(ModelSpec, only=("width",), overrides=True)
@options_from(TrainConfig, only=("epochs", "batch_size", "lr_schedule"), overrides=True)
@options_from(DataSpec, only=("dataset", "data_dir", "subset", "test_subset"), overrides=True)
@options_from(TrainConfig, only=("seed", "log_every"), overrides=True)
@click.option("--set", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any other train option for every point (same keys as the grid), repeatable.")
@options_from(Grid, only=("threads",), overrides=True)
@click.option("--jobs", "-j", type=int, default=None,
              help="Points trained at once in worker processes (default: the number of CPU cores / --threads).")
@click.option("--worker", is_flag=True, help="Share the sweep folder with other `bnlab sweep DIR --worker` "
              "processes (e.g. one per GPU or node): each claims the next unfinished point.")
@click.option("--retries", type=int, default=1, show_default=True, help="Extra attempts for a crashing point.")
@click.option("--point", "points", type=int, multiple=True, help="Run only these point indices (repeatable).")
@click.option("--plan-only", is_flag=True, help="Write grid.json and list the points; train nothing.")
@click.option("--summary-only", is_flag=True, help="Summarise what is there; train nothing.")
@click.option("--summary/--no-summary", default=True, show_default=True, help="Write and print the summary.")
@device_option
@quiet_option
def command(sweep_dir: str | None, grid_spec: str | None, grid_file: str | None, out_dir: str | None,
            variant: str | None, extra: tuple[str, ...], threads: int | None, jobs: int | None, worker: bool,
            retries: int, points: tuple[int, ...], plan_only: bool, summary_only: bool, summary: bool,
            device: str, quiet: bool, **train_options: object) -> None:
    """Train every point of a hyper-parameter grid into DIR/points/NAME and summarise by lr*wd.

    Rerunning skips finished points and resumes crashed ones.
    """
    if sweep_dir and out_dir and Path(sweep_dir) != Path(out_dir):
        raise click.UsageError("give the sweep directory once (as DIR or --out)")
    out = Path(sweep_dir or out_dir or "")
    if not (sweep_dir or out_dir):
        raise click.UsageError("name the sweep directory (DIR or --out DIR)")
    if retries < 0:
        raise BnlabError(f"--retries must be non-negative, got {retries}")
    if jobs is not None:
        check.integer("--jobs", jobs, 1, check.MAX_WORKERS)
    grid = _grid(out, grid_spec, grid_file, variant, extra, threads, train_options)
    if plan_only:
        for p in prepare_sweep_dir(grid, out):
            click.echo(f"{p.index}\t{p.name}")
        click.echo(f"wrote {out / GRID_FILE}")
        return
    outcome = None
    if not summary_only:
        jobs = jobs or max(1, (os.cpu_count() or 1) // grid.threads)
        outcome = run_sweep(grid, out, jobs=jobs, device=device, retries=retries, only=list(points) or None,
                            quiet=quiet, worker=worker)
        if not quiet:
            click.echo(f"sweep: {len(outcome.ran)} run, {len(outcome.skipped)} already done, "
                       f"{len(outcome.claimed)} being run by other workers, {len(outcome.failed)} failed")
        for i, msg in sorted(outcome.failed.items()):
            click.echo(f"point {i} failed: {msg}", err=True)
    if summary or summary_only:
        s = summarise_sweep(out, grid)
        if not quiet:
            click.echo(format_summary(s))
            click.echo(f"wrote {out / 'summary.csv'}, {out / 'summary.json'}")
    if outcome is not None and outcome.failed:
        raise BnlabError(f"{len(outcome.failed)} point(s) failed; rerun the same command to retry them")


def _grid(out: Path, grid_spec: str | None, grid_file: str | None, variant: str | None, extra: tuple[str, ...],
          threads: int | None, train_options: dict[str, object]) -> Grid:
    """The sweep's grid: from --grid (+ options), from --grid-file, or the folder's own grid.json."""
    if grid_spec is not None and grid_file is not None:
        raise click.UsageError("give one of --grid and --grid-file")
    if grid_spec is None and grid_file is None:
        if not (out / GRID_FILE).is_file():
            raise click.UsageError(f"give --grid (or --grid-file); {out} holds no {GRID_FILE} to continue")
        grid_file = str(out / GRID_FILE)
    base = {k: v for k, v in train_options.items() if v is not None}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise BnlabError(f"--set {item!r}: expected KEY=VALUE")
        key = canonical_key(key)
        base[key] = parse_value(key, value)
    if grid_file is not None:
        if base or variant or threads is not None:
            raise click.UsageError("--grid-file carries its own train options and threads; drop the others")
        grid = read_grid_file(grid_file)
    else:
        grid = Grid(axes=parse_grid(grid_spec or ""), base=base, variant=variant,
                    threads=1 if threads is None else threads)
    grid.validate()
    return grid
