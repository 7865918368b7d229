#!/usr/bin/env python3
"""Figures from a `bnlab sweep --out DIR` summary, each as PNG and PDF.

    python figures/plot_sweep.py DIR [--out FIGDIR]

- sweep_heatmap: final test accuracy over (lr, wd); where the grid has at least two values of each,
  dashed lines join the points of equal lr·wd (the weight-decay post's prediction: along them the
  equilibrium, and roughly the accuracy, stays the same). The colour scale spans at least
  5 percentage points, so that noise-level differences do not look like structure;
- sweep_angle: the measured equilibrium angle per step (mean over scale-invariant layers) against
  lr·wd, with the theory's line for each momentum / Nesterov setting in the sweep.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import figstyle
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from bnlab import theory

PROG = "plot_sweep"
MIN_SPAN = 5.0  # percentage points: the smallest accuracy range the heatmap colours span


def load(src: Path) -> pd.DataFrame:
    try:
        summary = json.loads((src / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise figstyle.fail(PROG, f"{src} is not a bnlab sweep output ({e})") from None
    return pd.DataFrame([{k: v for k, v in r.items() if k != "layers"} for r in summary["points"]])


def _fmt(v: float) -> str:
    return f"{v:g}"


def heatmap_figure(df: pd.DataFrame) -> Figure:
    figstyle.apply()
    acc = df.assign(acc=100 * df["test_acc"].astype(float))
    piv = acc.pivot_table(index="weight_decay", columns="lr", values="acc", aggfunc="mean")
    piv = piv.sort_index(ascending=False)  # weight decay grows upwards
    lo, hi = np.nanmin(piv.to_numpy()), np.nanmax(piv.to_numpy())
    pad = max(0.0, MIN_SPAN - (hi - lo)) / 2
    vmin, vmax = max(0.0, lo - pad), min(100.0, hi + pad)
    if vmax - vmin < MIN_SPAN:  # against a bound: extend the other way
        vmin, vmax = (vmin, vmin + MIN_SPAN) if vmin == 0 else (vmax - MIN_SPAN, vmax)
    fig = Figure(figsize=(1.3 * len(piv.columns) + 3.2, 0.9 * len(piv.index) + 2.4), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(piv, annot=True, fmt=".1f", cmap="viridis", vmin=vmin, vmax=vmax, ax=ax, linewidths=0.5,
                xticklabels=[_fmt(v) for v in piv.columns], yticklabels=[_fmt(v) for v in piv.index],
                annot_kws={"bbox": {"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
                           "color": "black", "zorder": 4},
                cbar_kws={"label": "test accuracy (%)"})
    lrs = np.log(piv.columns.to_numpy(dtype=float))
    wds = np.log(piv.index.to_numpy(dtype=float))
    iso = len(lrs) > 1 and len(wds) > 1
    if iso:  # lr*wd = const, interpolated in log space between cell centres
        order = np.argsort(wds)
        for c in np.unique(np.round(np.add.outer(wds, lrs), 6)):
            x = np.linspace(lrs.min(), lrs.max(), 100)
            xi = np.interp(x, lrs, np.arange(len(lrs))) + 0.5
            yi = np.interp(c - x, wds[order], np.arange(len(wds))[order], left=np.nan, right=np.nan) + 0.5
            ax.plot(xi, yi, color="white", lw=1.2, ls="--", zorder=3)
    ax.set(xlabel="learning rate", ylabel="weight decay",
           title="Final test accuracy" + ("  (dashed: equal lr·wd)" if iso else ""))
    ax.tick_params(axis="y", rotation=0)
    return fig


def angle_figure(df: pd.DataFrame) -> Figure | None:
    have = df[df["angle"].notna()] if "angle" in df else df.iloc[0:0]
    if have.empty:
        return None
    figstyle.apply()
    have = have.assign(lr_label=have["lr"].map(_fmt), wd_label=have["weight_decay"].map(_fmt))
    fig = Figure(figsize=(8, 4.6), layout="constrained")
    ax = fig.subplots()
    lr_order = [_fmt(v) for v in sorted(have["lr"].unique())]
    sns.scatterplot(data=have, x="lr_wd", y="angle", hue="lr_label", hue_order=lr_order, style="wd_label",
                    style_order=[_fmt(v) for v in sorted(have["weight_decay"].unique())],
                    palette=figstyle.colors(len(lr_order)), s=80, ax=ax, zorder=3)
    x = np.geomspace(have["lr_wd"].min() * 0.8, have["lr_wd"].max() * 1.25, 50)
    for (mu, nes), ls in zip(sorted({(float(m), bool(n)) for m, n in zip(df["momentum"], df["nesterov"])}),
                             ("-", "--", ":", "-.")):
        nesterov = nes and mu > 0
        ax.plot(x, theory.equilibrium_angle(x, 1.0, mu, nesterov), color="black", ls=ls, lw=1.2,
                label=f"theory, momentum {mu:g}{', Nesterov' if nesterov else ''}")
    for _, r in have.iterrows():  # each point says which run it is
        ax.annotate(f"lr {r['lr_label']}\nwd {r['wd_label']}", (r["lr_wd"], r["angle"]), xytext=(6, -3),
                    textcoords="offset points", fontsize=7, va="top")
    ax.set(xlabel="lr · wd", ylabel="equilibrium angle per step (rad)",
           title="Measured equilibrium angle (mean over scale-invariant layers) vs theory")
    figstyle.log_axis(ax, "x")
    figstyle.log_axis(ax, "y")
    handles, labels = ax.get_legend_handles_labels()
    # seaborn's legend has subtitle rows "lr_label"/"wd_label": give them readable names
    labels = [{"lr_label": "learning rate", "wd_label": "weight decay"}.get(t, t) for t in labels]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("sweep_dir", type=Path, help="a `bnlab sweep` output directory (summary.json)")
    ap.add_argument("-o", "--out", type=Path, default=None, help="folder for the figures (default: sweep_dir)")
    args = ap.parse_args(argv)
    out = figstyle.out_dir(PROG, args.out or args.sweep_dir)
    df = load(args.sweep_dir)
    figstyle.save(heatmap_figure(df), out / "sweep_heatmap")
    fig = angle_figure(df)
    if fig is None:
        print("skipped sweep_angle: no point has scale-invariant layers to measure")
    else:
        figstyle.save(fig, out / "sweep_angle")


if __name__ == "__main__":
    main()
