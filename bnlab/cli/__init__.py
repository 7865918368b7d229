"""The `bnlab` command: a thin layer over the Python API; each subcommand lives in its own module."""
from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import BnlabError

# Subcommand modules; each defines a click command named `command`.
COMMANDS = ("train", "info", "freeze")


class BnlabGroup(click.Group):
    """Turns BnlabError (bad input, missing data, ...) into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BnlabError as e:
            click.echo(f"bnlab: error: {e}", err=True)
            sys.exit(2)


@click.group(cls=BnlabGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bnlab")
def main() -> None:
    """bnlab: train DavidNet variants and measure why batch norm and weight decay work."""


for _name in COMMANDS:
    main.add_command(importlib.import_module(f"{__name__}.{_name}").command)
