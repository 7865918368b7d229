"""`bnlab hessian CKPT`: top eigenpairs (and optionally spectral density and trace) of a checkpoint's
training-loss Hessian (or its Gauss-Newton part, or the residual) on a fixed evaluation set; writes
hessian.json and eigvecs.pt."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import distributed
from ..checkpoint import load_checkpoint
from ..curvature.hessian import HessianOptions, HessianResult, check_inputs, run_hessian
from ..curvature.series import run_hessian_series, series_checkpoints
from ..errors import BnlabError
from ..io.eigvecs import eigvecs_file
from ..rundir import check_out_dir, claim_out_dir
from .common import (
    analyse_checkpoint_in_group,
    analysis_inputs,
    device_option,
    eval_options,
    eval_spec,
    force_option,
    out_option,
    quiet_option,
)
from .options import options_from


@click.command("hessian")
@click.argument("ckpt", type=click.Path())
@options_from(HessianOptions, only=("matrix", "top_k", "which", "tol"))
@eval_options
@options_from(HessianOptions, exclude=("eval", "matrix", "top_k", "which", "tol"))
@click.option("--compare-cold", is_flag=True, help="RUN_DIR only: also solve every checkpoint from a random start, "
              "to measure the products the warm starts save.")
@out_option()
@force_option
@device_option
@quiet_option
def command(ckpt: str, out: str, force: bool, device: str, quiet: bool, compare_cold: bool, **options: Any) -> None:
    """Hessian of CKPT's training loss: top eigenpairs by Lanczos, optionally density and trace.

    --matrix ggn / residual: the same for the Gauss-Newton matrix G (recorded with the top eigenvalues
    of its class-means term) or the residual R = H - G, on the same batches, BN mode and units.

    CKPT may be a run directory: then every saved checkpoint (ckpt_epoch_NNN.pt, train with
    --save-every) is analysed in order, each warm-started from the previous one, and
    hessian_series.json follows λ1..λk and η·λ1 against the edge of stability along training.

    Every setting (BN mode, units, evaluation set, checkpoint hash) is recorded in hessian.json.
    Computing never changes the model (parameters and BN buffers stay bit-identical).
    Under `torchrun --nproc-per-node N -m bnlab hessian ...` the fixed batches are sharded over the
    N processes (one all_reduce per HVP); rank 0 writes.
    """
    opts = HessianOptions(eval=eval_spec(options), **options)
    opts.validate()
    if Path(ckpt).is_dir():
        if distributed.env_world_size() > 1:
            raise BnlabError("a checkpoint series runs in one process; start it without torchrun")
        _series(ckpt, opts, out, force, device, quiet, compare_cold)
        return
    if compare_cold:
        raise BnlabError("--compare-cold is for a run directory (a series of checkpoints)")
    result = analyse_checkpoint_in_group(ckpt, opts.eval, device, out, force, quiet,  # torchrun: rank 0 writes
                                         lambda ctx: check_inputs(ctx, opts),
                                         lambda ctx, q: run_hessian(ctx, opts, quiet=q),
                                         inputs=(("warm start", warm_start_file(opts)),))
    if result is not None:
        _echo_summary(ckpt, result, opts, Path(out))


def warm_start_file(opts: HessianOptions) -> Path | None:
    """The eigvecs.pt a warm start reads (an input the output must stay apart from)."""
    return None if opts.warm_start is None else eigvecs_file(opts.warm_start)


def _series(run_dir: str, opts: HessianOptions, out: str, force: bool, device: str, quiet: bool,
            compare_cold: bool) -> None:
    if opts.top_k < 1:
        raise BnlabError("a curvature series needs --top-k >= 1")
    if opts.warm_start is not None:  # refused here, before --force empties anything
        raise BnlabError("--warm-start is automatic along a series (each checkpoint starts from the previous one)")
    first = series_checkpoints(run_dir)[0]  # refuses a folder without saved checkpoints before --out is touched
    inputs = analysis_inputs(load_checkpoint(first), opts.eval, ("run directory", run_dir))
    check_out_dir(out, force=force, inputs=inputs)
    with claim_out_dir(out, force=force, inputs=inputs) as out_dir:
        result = run_hessian_series(run_dir, opts, device=device, quiet=quiet, compare_cold=compare_cold)
        result.write(out_dir)
    rec = result.record
    click.echo(f"hessian series of {run_dir}: {len(rec['checkpoints'])} checkpoints, threshold "
               f"2(1+μ)/(1+2μ) = {rec['threshold']:.4g} (μ = {rec['momentum']:g})")
    for e in rec["checkpoints"]:
        cold = f" (cold {e['hvps_cold']})" if e["hvps_cold"] is not None else ""
        click.echo(f"  epoch {e['epoch']:3d} lr {e['lr']:.4g}: λ1 {e['eigenvalues'][0]:.4g}, η·λ1 "
                   f"{e['eta_lambda1']:.3g} = {e['ratio_to_threshold']:.3g} x threshold, {e['hvps']} HVPs{cold}")
    click.echo(f"wrote {Path(out) / 'hessian_series.json'}")


def _echo_summary(ckpt: str, result: HessianResult, opts: HessianOptions, out: Path) -> None:
    r = result.record
    s = r["settings"]
    matrix = {"hessian": "hessian", "ggn": "Gauss-Newton matrix", "residual": "residual H - G"}[opts.matrix]
    click.echo(f"{matrix} of {ckpt} (bn-mode {s['bn_mode']}, {s['units']}, {s['num_samples']} examples, "
               f"dim {s['dim']})")
    if result.eigen is not None:
        e = result.eigen
        lam = ", ".join(f"{v:.4g}" for v in e.eigenvalues[:10].tolist())
        more = " ..." if len(e.eigenvalues) > 10 else ""
        click.echo(f"top-{opts.top_k} {opts.which}: {lam}{more}  [{int(e.converged.sum())}/{opts.top_k} converged, "
                   f"{e.hvp_count} HVPs, {e.wall_time:.1f}s]")
    if "class_means" in r:
        cm = ", ".join(f"{v:.4g}" for v in r["class_means"]["eigenvalues"][:10])
        click.echo(f"class-means term (rank <= {r['class_means']['rank_bound']}): {cm}")
    if "trace" in r:
        click.echo(f"trace: {r['trace']['estimate']:.4g} ± {r['trace']['stderr']:.2g}")
    click.echo(f"wrote {out / 'hessian.json'}" + (" and eigvecs.pt" if result.eigen is not None else ""))
