"""`bnlab hessian CKPT`: top eigenpairs (and optionally spectral density and trace) of a checkpoint's
training-loss Hessian on a fixed evaluation set; writes hessian.json and eigvecs.pt."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from ..curvature.hvp import HVP_METHODS
from ..curvature.lanczos import EIG_METHODS, WHICH
from ..curvature.operator import LOSS_SCALES
from ..curvature.report import analyse_checkpoint, write_outputs
from ..curvature.source import DEFAULT_BATCH_SIZE, DEFAULT_NUM_SAMPLES
from .common import data_dir_option, device_option, prepare_out_dir, quiet_option


@click.command("hessian")
@click.argument("ckpt", type=click.Path())
@click.option("--top-k", type=int, default=20, show_default=True, help="Number of eigenpairs (0: none).")
@click.option("--which", type=click.Choice(WHICH), default="LA", show_default=True,
              help="LA largest algebraic, SA smallest, LM largest magnitude.")
@click.option("--tol", type=float, default=1e-4, show_default=True, help="Converged when ‖Hv−λv‖ ≤ tol·|λ|.")
@click.option("--bn-mode", type=click.Choice(["batch", "running"]), default=None,
              help="BN statistics: batch (as in training; default for BN models) or running (eval).")
@click.option("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, show_default=True,
              help="Size of the fixed class-balanced evaluation set drawn from the training data.")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--loss-scale", type=click.Choice(LOSS_SCALES), default="mean", show_default=True,
              help="mean: mean loss over the set; batch-sum: summed over a batch (the post's units).")
@click.option("--weight-decay-term", is_flag=True, help="Add the run's wd·I (all parameters are decayed).")
@click.option("--params", default=None, help="Parameter globs, comma-separated, '!' excludes (e.g. 'layer3*').")
@click.option("--density", is_flag=True, help="Also the spectral density by stochastic Lanczos quadrature.")
@click.option("--density-probes", type=int, default=10, show_default=True)
@click.option("--density-steps", type=int, default=64, show_default=True)
@click.option("--trace", is_flag=True, help="Also the trace by Hutch++.")
@click.option("--trace-matvecs", type=int, default=60, show_default=True)
@click.option("--eigensolver", type=click.Choice(EIG_METHODS), default="lanczos", show_default=True,
              help="Thick-restart Lanczos (ours) or ARPACK (scipy eigsh).")
@click.option("--ncv", type=int, default=None, help="Krylov subspace size (default max(2k+10, 20)).")
@click.option("--max-hvps", type=int, default=None, help="Stop after this many HVPs (unconverged pairs flagged).")
@click.option("--hvp-method", type=click.Choice(HVP_METHODS), default="double_backward", show_default=True)
@click.option("--cache-graphs", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Keep every batch's gradient graph between HVPs (faster, memory O(N)); auto: if it fits "
                   "in half the free memory.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Start vector and probe seed.")
@click.option("--eval-seed", type=int, default=0, show_default=True, help="Seed of the evaluation-set draw.")
@click.option("--warm-start", type=click.Path(), default=None, help="eigvecs.pt of an earlier run to start from.")
@click.option("--no-verify", is_flag=True, help="Report Lanczos residual estimates instead of measuring (k HVPs).")
@click.option("--out", "out", type=click.Path(), default=None, help="Output dir (default: CKPT_DIR/hessian_STEM).")
@click.option("--force", is_flag=True, help="Overwrite a non-empty output directory.")
@data_dir_option
@device_option
@quiet_option
def command(ckpt: str, top_k: int, which: str, tol: float, bn_mode: str | None, num_samples: int, batch_size: int,
            loss_scale: str, weight_decay_term: bool, params: str | None, density: bool, density_probes: int,
            density_steps: int, trace: bool, trace_matvecs: int, eigensolver: str, ncv: int | None,
            max_hvps: int | None, hvp_method: str, cache_graphs: str, dtype: str, seed: int, eval_seed: int,
            warm_start: str | None, no_verify: bool, out: str | None, force: bool, data_dir: str | None,
            device: str, quiet: bool) -> None:
    """Hessian of CKPT's training loss: top eigenpairs by Lanczos, optionally density and trace.

    Every setting (BN mode, units, evaluation set, checkpoint hash) is recorded in hessian.json.
    Computing never changes the model (parameters and BN buffers stay bit-identical).
    """
    from ..checkpoint import load_checkpoint
    from ..device import resolve_device

    dev = resolve_device(device)
    loaded = load_checkpoint(ckpt, dev)  # fails fast on foreign/truncated files
    out_dir = Path(out) if out else Path(ckpt).parent / f"hessian_{Path(ckpt).stem}"
    out_dir = prepare_out_dir(out_dir, force=force)
    record, result, op = analyse_checkpoint(
        loaded, top_k=top_k, which=which, tol=tol, eigensolver=eigensolver, ncv=ncv, max_hvps=max_hvps,
        verify=not no_verify, density=density, density_probes=density_probes, density_steps=density_steps,
        trace=trace, trace_matvecs=trace_matvecs, seed=seed, warm_start=warm_start, quiet=quiet, device=str(dev),
        num_samples=num_samples, batch_size=batch_size, bn_mode=bn_mode, data_dir=data_dir, params=params,
        loss_scale=loss_scale, weight_decay_term=weight_decay_term, method=hvp_method,
        cache_graphs={"on": True, "off": False}.get(cache_graphs, cache_graphs),
        dtype=getattr(torch, dtype), eval_seed=eval_seed)
    write_outputs(out_dir, record, result, op)
    s = record["settings"]
    click.echo(f"hessian of {ckpt} (bn-mode {s['bn_mode']}, {s['units']}, {s['num_samples']} examples, "
               f"dim {s['dim']})")
    if result is not None:
        lam = ", ".join(f"{v:.4g}" for v in result.eigenvalues[:10].tolist())
        more = " ..." if len(result.eigenvalues) > 10 else ""
        click.echo(f"top-{top_k} {which}: {lam}{more}  [{int(result.converged.sum())}/{top_k} converged, "
                   f"{result.hvp_count} HVPs, {result.wall_time:.1f}s]")
    if "trace" in record:
        click.echo(f"trace: {record['trace']['estimate']:.4g} ± {record['trace']['stderr']:.2g}")
    click.echo(f"wrote {out_dir / 'hessian.json'}")
