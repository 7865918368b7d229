"""`bnlab reproduce`: every finding of the weight-decay and batch-norm posts, one command, one report."""
from __future__ import annotations

from pathlib import Path

import click

from ..reproduce.plan import SCALES
from ..reproduce.run import ReproduceOptions, run_reproduce
from .common import OutPath, device_option, force_option, quiet_option


@click.command("reproduce")
@click.argument("targets", nargs=-1)
@click.option("--scale", type=click.Choice(SCALES), default="cpu", show_default=True,
              help="smoke: synthetic data, tiny nets (checks the pipeline, verdicts meaningless); cpu: CIFAR-10 "
                   "subsets, widths 8-16 (~20 min on 2 cores); full: the posts' settings (GPU).")
@click.option("--data-dir", type=click.Path(), default=None,
              help="CIFAR-10 folder (cifar-10-batches-py) or tarball; default: $BNLAB_DATA or ~/.cache/bnlab.")
@click.option("--out", "-o", "out", type=OutPath(), required=True,
              help="Reproduction folder: a new or empty one, or one of an earlier `bnlab reproduce` (continued: "
                   "finished stages are reused).")
@click.option("--threads", type=int, default=1, show_default=True, help="Torch threads of every stage, fixed "
              "whatever --jobs is and part of each stage's key, so a stage's result does not depend on --jobs.")
@click.option("--jobs", "-j", type=int, default=None,
              help="Stages run at once, in worker processes (default: the CPU cores / --threads; 1 on a GPU).")
@click.option("--no-figures", is_flag=True, help="Write the report without drawing figures.")
@click.option("--merge", is_flag=True, help="TARGETS are the folders of parts run separately (their report.json "
              "and figures suffice): merge them into one report in OUT; parts of other scales, versions or data, "
              "or deciding a finding differently, are refused.")
@force_option
@device_option
@quiet_option
def command(targets: tuple[str, ...], scale: str, data_dir: str | None, out: str, jobs: int | None, threads: int,
            no_figures: bool, merge: bool, force: bool, device: str, quiet: bool) -> None:
    """Run what TARGETS need (all | weight-decay | batch-norm | finding ids such as F2 F9; default all) and
    write OUT/report.md, report.html and report.json: one row per finding, PASS/FAIL against fixed thresholds
    (UNDECIDED where the scale is too small to test the claim).

    Interrupted or partial runs continue where they stopped when rerun with the same --out. With --merge,
    TARGETS are reproduction folders to combine: `bnlab reproduce --merge PART_A PART_B --out OUT`.
    """
    if merge:
        from ..reproduce.merge import merge_reports

        record = merge_reports(list(targets), out)
        for f in record["findings"]:
            click.echo(f"{f['id']:<4}  {f['verdict']:<9}  {f['title']}: {f['measured']}")
        click.echo(f"wrote {Path(out) / 'report.md'}, report.html, report.json (merged from {len(targets)} parts)")
        return
    opts = ReproduceOptions(targets=targets or ("all",), scale=scale, data_dir=data_dir, device=device, jobs=jobs,
                            threads=threads, figures=not no_figures)
    opts.validate()
    result = run_reproduce(opts, out, force=force, quiet=quiet)
    width = max(len(f.id) for f in result.findings)
    for f in result.findings:
        click.echo(f"{f.id:<{width}}  {f.verdict:<9}  {f.title}: {f.measured}")
    click.echo(f"wrote {Path(out) / 'report.md'}, report.html, report.json")
