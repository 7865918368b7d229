#!/usr/bin/env python3
"""Figures of `bnlab collapse` output, each as PNG and PDF, into --out.

    bnlab collapse --out runs/collapse
    python figures/plot_collapse.py runs/collapse --out figs/

- collapse_share: channel-mean share per layer of the plain ReLU MLP and of the one with centred
  pre-activations, with the arc-cosine kernel's prediction;
- collapse_kde: per-channel value distributions at the saved layers, plain (left half of each
  violin) and centred (right half).
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
from pathlib import Path

import figstyle
from matplotlib.figure import Figure

from bnlab.io.torchfile import load_torch_file

PROG = "plot_collapse"
NETS = (("share_plain", "ReLU MLP"), ("share_centred", "centred pre-activations"),
        ("theory_share", "arc-cosine theory (plain)"))


def load(folder: Path) -> tuple[dict, dict]:
    try:
        return (json.loads((folder / "collapse.json").read_text()),
                load_torch_file(folder / "collapse_values.pt"))
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise figstyle.fail(PROG, f"{folder} is not a bnlab collapse output ({e})") from None


def share_figure(rec: dict) -> Figure:
    figstyle.apply()
    layers = list(range(1, rec["depth"] + 1))
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for (key, name), color, style in zip(NETS, figstyle.colors(len(NETS)), ("-o", "-s", "--")):
        ax.plot(layers, rec[key], style, color=color if key != "theory_share" else "black", ms=4, label=name)
    ax.set(ylim=(0, 1.02), xlabel="layer", ylabel="channel-mean share  Σ m² / Σ E[h²]",
           title=f"Channel collapse at initialisation (width {rec['width']}, {rec['n_inputs']} inputs, He init)")
    ax.set_xticks(layers if len(layers) <= 20 else layers[:: math.ceil(len(layers) / 20)])
    figstyle.legend_outside(ax)
    return fig


def kde_figure(rec: dict, values: dict, channels: int = 5, ncols: int = 3) -> Figure | None:
    layers = [str(layer) for layer in rec["hist_layers"]]
    if not layers:
        return None
    nets = (("plain", "ReLU MLP"), ("centred", "centred pre-activations"))
    panels = {}
    for layer in layers:
        shares = [rec[f"share_{key}"][int(layer) - 1] for key, _ in nets]
        panels[f"layer {layer}   mean share {shares[0]:.2f} / {shares[1]:.2f}"] = {
            name: values[key][layer] for key, name in nets}
    fig, _ = figstyle.split_violins(panels, [name for _, name in nets], channels=channels, ncols=ncols,
                                    panel_size=(3.8, 2.9), ylabel="pre-activation",
                                    legend_title="violin halves (width-normalised densities over inputs)")
    fig.suptitle(f"Per-channel pre-activation distributions, first {channels} channels (mean share: plain / centred)")
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("dir", type=Path, help="a `bnlab collapse` output directory")
    ap.add_argument("-o", "--out", type=Path, required=True, help="folder for the figures")
    args = ap.parse_args(argv)
    out = figstyle.out_dir(PROG, args.out)
    rec, values = load(args.dir)
    figstyle.save(share_figure(rec), out / "collapse_share")
    fig = kde_figure(rec, values)
    if fig is None:
        print("skipped collapse_kde: the output saved no layer's values (--hist-layers)")
    else:
        figstyle.save(fig, out / "collapse_kde")


if __name__ == "__main__":
    main()
