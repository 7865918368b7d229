#!/usr/bin/env python3
"""Figures of `bnlab collapse` output (seaborn), into --out.

    bnlab collapse --out runs/collapse
    python figures/plot_collapse.py runs/collapse --out figs/

collapse_share.png: channel-mean share per layer, plain and centred, with the arc-cosine prediction;
collapse_kde.png: per-channel value densities at the saved layers, plain (top) and centred (bottom).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402


def share_plot(rec: dict, out: Path) -> None:
    layers = range(1, rec["depth"] + 1)
    rows = [{"layer": i, "share": v, "net": name}
            for name, key in (("ReLU MLP", "share_plain"), ("centred pre-activations", "share_centred"),
                              ("arc-cosine theory", "theory_share"))
            for i, v in zip(layers, rec[key])]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sns.lineplot(pd.DataFrame(rows), x="layer", y="share", hue="net", style="net", ax=ax)
    ax.set(ylim=(0, 1.02), ylabel="channel-mean share  Σm²/Σ E[h²]",
           title=f"width {rec['width']}, {rec['n_inputs']} inputs, He init")
    fig.tight_layout()
    fig.savefig(out / "collapse_share.png", dpi=120)
    plt.close(fig)


def kde_plot(rec: dict, values: dict, out: Path, channels: int = 5) -> None:
    layers = [str(layer) for layer in rec["hist_layers"]]
    if not layers:
        return
    fig, axes = plt.subplots(2, len(layers), figsize=(2.2 * len(layers), 4.2), squeeze=False)
    for row, name in enumerate(("plain", "centred")):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            v = values[name][layer]
            for c in range(min(channels, v.shape[0])):
                sns.kdeplot(x=v[c].double().numpy(), ax=ax, warn_singular=False)
            share = rec[f"share_{name}"][int(layer) - 1]
            ax.set_title(f"layer {layer}, share {share:.2f}", fontsize=8)
            ax.set(ylabel=name if col == 0 else "", yticks=[])
            ax.tick_params(labelsize=6)
    fig.suptitle("per-channel pre-activation densities over inputs")
    fig.tight_layout()
    fig.savefig(out / "collapse_kde.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description="Plot bnlab collapse output.")
    ap.add_argument("dir", type=Path, help="a `bnlab collapse` output directory")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        rec = json.loads((args.dir / "collapse.json").read_text())
        values = torch.load(args.dir / "collapse_values.pt", weights_only=True)
    except (OSError, ValueError) as e:
        raise SystemExit(f"plot_collapse: {args.dir} is not a bnlab collapse output ({e})") from None
    args.out.mkdir(parents=True, exist_ok=True)
    share_plot(rec, args.out)
    kde_plot(rec, values, args.out)
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
