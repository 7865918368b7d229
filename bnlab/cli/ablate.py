"""`bnlab ablate --out DIR`: Page's bag-of-tricks steps one at a time, several seeds each."""
from __future__ import annotations

from typing import Any

import click

from ..ablate import AblationOptions, run_ablation
from ..config import DataSpec, TrainConfig
from ..device import resolve_device
from ..models import ModelSpec
from .common import device_option, quiet_option
from .options import options_from


@click.command("ablate")
@click.option("--out", "-o", "out", type=click.Path(), required=True,
              help="Ablation folder (created; rerunning the same command reuses finished runs and resumes the rest).")
@options_from(AblationOptions, only=("steps", "seeds", "epoch_scale", "ema_momentum"))
@options_from(ModelSpec, only=("width",), overrides=True)
@options_from(DataSpec, only=("dataset", "data_dir", "subset", "test_subset"), overrides=True)
@options_from(TrainConfig, only=("batch_size", "amp"), overrides=True)
@options_from(AblationOptions, only=("retries",))
@device_option
@quiet_option
def command(out: str, steps: tuple[str, ...] | None, seeds: tuple[int, ...], epoch_scale: float,
            ema_momentum: float | None, retries: int, device: str, quiet: bool, **overrides: Any) -> None:
    """Train the post's nine steps (baseline, max-pool before BN, label smoothing, CELU, ghost BN, frozen
    BN scales, patch whitening, EMA, TTA), each with all the tricks before it, once per seed; write
    ablation.json and ablation.csv (accuracy mean ± s.e., training time per run and per step).
    Plot with figures/plot_ablation.py."""
    options = AblationOptions(steps=steps, seeds=seeds, epoch_scale=epoch_scale, ema_momentum=ema_momentum,
                              retries=retries,
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
