"""`bnlab ablate --out DIR`: Page's bag-of-tricks steps one at a time, several seeds each."""
from __future__ import annotations

from typing import Any

import click

from ..ablate import AblationOptions, run_ablation
from ..config import DATASETS
from ..device import resolve_device
from ..recipes import STEP_NAMES
from .common import device_option, int_list, quiet_option, str_list


@click.command("ablate")
@click.option("--out", "-o", "out", type=click.Path(), required=True,
              help="Ablation folder (created; rerunning the same command reuses finished runs and resumes the rest).")
@click.option("--steps", default=None, help=f"Comma-separated steps (default all, in order): {', '.join(STEP_NAMES)}.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds, one run per step each.")
@click.option("--epoch-scale", type=float, default=1.0, show_default=True,
              help="Multiply every step's epochs (rounded, at least 1); the lr knots stretch with them.")
@click.option("--width", type=int, default=None, help="Channels of the prep layer (64 = the post's).")
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="cifar10 (default) or synthetic.")
@click.option("--data-dir", type=click.Path(), default=None, help="CIFAR-10 folder or tarball.")
@click.option("--subset", type=int, default=None, help="Class-balanced training subset size.")
@click.option("--test-subset", type=int, default=None, help="Class-balanced test subset size.")
@click.option("--batch-size", type=int, default=None, help="Batch size (512; ghost BN needs a multiple of 16).")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16"]), default=None, help="auto: bf16 on CUDA only.")
@click.option("--retries", type=int, default=0, show_default=True, help="Retries of a run that crashed.")
@device_option
@quiet_option
def command(out: str, steps: str | None, seeds: str, epoch_scale: float, retries: int, device: str, quiet: bool,
            **overrides: Any) -> None:
    """Train the post's nine steps (baseline, max-pool before BN, label smoothing, CELU, ghost BN, frozen
    BN scales, patch whitening, EMA, TTA), each with all the tricks before it, once per seed; write
    ablation.json and ablation.csv (accuracy mean ± s.e., training time per run and per step).
    Plot with figures/plot_ablation.py."""
    options = AblationOptions(steps=str_list(steps), seeds=int_list(seeds, "--seeds") or (),
                              epoch_scale=epoch_scale, retries=retries,
                              overrides={k: v for k, v in overrides.items() if v is not None})
    result = run_ablation(out, options, device=str(resolve_device(device)), quiet=quiet)
    paths = result.write(out)
    if not quiet:
        click.echo(format_rows(result.rows))
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'step':<16} {'epochs':>6} {'test acc (mean ± s.e.)':>24} {'train s':>9} {'ms/step':>8} {'post s':>6}"]
    for r in rows:
        se = "" if r["test_acc_se"] != r["test_acc_se"] else f" ± {100 * r['test_acc_se']:.2f}"
        lines.append(f"{r['step']:<16} {r['epochs']:>6} {100 * r['test_acc_mean']:>15.2f}%{se:<8} "
                     f"{r['train_s_mean']:>9.1f} {r['ms_per_step_mean']:>8.1f} {r['post_seconds']:>6.0f}")
    return "\n".join(lines)
