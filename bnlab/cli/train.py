"""`bnlab train`: train a DavidNet variant into a run directory."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from .. import ddp, distributed
from ..config import DataSpec, TrainConfig, make_config
from ..interrupt import Interrupt, signals_interrupt
from ..models import ModelSpec
from ..recipes import RECIPES, recipe_config
from ..train import PROGRESS_EVERY_SECONDS, RunResult, TrainingInterrupted, record_active_interrupt, train
from .common import OutPath, device_option, quiet_option
from .options import options_from


@click.command("train")
@options_from(TrainConfig, only=("recipe", "variant"), overrides=True,
              changes={"recipe": {"choices": tuple(sorted(RECIPES))}})  # recipes are defined above the config
@options_from(ModelSpec, overrides=True)
@options_from(DataSpec, overrides=True)
@options_from(TrainConfig, exclude=("recipe", "variant"), overrides=True)
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
            force: bool, progress_every: float, device: str, quiet: bool, **options: object) -> None:
    """Train DavidNet (or the simple net) and write checkpoints plus a per-step dynamics log.

    Under `torchrun --nproc-per-node N -m bnlab train ...` the global batch (--batch-size) is split
    over the N processes (DistributedDataParallel); rank 0 writes the run directory.

    Ctrl-C or SIGTERM stops within seconds: status.json records "interrupted" and the command prints
    the `--resume` command that continues from the last finished epoch.
    """
    if resume_dir is not None:
        cmdline = click.core.ParameterSource.COMMANDLINE
        given = [k for k in ("recipe", "variant", *options) if ctx.get_parameter_source(k) == cmdline]
        if given or out_dir is not None:
            raise click.UsageError("--resume continues with the run's own config; drop the other training options")
        result, main = _interruptible(lambda dev: train(None, resume_dir, device=dev, resume=True, quiet=quiet,
                                                        progress_every=progress_every), device)
    else:
        if out_dir is None:
            raise click.UsageError("--out RUN_DIR is required (or --resume RUN_DIR)")
        make = make_config if recipe is None else lambda *a, **k: recipe_config(recipe, *a, **k)
        config = make(variant, **options)
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
