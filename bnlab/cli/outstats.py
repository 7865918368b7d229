"""`bnlab outstats CKPT`: output-statistic gradients, perturbations, spans and the projected Hessian."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import distributed
from ..context import AnalysisContext
from ..io.eigvecs import eigvecs_file
from ..outstats.run import (
    OutstatsOptions,
    OutstatsResult,
    check_inputs,
    eval_set_mismatch,
    mismatch_warning,
    run_outstats,
)
from .common import (
    analyse_checkpoint_in_group,
    device_option,
    eval_options,
    eval_spec,
    force_option,
    out_option,
    quiet_option,
)
from .options import options_from


@click.command("outstats")
@click.argument("ckpt", type=click.Path())
@options_from(OutstatsOptions, only=("stats", "module", "channels", "moments", "delta", "eigvecs", "num_eigs",
                                     "project"))
@eval_options
@options_from(OutstatsOptions, exclude=("eval", "stats", "module", "channels", "moments", "delta", "eigvecs",
                                        "num_eigs", "project"))
@out_option()
@force_option
@device_option
@quiet_option
def command(ckpt: str, out: str, force: bool, device: str, quiet: bool, **options: Any) -> None:
    """Gradients of per-channel output statistics of CKPT (see docs/background.md), their per-layer
    split, the δ-step perturbation test, overlaps of Hessian eigenvectors with the gradient spans and
    the Hessian with those spans projected out. Writes outstats.json and outstats.pt to --out.
    Under `torchrun --nproc-per-node N -m bnlab outstats ...` gradients and Hessian products are
    sharded over the N processes by whole batches; rank 0 writes."""
    opts = OutstatsOptions(eval=eval_spec(options), **options)
    opts.validate()
    result = analyse_checkpoint_in_group(ckpt, opts.eval, device, out, force, quiet,  # torchrun: rank 0 writes
                                         lambda ctx: _check(ctx, opts),
                                         lambda ctx, q: run_outstats(ctx, opts, quiet=q),
                                         inputs=(("eigenvectors", opts.eigvecs and eigvecs_file(opts.eigvecs)),))
    if result is not None:
        _echo_summary(result, Path(out))


def _check(ctx: AnalysisContext, opts: OutstatsOptions) -> None:
    """The refusals, then (before the long computation) a warning if the eigenvectors' evaluation set is another."""
    ev = check_inputs(ctx, opts)
    mismatch = {} if ev is None else eval_set_mismatch(ev.settings, ctx.settings())
    if mismatch and distributed.is_main():
        click.echo(f"warning: {mismatch_warning(mismatch, str(opts.eigvecs))} (recorded in outstats.json)", err=True)


def _echo_summary(result: OutstatsResult, out_dir: Path) -> None:
    s = result.summary
    for stat, vals in s["grad_norms"].items():
        click.echo(f"‖∇ {stat}‖ per channel: " + " ".join(f"{v:.3g}" for v in vals[:10])
                   + (" ..." if len(vals) > 10 else ""))
    if "perturbation" in s:
        p = s["perturbation"]
        g = sum(r["frac_after_grad"] - r["frac_before"] for r in p["rows"]) / len(p["rows"])
        r = sum(r["frac_after_random"] - r["frac_before"] for r in p["rows"]) / len(p["rows"])
        click.echo(f"δ={p['delta']:g} step (‖step‖={p['step_norm']:.3g}): predicted-as-c fraction "
                   f"+{g:.3f} along ∇mean_c, {r:+.3f} random (mean over classes)")
    sp = s["span"]
    click.echo(f"span dims: means {sp['means_dim']}, all {sp['full_dim']}")
    if "eigen" in s:
        click.echo("overlap with full span: " + " ".join(f"{v:.2f}" for v in s["eigen"]["overlap_full"]))
    if "projected" in s:
        click.echo("projected top eigenvalues: " + " ".join(f"{v:.4g}" for v in s["projected"]["eigenvalues"]))
    click.echo(f"wrote {out_dir / 'outstats.json'} and outstats.pt")
