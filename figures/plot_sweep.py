#!/usr/bin/env python3
"""Figures from a `bnlab sweep --out DIR` summary.

    python figures/plot_sweep.py DIR [--out FIGDIR]

- sweep_heatmap.png: final test accuracy over (lr, wd), with lr*wd iso-lines;
- sweep_angle.png: measured equilibrium angle vs lr*wd (theory line for each momentum/Nesterov).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bnlab import theory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep_dir")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    src = Path(args.sweep_dir)
    out = Path(args.out) if args.out else src
    out.mkdir(parents=True, exist_ok=True)
    summary = json.loads((src / "summary.json").read_text())
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "layers"} for r in summary["points"]])
    sns.set_theme(style="whitegrid")

    piv = df.pivot_table(index="weight_decay", columns="lr", values="test_acc", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(6, 5))
    sns.heatmap(piv, annot=True, fmt=".3f", cmap="viridis", ax=ax, cbar_kws={"label": "test accuracy"})
    # iso-lines of lr*wd in cell coordinates (log-spaced axes assumed: interpolate in log space)
    lrs, wds = np.log(piv.columns.values.astype(float)), np.log(piv.index.values.astype(float))
    if len(lrs) > 1 and len(wds) > 1:
        for c in np.unique(np.round(np.add.outer(wds, lrs), 6)):
            x = np.linspace(lrs.min(), lrs.max(), 50)
            y = c - x
            xi = np.interp(x, lrs, np.arange(len(lrs))) + 0.5
            yi = np.interp(y, wds, np.arange(len(wds)), left=np.nan, right=np.nan) + 0.5
            ax.plot(xi, yi, color="white", lw=0.8, ls="--")
    ax.set(title="test accuracy; dashed: lr*wd = const")
    fig.savefig(out / "sweep_heatmap.png", dpi=120, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(6, 4))
    sns.scatterplot(data=df, x="lr_wd", y="angle", hue="lr", style="weight_decay", s=70, ax=ax)
    x = np.geomspace(df["lr_wd"].min() * 0.8, df["lr_wd"].max() * 1.25, 50)
    for (mu, nes), _ in df.groupby(["momentum", "nesterov"]):
        ax.plot(x, theory.equilibrium_angle(x, 1.0, mu, bool(nes and mu > 0)), color="black",
                label=f"theory mu={mu} nesterov={bool(nes)}")
    ax.set(xscale="log", yscale="log", xlabel="lr * wd", ylabel="equilibrium angle per step (rad)")
    ax.legend(fontsize=7)
    fig.savefig(out / "sweep_angle.png", dpi=120, bbox_inches="tight")
    print(f"wrote {out}/sweep_{{heatmap,angle}}.png")


if __name__ == "__main__":
    main()
