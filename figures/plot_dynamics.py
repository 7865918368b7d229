#!/usr/bin/env python3
"""Figures from `bnlab dynamics RUN_DIR --out DIR`: the weight-decay post's per-layer plots.

    python figures/plot_dynamics.py DIR [--out FIGDIR]

- dynamics_norms.png: ||w|| per scale-invariant layer over training, with the lagged prediction (dashed);
- dynamics_angles.png: smoothed angle per step per layer with the prediction it is compared with (black:
  the equilibrium for a constant lr; dashed, per layer: the lagged prediction under a schedule);
- dynamics_ratio.png: measured / predicted angle by layer (final window), band = +-15%.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("analysis_dir")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    src = Path(args.analysis_dir)
    out = Path(args.out) if args.out else src
    out.mkdir(parents=True, exist_ok=True)
    s = pd.read_csv(src / "dynamics_series.csv")
    layers = pd.read_csv(src / "dynamics_layers.csv")
    # layers the theory applies to: exactly invariant, or approximately (flagged "~" in the labels)
    theory_layers = layers[layers["ratio"].notna()]
    approx = (set(theory_layers.loc[theory_layers["invariance"] == "approximate", "param"])
              if "invariance" in theory_layers else set())
    inv = s[s["param"].isin(set(theory_layers["param"]))].copy()
    inv["param"] = inv["param"].map(lambda p: f"{p} (~)" if p in approx else p)
    sns.set_theme(style="whitegrid")

    fig, ax = plt.subplots(figsize=(8, 5))
    sns.lineplot(data=inv, x="step", y="w_norm", hue="param", ax=ax, lw=1)
    for _, g in inv.groupby("param"):
        ax.plot(g["step"], g["norm_lagged"], ls="--", color="grey", lw=0.8)
    ax.set(ylabel="||w||", title="weight norms of BN-preceded layers (dashed: lagged equilibrium prediction)")
    fig.savefig(out / "dynamics_norms.png", dpi=120, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(8, 5))
    sns.lineplot(data=inv, x="step", y="angle_smooth", hue="param", ax=ax, lw=1)
    # the prediction the analysis compares with (lagged under an lr schedule), as the ratio plot does
    summary = src / "dynamics_summary.json"
    compare_to = json.loads(summary.read_text()).get("compare_to") if summary.is_file() else None
    if compare_to == "lagged":  # depends on each layer's norm and gradient scale: one dashed line per layer
        for i, (_, g) in enumerate(inv.groupby("param")):
            ax.plot(g["step"], g["angle_ref"], ls="--", color="grey", lw=0.8,
                    label="predicted (lagged)" if i == 0 else None)
    else:  # the equilibrium is the same for every layer
        eq = inv.groupby("step")["angle_eq"].first()
        ax.plot(eq.index, eq.values, color="black", lw=2, label="predicted equilibrium")
    ax.set(ylabel="angle per step (rad, smoothed RMS)", title="angular update per step vs theory")
    ax.legend(fontsize=7)
    fig.savefig(out / "dynamics_angles.png", dpi=120, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(8, 4))
    lv = theory_layers.assign(param=theory_layers["param"].map(lambda p: f"{p} (~)" if p in approx else p))
    sns.barplot(data=lv, x="param", y="ratio", ax=ax, color="C0")
    ax.axhline(1, color="black")
    ax.axhspan(0.85, 1.15, color="grey", alpha=0.2)
    ax.set(ylabel="measured / predicted angle", xlabel="")
    ax.tick_params(axis="x", rotation=60)
    fig.savefig(out / "dynamics_ratio.png", dpi=120, bbox_inches="tight")
    print(f"wrote {out}/dynamics_{{norms,angles,ratio}}.png")


if __name__ == "__main__":
    main()
