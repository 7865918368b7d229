"""The `bnlab` command: a thin layer over the Python API; each subcommand lives in its own module."""
from __future__ import annotations

import importlib
import os
import sys

import click

from ..distributed import groups_joined, printed_here
from ..errors import BnlabError
from ..runtime import tune_allocator
from ..version import __version__

# Subcommand modules; each defines a click command named `command`.
INTERRUPT_CODES = (130, 143)  # 128 + SIGINT, 128 + SIGTERM
COMMANDS = ("train", "info", "freeze", "dynamics", "sweep", "outstats", "hessian", "collapse", "reproduce", "ablate")


class BnlabGroup(click.Group):
    """Every user error (BnlabError, bad option) becomes one line on stderr and exit code 2."""

    def main(self, args: list[str] | None = None, prog_name: str | None = None, **extra: object) -> None:
        extra.pop("standalone_mode", None)
        groups_before = groups_joined()
        tune_allocator()  # every command allocates and frees large activations (see bnlab.runtime)
        code = self._exit_code(args, prog_name, extra)
        # Interrupted (Ctrl-C, SIGTERM) as the `bnlab` process itself (args None: not CliRunner): all is
        # recorded, and torch's interpreter finalisation took 4-13 s on a loaded 2-core machine (measured).
        interrupted_process = code in INTERRUPT_CODES and args is None
        if groups_joined() > groups_before or interrupted_process:
            # Under torchrun: the group is destroyed and every file written. Skip interpreter finalisation,
            # where gloo objects still referenced from C++ threads can abort a finished rank (SIGABRT,
            # 'terminate called without an active exception').
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)

    def _exit_code(self, args: list[str] | None, prog_name: str | None, extra: dict[str, object]) -> int:
        try:
            rv = super().main(args, prog_name or "bnlab", standalone_mode=False, **extra)  # type: ignore[arg-type]
        except BnlabError as e:  # under torchrun, a refusal all ranks share is printed by rank 0 alone
            return _fail(str(e), quiet=not printed_here(e))
        except OSError as e:  # the file system said no (permissions, full disk, a path that is a file, ...)
            where = f"{e.filename}: " if e.filename else ""
            return _fail(f"cannot write or read {where}{e.strerror or e}")
        except click.UsageError as e:
            return _fail(f"{e.format_message()} (see --help)")
        except click.ClickException as e:
            return _fail(e.format_message(), e.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            return 130
        return rv if isinstance(rv, int) else 0


def _fail(message: str, code: int = 2, quiet: bool = False) -> int:
    if not quiet:
        click.echo(f"bnlab: error: {' '.join(message.split())}", err=True)
    return code


@click.group(cls=BnlabGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnlab")
def main() -> None:
    """bnlab: train DavidNet variants and measure why batch norm and weight decay work."""


for _name in COMMANDS:
    main.add_command(importlib.import_module(f"{__name__}.{_name}").command)
