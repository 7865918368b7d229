"""`bnlab collapse`: a deep fully connected ReLU net at init, with and without centring: the channel-mean
share per layer against the arc-cosine recursion (the batch-norm post's KDE argument)."""
from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from ..outstats.fcnet import fc_collapse
from .common import device_option, int_list, prepare_out_dir


@click.command("collapse")
@click.option("--depth", type=int, default=50, show_default=True)
@click.option("--width", type=int, default=2048, show_default=True)
@click.option("--inputs", "n_inputs", type=int, default=1000, show_default=True,
              help="Number of isotropic Gaussian inputs.")
@click.option("--hist-layers", default="1,2,5,10,20,50", show_default=True,
              help="Layers whose per-channel values are saved (for KDE plots); those beyond --depth are dropped.")
@click.option("--hist-channels", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out", type=click.Path(), required=True, help="Output directory.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty output directory.")
@device_option
def command(depth: int, width: int, n_inputs: int, hist_layers: str, hist_channels: int, seed: int, out: str,
            force: bool, device: str) -> None:
    """Channel collapse with depth in a He-initialised ReLU MLP, and its fix by centring.

    Writes collapse.json (per-layer channel-mean share, plain and centred, and the ReLU arc-cosine
    prediction) and collapse_values.pt (per-channel values at --hist-layers, for KDE plots).
    """
    from ..device import resolve_device

    # layers beyond the depth are dropped
    layers = tuple(sorted({n for n in int_list(hist_layers, "--hist-layers") or () if 1 <= n <= depth}))
    dev = resolve_device(device)
    out_dir = prepare_out_dir(Path(out), force=force)
    runs = {name: fc_collapse(depth, width, n_inputs, centre=centre, seed=seed, hist_layers=layers,
                              hist_channels=hist_channels, device=dev)
            for name, centre in (("plain", False), ("centred", True))}
    record = {"depth": depth, "width": width, "n_inputs": n_inputs, "seed": seed, "device": str(dev),
              "hist_layers": list(layers), "theory_correlation": runs["plain"]["theory"],
              "theory_share": runs["plain"]["theory_share"],
              "share_plain": runs["plain"]["shares"], "share_centred": runs["centred"]["shares"]}
    (out_dir / "collapse.json").write_text(json.dumps(record, indent=1))
    torch.save({name: {str(k): v for k, v in r["values"].items()} for name, r in runs.items()},
               out_dir / "collapse_values.pt")
    for layer in sorted({1, 2, 5, 10, 20, 50, depth} & set(range(1, depth + 1))):
        i = layer - 1
        click.echo(f"layer {layer:3d}: mean share {record['share_plain'][i]:.3f} (theory "
                   f"{record['theory_share'][i]:.3f}), centred {record['share_centred'][i]:.3f}")
    click.echo(f"wrote {out_dir / 'collapse.json'}")
