"""`bnlab collapse`: a deep fully connected ReLU net at init, with and without centring: the channel-mean
share per layer against the arc-cosine recursion (the batch-norm post's KDE argument)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..device import resolve_device
from ..outstats.collapse import CollapseOptions, run_collapse
from ..rundir import claim_out_dir
from .common import device_option, force_option, out_option
from .options import options_from


@click.command("collapse")
@options_from(CollapseOptions)
@out_option()
@force_option
@device_option
def command(out: str, force: bool, device: str, **options: Any) -> None:
    """Channel collapse with depth in a He-initialised ReLU MLP, and its fix by centring.

    Writes collapse.json (per-layer channel-mean share, plain and centred, and the ReLU arc-cosine
    prediction) and collapse_values.pt (per-channel values at --hist-layers, for KDE plots).
    """
    opts = CollapseOptions(**options)
    opts.validate()
    dev = resolve_device(device)
    with claim_out_dir(out, force=force) as out_dir:
        result = run_collapse(opts, device=dev)
        result.write(out_dir)
    rec = result.record
    for layer in sorted({1, 2, 5, 10, 20, 50, opts.depth} & set(range(1, opts.depth + 1))):
        i = layer - 1
        click.echo(f"layer {layer:3d}: mean share {rec['share_plain'][i]:.3f} (theory "
                   f"{rec['theory_share'][i]:.3f}), centred {rec['share_centred'][i]:.3f}")
    click.echo(f"wrote {Path(out) / 'collapse.json'} and collapse_values.pt")
