#!/usr/bin/env python3
"""Figures of `bnlab outstats` results, each as PNG and PDF, into --out.

    python figures/plot_outstats.py BN_DIR FROZEN_DIR NOBN_DIR --out figs/

Each positional argument is an outstats output dir (outstats.json + outstats.pt); each is named by the model
its record describes ("simple net w8, frozen BN"; --labels overrides). Draws:
- layer_grad_norms: per-layer ‖∇ mean logit 0‖², models side by side (log scale);
- perturbation: fraction predicted as class c before / after a δ step along ∇ mean_c / after a
  random step of the same size, one panel per model (same y axis);
- overlaps: ‖Pv‖² of each Hessian eigenvector v with the span of the mean gradients and of all
  output-statistic gradients, against what a random direction gives (log axis: a random direction's
  overlap is dim/P, often 1e-3 or less; needs --num-eigs/--eigvecs);
- projected_eigs: top Hessian eigenvalues before and after projecting that span out, one panel per
  model on one shared log axis (needs --project);
- kde_<label>: per-channel activation distributions by layer, at initialisation (left half of each
  violin) and trained (right half), with each layer's channel-mean share (needs histograms).
A figure whose data no input has is skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
import re
from pathlib import Path

import figstyle
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from bnlab.io.torchfile import load_torch_file

PROG = "plot_outstats"
OPERATORS = ("H", "(I−P) H (I−P)")
PERTURB = (("frac_before", "before"), ("frac_after_grad", "after δ step along ∇ mean_c"),
           ("frac_after_random", "after random step"))


def load(folder: Path) -> tuple[dict, dict]:
    try:
        return (json.loads((folder / "outstats.json").read_text()),
                load_torch_file(folder / "outstats.pt"))  # tensors only: a crafted file cannot run code
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        raise figstyle.fail(PROG, f"{folder} is not a bnlab outstats output ({e})") from None


def _panels(n: int, width: float = 3.6, height: float = 3.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n + 0.6, height + 0.9), layout="constrained")
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def layer_norms_figure(runs: dict[str, dict]) -> Figure:
    figstyle.apply()
    rows = [{"model": m, "layer": lay, "sq_norm": v} for m, s in runs.items()
            for lay, v in zip(s["layers"], s["layer_sq_norms"]["mean[0]"])]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fig = Figure(figsize=(max(6.5, 0.75 * len(layers) * max(1, len(runs) / 2) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    sns.barplot(pd.DataFrame(rows), x="layer", y="sq_norm", hue="model", palette=figstyle.color_map(runs), ax=ax)
    ax.set(yscale="log", xlabel="layer", ylabel="‖∇ mean logit 0‖² within the layer",
           title="Gradient of an output mean, split by layer")
    figstyle.plain_log_ticks(ax)
    figstyle.rotate_xticks(ax)
    figstyle.legend_outside(ax, title="model")
    return fig


def perturbation_figure(runs: dict[str, dict]) -> Figure | None:
    have = {m: s["perturbation"]["rows"] for m, s in runs.items() if (s.get("perturbation") or {}).get("rows")}
    if not have:
        return None
    figstyle.apply()
    fig, axes = _panels(len(have))
    colors = figstyle.colors(len(PERTURB))
    for ax, (m, prs) in zip(axes, have.items()):
        names = figstyle.class_names(runs[m].get("settings", {}), max(r["class"] for r in prs) + 1)
        df = pd.DataFrame([{"class": names[r["class"]], "when": when, "fraction": r[key]}
                           for r in prs for key, when in PERTURB])
        sns.barplot(df, x="class", y="fraction", hue="when", hue_order=[w for _, w in PERTURB],
                    palette=colors, ax=ax, legend=ax is axes[0])
        ax.set(title=m, xlabel="class c", ylabel="fraction of examples predicted as c" if ax is axes[0] else "",
               ylim=(0, 1))
        figstyle.rotate_xticks(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle("A small step along one class's mean-logit gradient vs a random step of the same size")
    return fig


def overlaps_figure(runs: dict[str, dict]) -> Figure | None:
    have = {m: s for m, s in runs.items() if (s.get("eigen") or {}).get("overlap_full")}
    if not have:
        return None
    figstyle.apply()
    fig, axes = _panels(len(have))
    spans = (("overlap_means", "span of mean gradients"), ("overlap_full", "span of mean, var, skew gradients"))
    colors = figstyle.colors(len(spans))
    values = [v for s in have.values() for key, _ in spans for v in s["eigen"].get(key) or [] if v > 0]
    randoms = [s["span"]["random_overlap_expected"] for s in have.values()]
    # a log axis: the random direction's dim/P sits decades below the eigenvectors' overlaps
    bottom = 0.3 * min([*values, *randoms])
    for ax, (m, s) in zip(axes, have.items()):
        df = pd.DataFrame([{"eigenvector": i + 1, "span": name, "overlap": v}
                           for key, name in spans for i, v in enumerate(s["eigen"].get(key) or [])])
        sns.barplot(df, x="eigenvector", y="overlap", hue="span", hue_order=[n for _, n in spans], palette=colors,
                    ax=ax)
        ax.get_legend().remove()
        rnd = s["span"]["random_overlap_expected"]
        ax.axhline(rnd, color="black", ls="--", lw=1.5, label="random direction")
        ax.text(0.99, rnd, f"random: {rnd:.1e}", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=8)
        ax.set(title=m, xlabel="Hessian eigenvector (by eigenvalue rank)",
               ylabel="‖P v‖²  (overlap with span)" if ax is axes[0] else "", yscale="log", ylim=(bottom, 1.0))
    figstyle.plain_log_ticks(axes[0])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle("How much of each top Hessian eigenvector lies in the output-statistic gradient span")
    return fig


def projected_figure(runs: dict[str, dict]) -> Figure | None:
    have = {}
    for m, s in runs.items():
        vals = ((s.get("eigen") or {}).get("eigenvalues") or [], (s.get("projected") or {}).get("eigenvalues") or [])
        if any(vals):
            have[m] = vals
    if not have:
        return None
    figstyle.apply()
    fig, axes = _panels(len(have))
    colors = figstyle.colors(len(OPERATORS))
    positive = all(v > 0 for vals in have.values() for series in vals for v in series)
    k_max = max(len(series) for vals in have.values() for series in vals)
    for ax, (m, vals) in zip(axes, have.items()):
        for op, series, color, marker in zip(OPERATORS, vals, colors, ("o", "s")):
            if series:
                ax.plot(np.arange(1, len(series) + 1), series, marker=marker, color=color, label=op)
        ax.set(title=m, xlabel="rank", ylabel="Hessian eigenvalue" if ax is axes[0] else "", xlim=(0.5, k_max + 0.5))
        ax.set_xticks(np.arange(1, k_max + 1, max(1, math.ceil(k_max / 8))))
    if positive:
        figstyle.log_axis(axes[0])  # the panels share the y axis: limits on labelled ticks, every point inside
    else:
        for ax in axes:
            ax.set_yscale("symlog")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, frameon=False,
               title="P: projection onto the span of the output-statistic gradients")
    fig.suptitle("Top Hessian eigenvalues before and after projecting out the output-statistic span")
    return fig


def kde_figure(name: str, tensors: dict, channels: int = 5, ncols: int = 3) -> Figure | None:
    """Split violins per channel and layer: left half at initialisation, right half trained."""
    acts = tensors.get("activations")
    if not acts:
        return None
    states = (("init", "at initialisation"), ("checkpoint", "trained"))
    panels = {}
    for layer in acts["checkpoint"]:
        shares = [acts[k][layer]["layer_mean_share"] for k, _ in states]
        panels[f"{layer}   mean share {shares[0]:.2f} → {shares[1]:.2f}"] = {
            state: acts[key][layer]["samples"] for key, state in states}
    fig, _ = figstyle.split_violins(panels, [state for _, state in states], channels=channels, ncols=ncols,
                                    panel_size=(3.6, 2.7), ylabel="activation",
                                    legend_title="violin halves (width-normalised densities)")
    fig.suptitle(f"{name}: activation distributions of the first {channels} channels of each layer\n"
                 "(mean share: Σ channel mean² / Σ E[x²]; 1 = channels constant over inputs)")
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="`bnlab outstats` output directories")
    ap.add_argument("--labels", default=None,
                    help="comma-separated names (default: the model each record describes)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="folder for the figures")
    args = ap.parse_args(argv)
    out = figstyle.out_dir(PROG, args.out)
    if args.labels and len(args.labels.split(",")) != len(args.dirs):
        raise figstyle.fail(PROG, "--labels needs one name per directory")
    records = [load(d) for d in args.dirs]
    labels = args.labels.split(",") if args.labels else figstyle.unique_labels(
        [figstyle.model_label(s.get("settings", {})) for s, _ in records], [str(d) for d in args.dirs])
    if len(set(labels)) != len(labels):
        raise figstyle.fail(PROG, "--labels must be distinct")
    loaded = dict(zip(labels, records))
    runs = {lab: s for lab, (s, _) in loaded.items()}
    figures = {"layer_grad_norms": layer_norms_figure(runs), "perturbation": perturbation_figure(runs),
               "overlaps": overlaps_figure(runs), "projected_eigs": projected_figure(runs)}
    figures.update({f"kde_{_slug(lab)}": kde_figure(lab, t) for lab, (_, t) in loaded.items()})
    for stem, fig in figures.items():
        if fig is None:
            print(f"skipped {stem}: no input has its data")
        else:
            figstyle.save(fig, out / stem)


def _slug(label: str) -> str:
    """A file-name stem from a label: "simple net w2, frozen BN" -> "simple_net_w2_frozen_BN"."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_") or "model"


if __name__ == "__main__":
    main()
