"""`bnlab train`: train a DavidNet variant into a run directory."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from .. import ddp, distributed
from ..config import DATASETS, SCHEDULES, VARIANTS, make_config
from ..interrupt import Interrupt, signals_interrupt
from ..models import ACTS, MODELS
from ..norms import NORMS
from ..recipes import RECIPES, recipe_config
from ..train import PROGRESS_EVERY_SECONDS, RunResult, TrainingInterrupted, record_active_interrupt, train
from .common import OutPath, device_option, quiet_option


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@click.command("train")
@click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
              help="A whole recipe: baseline (24 epochs, 94%) or bag-of-tricks (Page's post 8, 10 epochs); "
                   "options given too override its settings.")
@click.option("--variant", type=click.Choice(sorted(VARIANTS)), default=None,
              help="Preset normalisation: bn (default), no_bn, frozen_bn, ghost_bn.")
@click.option("--model", type=click.Choice(MODELS), default=None, help="davidnet (default) or simple (post 7).")
@click.option("--width", type=int, default=None, help="Channels of the prep layer (64 = published).")
@click.option("--norm", type=click.Choice(NORMS), default=None, help="Normalisation layer (overrides the preset).")
@click.option("--affine/--no-affine", default=None, help="Learnable norm affine (default per norm).")
@click.option("--act", type=click.Choice(ACTS), default=None, help="Activation.")
@click.option("--act-param", type=float, default=None, help="celu alpha (0.3) / softplus beta (10).")
@click.option("--ghost-splits", type=int, default=None, help="Ghost BN splits (16).")
@click.option("--classifier-scale", type=float, default=None, help="Logit scale (0.125 DavidNet).")
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="cifar10 (default) or synthetic.")
@click.option("--data-dir", type=click.Path(), default=None, help="CIFAR-10 folder or tarball.")
@click.option("--subset", type=int, default=None, help="Class-balanced training subset size.")
@click.option("--test-subset", type=int, default=None, help="Class-balanced test subset size.")
@click.option("--crop/--no-crop", default=None, help="Reflect-pad 4 + random crop.")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flip.")
@click.option("--cutout", type=int, default=None, help="Cutout box size, 0 = off (8).")
@click.option("--epochs", type=int, default=None, help="Epochs (24).")
@click.option("--batch-size", type=int, default=None, help="Batch size (512).")
@click.option("--lr", type=float, default=None, help="Peak lr / lr0 (exp) / constant lr (0.4).")
@click.option("--lr-schedule", type=click.Choice(SCHEDULES), default=None, help="piecewise (default), exp, const.")
@click.option("--lr-knots", default=None, help="Piecewise knots in epochs, e.g. 0,5,24.")
@click.option("--lr-mults", default=None, help="lr multiples at the knots, e.g. 0,1,0.")
@click.option("--momentum", type=float, default=None, help="Momentum (0.9).")
@click.option("--nesterov/--no-nesterov", default=None, help="Nesterov momentum (on).")
@click.option("--wd", "weight_decay", type=float, default=None, help="Weight decay (5e-4).")
@click.option("--label-smoothing", type=float, default=None, help="Label smoothing (0).")
@click.option("--seed", type=int, default=None, help="Seed of init, data order, augmentation (0).")
@click.option("--log-every", type=int, default=None, help="Dynamics log every k steps, 0 = off (1).")
@click.option("--log-channels", is_flag=True, default=None, help="Also log per-output-channel dynamics.")
@click.option("--save-every", type=int, default=None, help="ckpt_epoch_NNN.pt every k epochs (0 = off).")
@click.option("--pool-first/--no-pool-first", default=None, help="Max-pool before the norm (conv-pool-BN-act).")
@click.option("--frozen-scales/--no-frozen-scales", default=None, help="Fix the norms' scales γ at 1 (β learns).")
@click.option("--whiten/--no-whiten", default=None,
              help="Prep layer: fixed 3x3 patch whitening (27 filters) then a learnable 1x1 conv.")
@click.option("--bias-scale", type=float, default=None, help="Biases train with lr x this and wd / this (1; 64).")
@click.option("--ema", "ema_momentum", type=float, default=None,
              help="Evaluate an EMA of the weights with this per-step momentum (0 = off; 0.99).")
@click.option("--ema-every", type=int, default=None, help="Update the EMA every k steps (5).")
@click.option("--tta/--no-tta", default=None, help="Evaluate the mean logits of each image and its mirror.")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16"]), default=None,
              help="auto: bf16 autocast on CUDA only.")
@click.option("--sync-bn", is_flag=True, default=None,
              help="Under torchrun: BN statistics over the global batch (as one process) instead of each "
                   "process's rows (= ghost BN with one split per process).")
@click.option("--out", "out_dir", type=OutPath(), default=None, help="Run directory (required unless --resume).")
@click.option("--resume", "resume_dir", type=OutPath(), default=None,
              help="Continue the run in this directory with its own config.")
@click.option("--force", is_flag=True, help="Empty a non-empty --out directory first.")
@click.option("--progress-every", type=click.FloatRange(min=0, min_open=True), default=PROGRESS_EVERY_SECONDS,
              show_default=True, help="Seconds between progress lines within an epoch when stderr is not a terminal.")
@device_option
@quiet_option
@click.pass_context
def command(ctx: click.Context, recipe: str | None, variant: str | None, out_dir: str | None, resume_dir: str | None,
            force: bool, progress_every: float, device: str, quiet: bool, lr_knots: str | None, lr_mults: str | None,
            **options: object) -> None:
    """Train DavidNet (or the simple net) and write checkpoints plus a per-step dynamics log.

    Under `torchrun --nproc-per-node N -m bnlab train ...` the global batch (--batch-size) is split
    over the N processes (DistributedDataParallel); rank 0 writes the run directory.

    Ctrl-C or SIGTERM stops within seconds: status.json records "interrupted" and the command prints
    the `--resume` command that continues from the last finished epoch.
    """
    if resume_dir is not None:
        cmdline = click.core.ParameterSource.COMMANDLINE
        given = [k for k in ("recipe", "variant", *options) if ctx.get_parameter_source(k) == cmdline]
        if given or out_dir is not None or lr_knots or lr_mults:
            raise click.UsageError("--resume continues with the run's own config; drop the other training options")
        result, main = _interruptible(lambda dev: train(None, resume_dir, device=dev, resume=True, quiet=quiet,
                                                        progress_every=progress_every), device)
    else:
        if out_dir is None:
            raise click.UsageError("--out RUN_DIR is required (or --resume RUN_DIR)")
        make = make_config if recipe is None else lambda *a, **k: recipe_config(recipe, *a, **k)
        config = make(variant, lr_knots=_floats(lr_knots), lr_mults=_floats(lr_mults), **options)
        ddp.check_split(config, distributed.env_world_size())  # refused before any process waits for another
        result, main = _interruptible(lambda dev: train(config, out_dir, device=dev, force=force, quiet=quiet,
                                                        progress_every=progress_every), device)
    if not main:
        return
    m = result.metrics
    summary = f"{result.status}: {result.run_dir}"
    if m:
        summary += f" (epoch {m.get('epoch')}, test acc {m.get('test_acc', float('nan')):.4f})"
    click.echo(summary)


def _interruptible(run: Callable[[str], RunResult], device: str) -> tuple[RunResult, bool]:
    """Run the training under `signals_interrupt`: an interruption is recorded, says how to resume and
    exits with 130 (SIGINT) / 143 (SIGTERM); if training is stuck in a long kernel, within seconds anyway."""
    try:
        with signals_interrupt(_exit_now), distributed.launch(device) as dev:
            return run(dev), distributed.is_main()
    except TrainingInterrupted as e:
        if distributed.is_main():
            click.echo(e.message, err=True)
        raise click.exceptions.Exit(e.exit_code) from None
    except Interrupt as e:  # before the first step (loading data) or after the last
        click.echo(f"interrupted ({e.signal_name})", err=True)
        raise click.exceptions.Exit(e.exit_code) from None


def _exit_now(intr: Interrupt) -> None:
    """The watcher thread's way out while the main thread is inside a kernel: record, say, exit."""
    info = record_active_interrupt(intr.signal_name, intr.exit_code)
    if info is None or distributed.is_main():
        click.echo(info.message if info is not None else f"interrupted ({intr.signal_name})", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(intr.exit_code)
