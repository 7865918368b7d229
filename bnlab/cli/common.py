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
from ..checkpoint import Checkpoint, load_checkpoint
from ..context import AnalysisContext, EvalSpec, build_context
from ..data.dataset import data_inputs
from ..device import resolve_device
from ..errors import BnlabError
from ..rundir import check_out_dir, claim_out_dir, output_path
from .options import options_from, pop_fields

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
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
force_option = click.option("--force", is_flag=True, help="Empty a non-empty output directory first (never one that "
                            "is, holds or lies in an input, nor the current or home directory).")
# The evaluation set's options, generated from EvalSpec's fields (`eval_options` of the analyses; freeze reads
# the same two of them).
eval_options = options_from(EvalSpec)
weights_option = options_from(EvalSpec, only=("weights",))
data_dir_option = options_from(EvalSpec, only=("data_dir",))


def out_option(help_text: str = "Output directory (created; refused if not empty unless --force).") -> Callable[[F], F]:
    return click.option("--out", "-o", "out", type=OutPath(), required=True, help=help_text)


def eval_spec(options: dict[str, Any]) -> EvalSpec:
    """Pop the `eval_options` values out of a command's keyword arguments into an EvalSpec."""
    return EvalSpec(**pop_fields(EvalSpec, options))


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
