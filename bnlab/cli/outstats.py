"""`bnlab outstats CKPT`: output-statistic gradients, perturbations, spans and the projected Hessian."""
from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from ..curvature import DEFAULT_BATCH_SIZE, DEFAULT_NUM_SAMPLES
from ..errors import BnlabError
from ..outstats import MOMENTS, OutstatsOptions, compute_outstats
from .common import data_dir_option, device_option, int_list, prepare_out_dir, quiet_option


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
@click.option("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, show_default=True,
              help="Fixed class-balanced evaluation set (as `bnlab hessian`).")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--bn-mode", type=click.Choice(["batch", "running"]), default=None,
              help="BN statistics (default batch; not allowed for frozen/no-BN models).")
@click.option("--loss-scale", type=click.Choice(["mean", "batch-sum"]), default="mean", show_default=True,
              help="Hessian units: mean loss, or loss summed over a batch (the post's).")
@click.option("--tol", type=float, default=1e-3, show_default=True, help="Eigensolver relative tolerance.")
@click.option("--hist-layers", default=None, help="Comma-separated layers for activation histograms "
              "(default: every parameterised top-level layer and logits).")
@click.option("--no-histograms", is_flag=True, help="Skip activation histograms (at init and now).")
@click.option("--seed", type=int, default=0, show_default=True, help="Evaluation-set and random-direction seed.")
@click.option("--out", "-o", required=True, type=click.Path(), help="Output directory.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty output directory.")
@data_dir_option
@device_option
@quiet_option
def command(ckpt: str, stats: str, module: str, channels: str | None, moments: str, delta: float,
            eigvecs: str | None, num_eigs: int, project: bool, num_samples: int, batch_size: int,
            bn_mode: str | None, loss_scale: str, tol: float, hist_layers: str | None, no_histograms: bool,
            seed: int, out: str, force: bool, data_dir: str | None, device: str, quiet: bool) -> None:
    """Gradients of per-channel output statistics of CKPT (NOTES §2), their per-layer split, the
    δ-step perturbation test, overlaps of Hessian eigenvectors with the gradient spans and the
    Hessian with those spans projected out. Writes outstats.json and outstats.pt to --out."""
    if num_eigs < 0:
        raise BnlabError(f"--num-eigs must be non-negative, got {num_eigs}")
    opts = OutstatsOptions(
        stats=tuple(s.strip() for s in stats.split(",") if s.strip()), module=module,
        channels=int_list(channels, "--channels"), moments=moments, delta=delta, eigvecs=eigvecs,
        num_eigs=num_eigs, project=project, num_samples=num_samples, batch_size=batch_size, bn_mode=bn_mode,
        loss_scale=loss_scale, tol=tol, data_dir=data_dir, device=device, seed=seed,
        histograms=not no_histograms,
        hist_layers=tuple(hist_layers.split(",")) if hist_layers else None, quiet=quiet)
    out_dir = prepare_out_dir(out, force=force)
    summary, tensors = compute_outstats(ckpt, opts)
    (out_dir / "outstats.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    torch.save(tensors, out_dir / "outstats.pt")
    _echo_summary(summary, out_dir)


def _echo_summary(s: dict, out_dir: Path) -> None:
    norms = s["grad_norms"]
    for stat, vals in norms.items():
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
