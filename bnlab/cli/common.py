"""Options and helpers shared by the subcommands, built from the package's constants.

Every command that writes results follows one sequence (see `analysis_run`): validate every option,
load the checkpoint and the data (all refusals happen here), then claim the output directory
(create, lock, empty with --force) and compute into it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import click
import torch

from .. import distributed
from ..bnmode import BN_MODES
from ..checkpoint import WEIGHTS, Checkpoint, load_checkpoint
from ..context import DEFAULT_BATCH_SIZE, DEFAULT_NUM_SAMPLES, DTYPES, AnalysisContext, EvalSpec, build_context
from ..curvature.hessian import DEFAULT_TOL
from ..curvature.operator import LOSS_SCALES
from ..data.dataset import data_inputs
from ..device import resolve_device
from ..errors import BnlabError
from ..rundir import check_out_dir, claim_out_dir, output_path

F = TypeVar("F", bound=Callable[..., Any])

class OutPath(click.Path):
    """An output path: an empty value (an unset shell variable) is refused, not read as the current directory."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            try:
                output_path(value)
            except BnlabError as e:
                self.fail(str(e), param, ctx)
        return super().convert(value, param, ctx)


device_option = click.option("--device", default="auto", show_default=True,
                             help="cpu, cuda, cuda:N or auto (cuda if available).")
data_dir_option = click.option("--data-dir", type=click.Path(), default=None,
                               help="CIFAR-10 folder or tarball; default: as the checkpoint's run found it.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
force_option = click.option("--force", is_flag=True, help="Empty a non-empty output directory first (never one that "
                            "is, holds or lies in an input, nor the current or home directory).")
tol_option = click.option("--tol", type=float, default=DEFAULT_TOL, show_default=True,
                          help="Eigenpairs converged when ‖Hv−λv‖ ≤ tol·|λ|.")
weights_option = click.option("--weights", type=click.Choice(WEIGHTS), default="raw", show_default=True,
                              help="The trained weights, or ema: their moving average (runs trained with --ema).")
loss_scale_option = click.option("--loss-scale", type=click.Choice(LOSS_SCALES), default="mean", show_default=True,
                                 help="Hessian units: mean loss over the set, or loss summed over a batch "
                                      "(batch-size x mean; the batch-norm post's units).")


def out_option(help_text: str = "Output directory (created; refused if not empty unless --force).") -> Callable[[F], F]:
    return click.option("--out", "-o", "out", type=OutPath(), required=True, help=help_text)


def eval_options(f: F) -> F:
    """The fixed evaluation set of an analysis (`bnlab.context.EvalSpec`)."""
    for opt in reversed([
        click.option("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, show_default=True,
                     help="Size of the fixed class-balanced evaluation set drawn from the training data."),
        click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True,
                     help="Fixed batches of the evaluation set (the last one smaller if it does not divide)."),
        click.option("--bn-mode", type=click.Choice(BN_MODES), default=None,
                     help="BN statistics: batch (as in training; default for BN models) or running (eval)."),
        click.option("--eval-seed", type=int, default=0, show_default=True, help="Seed of the evaluation-set draw."),
        click.option("--dtype", type=click.Choice(DTYPES), default=None,
                     help="Compute dtype (default: the checkpoint's, float32)."),
        weights_option,
        data_dir_option,
    ]):
        f = opt(f)
    return f


def eval_spec(options: dict[str, Any]) -> EvalSpec:
    """Pop the `eval_options` values out of a command's keyword arguments into an EvalSpec."""
    return EvalSpec(num_samples=options.pop("num_samples"), batch_size=options.pop("batch_size"),
                    bn_mode=options.pop("bn_mode"), eval_seed=options.pop("eval_seed"),
                    dtype=options.pop("dtype"), data_dir=options.pop("data_dir"), weights=options.pop("weights"))


def load_for_analysis(path: str, device: str) -> tuple[Checkpoint, torch.device]:
    """The checkpoint, loaded once onto the resolved device (fails fast on foreign/truncated files)."""
    dev = resolve_device(device)
    return load_checkpoint(path, dev), dev


class Writable(Protocol):
    """What an analysis result offers its command: it writes its own files."""

    def write(self, out: Path) -> Any: ...


R = TypeVar("R", bound=Writable)


def analysis_inputs(loaded: Checkpoint, spec: EvalSpec, *paths: tuple[str, str | None]) -> list[Any]:
    """Every path an analysis reads: `paths` (the checkpoint, ...) and the data as `build_context` finds it."""
    data = loaded.config.data if spec.data_dir is None else dataclasses.replace(loaded.config.data,
                                                                                data_dir=str(spec.data_dir))
    return [*paths, *data_inputs(data)]


def analyse_checkpoint_in_group(ckpt: str, spec: EvalSpec, device: str, out: str, force: bool, quiet: bool,
                                check: Callable[[AnalysisContext], Any],
                                run: Callable[[AnalysisContext, bool], R],
                                inputs: tuple[tuple[str, str | None], ...] = ()) -> R | None:
    """One checkpoint analysis, the same in one process and under torchrun: load the checkpoint, check the
    output against every input (the checkpoint, its data, `inputs`), build the context (every rank, refusals
    agreed), check the options, then claim the output folder (rank 0), run (every rank computes;
    `run(ctx, quiet)`) and write (rank 0). The result on rank 0, None elsewhere."""
    output_path(out)
    with distributed.launch(device) as dev:
        main = distributed.is_main()
        loaded = distributed.agree(lambda: load_for_analysis(ckpt, dev)[0])
        paths = analysis_inputs(loaded, spec, ("checkpoint", ckpt), *inputs)
        distributed.on_main(lambda: check_out_dir(out, force=force, inputs=paths))
        ctx = distributed.agree(lambda: build_context(loaded, spec, device=dev))
        distributed.agree(lambda: check(ctx))
        with distributed.main_context(lambda: claim_out_dir(out, force=force, inputs=paths)) as out_dir:
            result = run(ctx, quiet or not main)
            distributed.on_main(lambda: result.write(out_dir))
    return result if main else None


def int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    """Parse a comma-separated option value of integers (blank items ignored); None if not given."""
    if not text:
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise BnlabError(f"{what} must be comma-separated integers, got {text!r}") from None


def str_list(text: str | None) -> tuple[str, ...] | None:
    """Comma-separated names (blank items ignored); None if not given."""
    if not text:
        return None
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    return items or None
