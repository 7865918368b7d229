"""`bnlab collapse`: a deep fully connected ReLU net at init, with and without centring: the channel-mean
share per layer against the arc-cosine recursion (the batch-norm post's KDE argument)."""
from __future__ import annotations

from pathlib import Path

import click

from ..device import resolve_device
from ..outstats.collapse import CollapseOptions, run_collapse
from ..rundir import claim_out_dir
from .common import device_option, force_option, int_list, out_option


@click.command("collapse")
@click.option("--depth", type=int, default=50, show_default=True)
@click.option("--width", type=int, default=2048, show_default=True)
@click.option("--inputs", "n_inputs", type=int, default=1000, show_default=True,
              help="Number of isotropic Gaussian inputs.")
@click.option("--hist-layers", default="1,2,5,10,20,50", show_default=True,
              help="Layers whose per-channel values are saved (for KDE plots); those beyond --depth are dropped.")
@click.option("--hist-channels", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@out_option()
@force_option
@device_option
def command(depth: int, width: int, n_inputs: int, hist_layers: str, hist_channels: int, seed: int, out: str,
            force: bool, device: str) -> None:
    """Channel collapse with depth in a He-initialised ReLU MLP, and its fix by centring.

    Writes collapse.json (per-layer channel-mean share, plain and centred, and the ReLU arc-cosine
    prediction) and collapse_values.pt (per-channel values at --hist-layers, for KDE plots).
    """
    opts = CollapseOptions(depth=depth, width=width, n_inputs=n_inputs, seed=seed, hist_channels=hist_channels,
                           hist_layers=int_list(hist_layers, "--hist-layers") or ())
    opts.validate()
    dev = resolve_device(device)
    with claim_out_dir(out, force=force) as out_dir:
        result = run_collapse(opts, device=dev)
        result.write(out_dir)
    rec = result.record
    for layer in sorted({1, 2, 5, 10, 20, 50, depth} & set(range(1, depth + 1))):
        i = layer - 1
        click.echo(f"layer {layer:3d}: mean share {rec['share_plain'][i]:.3f} (theory "
                   f"{rec['theory_share'][i]:.3f}), centred {rec['share_centred'][i]:.3f}")
    click.echo(f"wrote {Path(out) / 'collapse.json'} and collapse_values.pt")
