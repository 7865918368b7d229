"""`bnlab reproduce`: every finding of the weight-decay and batch-norm posts, one command, one report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import BnlabError
from ..options import OptionMeta
from ..reproduce.plan import SCALES
from ..reproduce.run import ReproduceOptions, run_reproduce
from .common import OutPath, force_option, quiet_option
from .options import options_from

# ReproduceOptions's fields carry no metadata (that module belongs to the pipeline): their words live here,
# their defaults in the dataclass.
_WORDS = {
    "scale": OptionMeta(choices=SCALES, help="smoke: synthetic data, tiny nets (checks the pipeline, verdicts "
                        "meaningless); cpu: CIFAR-10 subsets, widths 8-16 (~20 min on 2 cores); full: the posts' "
                        "settings (GPU)."),
    "data_dir": OptionMeta(path=True, help="CIFAR-10 folder (cifar-10-batches-py) or tarball; default: $BNLAB_DATA "
                           "or ~/.cache/bnlab."),
    "threads": OptionMeta(help="Torch threads of every stage, fixed whatever --jobs is and part of each stage's key, "
                          "so a stage's result does not depend on --jobs."),
    "jobs": OptionMeta(flags=("--jobs", "-j"), help="Stages run at once, in worker processes (default: the CPU cores "
                       "/ --threads; 1 on a GPU)."),
    "figures": OptionMeta(flags=("--no-figures",), help="Write the report without drawing figures."),
    "device": OptionMeta(help="cpu, cuda, cuda:N or auto (cuda if available)."),
}


@click.command("reproduce")
@click.argument("targets", nargs=-1)
@options_from(ReproduceOptions, only=("scale", "data_dir"), changes=_WORDS)
@click.option("--out", "-o", "out", type=OutPath(), required=True,
              help="Reproduction folder: a new or empty one, or one of an earlier `bnlab reproduce` (continued: "
                   "finished stages are reused).")
@options_from(ReproduceOptions, only=("threads", "jobs", "figures"), changes=_WORDS)
@click.option("--merge", is_flag=True, help="TARGETS are the folders of parts run separately (their report.json "
              "and figures suffice): merge them into one report in OUT; parts of other scales, versions or data, "
              "or deciding a finding differently, are refused.")
@click.option("--widths", default=None, metavar="W,W,...",
              help="The width trend of F7 and F9: one reproduction per width of the batch-norm post's simple nets "
                   "(OUT/width_W, everything else as --scale says), then OUT/width_trend.json, .md and .png (share "
                   "and gap against width). TARGETS: F7, F9 or both (default).")
@force_option
@options_from(ReproduceOptions, only=("device",), changes=_WORDS)
@quiet_option
def command(targets: tuple[str, ...], out: str, force: bool, quiet: bool, merge: bool, widths: str | None,
            **options: Any) -> None:
    """Run what TARGETS need (all | weight-decay | batch-norm | finding ids such as F2 F9; default all) and
    write OUT/report.md, report.html and report.json: one row per finding, PASS/FAIL against fixed thresholds
    (UNDECIDED where the scale is too small to test the claim).

    Interrupted or partial runs continue where they stopped when rerun with the same --out. With --merge,
    TARGETS are reproduction folders to combine: `bnlab reproduce --merge PART_A PART_B --out OUT`.
    """
    if merge and widths is not None:
        raise BnlabError("--merge combines finished parts and --widths runs a width trend; use one of them")
    if widths is not None:
        _trend(targets, widths, out, force, quiet, options)
        return
    if merge:
        from ..reproduce.merge import merge_reports

        record = merge_reports(list(targets), out)
        for f in record["findings"]:
            click.echo(f"{f['id']:<4}  {f['verdict']:<9}  {f['title']}: {f['measured']}")
        click.echo(f"wrote {Path(out) / 'report.md'}, report.html, report.json (merged from {len(targets)} parts)")
        return
    opts = ReproduceOptions(targets=targets or ReproduceOptions.targets, **options)
    opts.validate()
    result = run_reproduce(opts, out, force=force, quiet=quiet)
    width = max(len(f.id) for f in result.findings)
    for f in result.findings:
        click.echo(f"{f.id:<{width}}  {f.verdict:<9}  {f.title}: {f.measured}")
    click.echo(f"wrote {Path(out) / 'report.md'}, report.html, report.json")


def _trend(targets: tuple[str, ...], widths: str, out: str, force: bool, quiet: bool, options: dict[str, Any]) -> None:
    from ..reproduce.trend import parse_widths, trend_findings, width_trend
    from ..reproduce.trend_report import table

    ws, findings = parse_widths(widths), trend_findings(targets)
    result = width_trend(out, ws, findings=findings, force=force, quiet=quiet, **options)
    click.echo(table(result.record))
    click.echo(f"wrote {Path(out) / 'width_trend.md'}, width_trend.json, width_trend.png")
