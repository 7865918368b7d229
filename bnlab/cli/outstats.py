"""`bnlab outstats CKPT`: output-statistic gradients, perturbations, spans and the projected Hessian."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..io.eigvecs import eigvecs_file
from ..outstats import MOMENTS
from ..outstats.run import OutstatsOptions, OutstatsResult, check_inputs, run_outstats
from .common import (
    analyse_checkpoint_in_group,
    device_option,
    eval_options,
    eval_spec,
    force_option,
    int_list,
    loss_scale_option,
    out_option,
    quiet_option,
    str_list,
    tol_option,
)


@click.command("outstats")
@click.argument("ckpt", type=click.Path())
@click.option("--stats", default="mean,var,skew", show_default=True,
              help="Per-channel statistics: any of mean,var,skew (bases are built in that order).")
@click.option("--module", default="logits", show_default=True,
              help="logits (centred over classes), logits_raw, or a module name (prep, layer1, layer3_res.b, ...).")
@click.option("--channels", default=None, help="Comma-separated channels of the module (default: all).")
@click.option("--moments", type=click.Choice(MOMENTS), default="per-batch", show_default=True,
              help="per-batch: statistics within each fixed batch, averaged (the post); pooled: over the whole set.")
@click.option("--delta", type=float, default=0.01, show_default=True, help="Perturbation step, relative to ‖θ‖.")
@click.option("--eigvecs", "eigvecs", type=click.Path(), default=None,
              help="A `bnlab hessian` output dir: overlaps of its eigenvectors with the spans.")
@click.option("--num-eigs", type=int, default=0, show_default=True,
              help="Without --eigvecs: compute this many top Hessian eigenvectors here. With --project: "
                   "how many projected eigenvalues (default: as many as eigenvectors, at least 1).")
@click.option("--project", is_flag=True, help="Top eigenvalues of (I-P)H(I-P), P = projector on the full span.")
@eval_options
@loss_scale_option
@tol_option
@click.option("--hist-layers", default=None, help="Comma-separated layers for activation histograms "
              "(default: every parameterised top-level layer and logits).")
@click.option("--no-histograms", is_flag=True, help="Skip activation histograms (at init and now).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random directions and probes.")
@out_option()
@force_option
@device_option
@quiet_option
def command(ckpt: str, stats: str, channels: str | None, hist_layers: str | None, no_histograms: bool, out: str,
            force: bool, device: str, quiet: bool, **options: Any) -> None:
    """Gradients of per-channel output statistics of CKPT (see docs/background.md), their per-layer
    split, the δ-step perturbation test, overlaps of Hessian eigenvectors with the gradient spans and
    the Hessian with those spans projected out. Writes outstats.json and outstats.pt to --out.
    Under `torchrun --nproc-per-node N -m bnlab outstats ...` gradients and Hessian products are
    sharded over the N processes by whole batches; rank 0 writes."""
    opts = OutstatsOptions(eval=eval_spec(options), stats=str_list(stats) or (),
                           channels=int_list(channels, "--channels"), hist_layers=str_list(hist_layers),
                           histograms=not no_histograms, **options)
    opts.validate()
    result = analyse_checkpoint_in_group(ckpt, opts.eval, device, out, force, quiet,  # torchrun: rank 0 writes
                                         lambda ctx: check_inputs(ctx, opts),
                                         lambda ctx, q: run_outstats(ctx, opts, quiet=q),
                                         inputs=(("eigenvectors", opts.eigvecs and eigvecs_file(opts.eigvecs)),))
    if result is not None:
        _echo_summary(result, Path(out))


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
