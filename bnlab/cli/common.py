"""Options and helpers shared by several subcommands."""
from __future__ import annotations

import click

from ..errors import BnlabError
from ..rundir import prepare_out_dir  # noqa: F401  (re-exported for subcommands)

device_option = click.option("--device", default="auto", show_default=True,
                             help="cpu, cuda, cuda:N or auto (cuda if available).")
data_dir_option = click.option("--data-dir", type=click.Path(), default=None,
                               help="CIFAR-10 folder or tarball; default: as the checkpoint's run found it.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")


def int_list(text: str | None, what: str) -> tuple[int, ...] | None:
    """Parse a comma-separated option value of integers (blank items ignored); None if not given."""
    if not text:
        return None
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise BnlabError(f"{what} must be comma-separated integers, got {text!r}") from None
