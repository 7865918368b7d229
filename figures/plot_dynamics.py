#!/usr/bin/env python3
"""Figures from `bnlab dynamics RUN_DIR --out DIR`: the weight-decay post's per-layer plots.

    python figures/plot_dynamics.py DIR [--out FIGDIR]

Each figure is written as PNG and PDF (into DIR unless --out is given):
- dynamics_norms: ‖w‖ of each layer the theory applies to (solid), and the equilibrium norm the
  theory predicts from the recent lr history (dashed, same colour);
- dynamics_angles: the smoothed angle each update turns a layer's weights by, and the prediction the
  analysis compares it with: the equilibrium angle (black) for a constant lr; under an lr schedule the
  lagged prediction of each layer (dashed, same colour), as in the ratio figure;
- dynamics_ratio: measured / predicted angle per layer over the final window, with a band of the
  analysis' equilibrium tolerance (±15% by default) around agreement.
Layers marked "(~)" are only approximately scale-invariant (BN-preceded convs whose BN eps matters).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import figstyle
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

PROG = "plot_dynamics"
BAND = 0.15  # the ratio figure's band around the prediction when the summary records no eq_tol


def load(src: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    try:
        series = pd.read_csv(src / "dynamics_series.csv")
        layers = pd.read_csv(src / "dynamics_layers.csv")
    except (OSError, ValueError) as e:
        raise figstyle.fail(PROG, f"{src} is not a bnlab dynamics output ({e})") from None
    summary_path = src / "dynamics_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return series, layers, summary


def _theory_layers(layers: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """Layers with a prediction, in log order, and their display names ("(~)": approximate)."""
    have = layers[layers["ratio"].notna()]
    approx = set(have.loc[have["invariance"] == "approximate", "param"]) if "invariance" in have else set()
    names = list(have["param"])
    return names, {p: f"{p} (~)" if p in approx else p for p in names}


def norms_figure(series: pd.DataFrame, layers: pd.DataFrame) -> Figure:
    figstyle.apply()
    params, display = _theory_layers(layers)
    colors = figstyle.color_map(display[p] for p in params)
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()
    for p in params:
        g = series[series["param"] == p]
        c = colors[display[p]]
        ax.plot(g["step"], g["w_norm"], color=c, lw=1.4, label=display[p])
        ax.plot(g["step"], g["norm_lagged"], color=c, lw=1.2, ls="--")
    ax.set(yscale="log", xlabel="step", ylabel="‖w‖",
           title="Weight norms of scale-invariant layers and their predicted equilibrium")
    figstyle.plain_log_ticks(ax)
    layer_legend = ax.legend(title="layer", loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.add_artist(layer_legend)  # a second legend below it keys the line styles
    ax.legend([Line2D([], [], color="black", lw=1.4), Line2D([], [], color="black", lw=1.2, ls="--")],
              ["measured", "lagged equilibrium prediction"], title="line", loc="lower left",
              bbox_to_anchor=(1.02, 0), frameon=False)
    return fig


def angles_figure(series: pd.DataFrame, layers: pd.DataFrame, summary: dict | None = None) -> Figure:
    figstyle.apply()
    params, display = _theory_layers(layers)
    colors = figstyle.color_map(display[p] for p in params)
    inv = series[series["param"].isin(params)]
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()
    for p in params:
        g = inv[inv["param"] == p]
        ax.plot(g["step"], g["angle_smooth"], color=colors[display[p]], lw=1.2, label=display[p])
    if (summary or {}).get("compare_to") == "lagged":
        # under an lr schedule the analysis compares with each layer's lagged prediction (as the ratio
        # figure does); it depends on the layer's norm and gradient scale, so one dashed line per layer
        for p in params:
            g = inv[inv["param"] == p]
            ax.plot(g["step"], g["angle_ref"], color=colors[display[p]], lw=1.0, ls="--")
        ax.plot([], [], color="black", lw=1.0, ls="--", label="lagged prediction (dashed, layer colour)")
    else:  # constant lr: the same equilibrium for every layer
        eq = inv.groupby("step")["angle_eq"].first()
        ax.plot(eq.index, eq.to_numpy(), color="black", lw=2.2, label="predicted equilibrium")
    ax.set(yscale="log", xlabel="step", ylabel="angle per step (rad, smoothed RMS)",
           title="Angular update per step vs the equilibrium the theory predicts")
    figstyle.plain_log_ticks(ax)
    figstyle.legend_outside(ax, title="layer")
    return fig


def ratio_figure(layers: pd.DataFrame, summary: dict | None = None) -> Figure:
    figstyle.apply()
    params, display = _theory_layers(layers)
    lv = layers[layers["param"].isin(params)].assign(layer=lambda d: d["param"].map(display))
    fig = Figure(figsize=(max(6.5, 0.55 * len(params) + 3.5), 4.6), layout="constrained")
    ax = fig.subplots()
    summary = summary or {}
    tol = summary.get("eq_tol") or BAND  # the analysis' own equilibrium tolerance
    band = ax.axhspan(1 - tol, 1 + tol, color="grey", alpha=0.2, lw=0)
    line = ax.axhline(1, color="black", lw=1.2)
    sns.barplot(data=lv, x="layer", y="ratio", color=figstyle.colors(1)[0], ax=ax)
    window = summary.get("window")  # fraction of the logged steps, at the end
    where = f"last {window:.0%} of steps" if window else "final window"
    approx = any(name.endswith("(~)") for name in display.values())
    ax.set(xlabel="layer" + ("  ((~): approximately scale-invariant)" if approx else ""),
           ylabel="measured / predicted angle", title=f"Equilibrium angle per layer, measured / predicted ({where})")
    figstyle.rotate_xticks(ax)
    ax.legend([line, band, Patch(color=figstyle.colors(1)[0])],
              ["prediction (ratio 1)", f"±{tol:.0%} of the prediction", "measured / predicted"],
              loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("analysis_dir", type=Path, help="a `bnlab dynamics` output directory")
    ap.add_argument("--out", type=Path, default=None, help="folder for the figures (default: analysis_dir)")
    args = ap.parse_args(argv)
    out = args.out or args.analysis_dir
    series, layers, summary = load(args.analysis_dir)
    if not layers["ratio"].notna().any():
        raise figstyle.fail(PROG, f"{args.analysis_dir}: no layer the theory applies to (no BN-preceded layer?)")
    figstyle.save(norms_figure(series, layers), out / "dynamics_norms.png")
    figstyle.save(angles_figure(series, layers, summary), out / "dynamics_angles.png")
    figstyle.save(ratio_figure(layers, summary), out / "dynamics_ratio.png")


if __name__ == "__main__":
    main()
