#!/usr/bin/env python3
"""Figures from `bnlab dynamics RUN_DIR --out DIR`: the weight-decay post's per-layer plots.

    python figures/plot_dynamics.py DIR [--out FIGDIR]

Each figure is written as PNG and PDF (into DIR unless --out is given):
- dynamics_norms: one panel per layer the theory applies to: its ‖w‖ (solid) and the equilibrium norm
  the theory predicts from the recent lr history (dashed);
- dynamics_angles: one panel per layer, on one shared axis: the smoothed angle each update turns the
  layer's weights by, and the prediction the analysis compares it with: the equilibrium angle for a
  constant lr, the layer's lagged prediction under an lr schedule (as in the ratio figure). Steps where
  the lr is below 1% of its peak (the end of a schedule, where the prediction falls to 0) are left out;
- dynamics_ratio: measured / predicted angle per layer over the final window, with a band of the
  analysis' equilibrium tolerance (±15% by default) around agreement.
Layers marked "(~)" are only approximately scale-invariant (BN-preceded convs whose BN eps matters).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import figstyle
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch

PROG = "plot_dynamics"
BAND = 0.15  # the ratio figure's band around the prediction when the summary records no eq_tol
LR_FLOOR = 0.01  # steps at an lr below this fraction of the peak are not drawn (the prediction -> 0 with lr)


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


def _layer_grid(n: int, *, sharey: bool) -> tuple[Figure, list]:
    """One small panel per layer (4 a row): a layer's measured line and its prediction share a panel,
    so no two layers' colours or predictions can be confused."""
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.3 * ncols + 0.4, 2.5 * nrows + 1.3), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=sharey)
    for j in range(n, nrows * ncols):
        grid[j // ncols][j % ncols].set_axis_off()
    return fig, [grid[i // ncols][i % ncols] for i in range(n)]


def _label_grid(axes: list, ylabel: str) -> None:
    ncols = min(4, len(axes))
    for i, ax in enumerate(axes):
        ax.set_xlabel("step" if i + ncols >= len(axes) else "")
        ax.set_ylabel(ylabel if i % ncols == 0 else "")
        ax.title.set_fontsize(9)
        ax.xaxis.set_tick_params(labelbottom=True)


def _moving(series: pd.DataFrame) -> pd.DataFrame:
    """The rows where the lr is not ~0: at the end of a schedule the predictions fall to 0 with the lr (and
    off a log axis), which says nothing about the layers."""
    lr = series["lr"].astype(float)
    return series[lr > LR_FLOOR * lr.max()] if "lr" in series and lr.max() > 0 else series


def norms_figure(series: pd.DataFrame, layers: pd.DataFrame) -> Figure:
    figstyle.apply()
    params, display = _theory_layers(layers)
    color = figstyle.colors(1)[0]
    fig, axes = _layer_grid(len(params), sharey=False)
    for ax, p in zip(axes, params):
        g = series[series["param"] == p]
        ax.plot(g["step"], g["w_norm"], color=color, lw=1.5, label="measured")
        ax.plot(g["step"], g["norm_lagged"], color="black", lw=1.2, ls="--", label="lagged equilibrium prediction")
        ax.set_title(display[p])
        ax.set_yscale("log")
        figstyle.plain_log_ticks(ax)
    _label_grid(axes, "‖w‖")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle("Weight norms of the scale-invariant layers and their predicted equilibrium")
    return fig


def angles_figure(series: pd.DataFrame, layers: pd.DataFrame, summary: dict | None = None) -> Figure:
    figstyle.apply()
    params, display = _theory_layers(layers)
    color = figstyle.colors(1)[0]
    inv = series[series["param"].isin(params)]
    shown = _moving(inv)
    lagged = (summary or {}).get("compare_to") == "lagged"
    # under an lr schedule the analysis compares with each layer's lagged prediction (as the ratio figure
    # does); at constant lr the equilibrium is the same for every layer
    ref, ref_label = ("angle_ref", "lagged prediction") if lagged else ("angle_eq", "predicted equilibrium")
    fig, axes = _layer_grid(len(params), sharey=True)
    for ax, p in zip(axes, params):
        g = shown[shown["param"] == p]
        ax.plot(g["step"], g["angle_smooth"], color=color, lw=1.4, label="measured (smoothed RMS)")
        ax.plot(g["step"], g[ref], color="black", lw=1.6 if not lagged else 1.2, ls="-" if not lagged else "--",
                label=ref_label)
        ax.set_title(display[p])
    axes[0].set_yscale("log")  # shared by every panel
    figstyle.plain_log_ticks(axes[0])
    _label_grid(axes, "angle per step (rad)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False)
    dropped = len(inv) - len(shown)
    fig.suptitle("Angular update per step vs the equilibrium the theory predicts"
                 + (f"\n(steps where the lr is below {LR_FLOOR:.0%} of its peak left out)" if dropped else ""))
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
    ap.add_argument("-o", "--out", type=Path, default=None, help="folder for the figures (default: analysis_dir)")
    args = ap.parse_args(argv)
    out = figstyle.out_dir(PROG, args.out or args.analysis_dir)
    series, layers, summary = load(args.analysis_dir)
    if not layers["ratio"].notna().any():
        raise figstyle.fail(PROG, f"{args.analysis_dir}: no layer the theory applies to (no BN-preceded layer?)")
    figstyle.save(norms_figure(series, layers), out / "dynamics_norms")
    figstyle.save(angles_figure(series, layers, summary), out / "dynamics_angles")
    figstyle.save(ratio_figure(layers, summary), out / "dynamics_ratio")


if __name__ == "__main__":
    main()
