#!/usr/bin/env python3
"""Figures of `bnlab outstats` results (seaborn), one PNG each, into --out.

    python figures/plot_outstats.py BN_DIR FROZEN_DIR NOBN_DIR --labels bn,frozen,no_bn --out figs/

Each positional argument is an outstats output dir (outstats.json + outstats.pt). Draws:
layer_grad_norms.png (per-layer ‖∇mean₀‖², models side by side), perturbation.png (predicted-as-c
fraction before / after the δ step / after a random step, per class), overlaps.png (‖Pv‖² per
eigenvector, means span and full span), projected_eigs.png (top eigenvalues before/after
projection), kde_<model>.png (per-channel activation KDEs by layer, at init and trained).
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


def load(folder: Path) -> tuple[dict, dict]:
    return (json.loads((folder / "outstats.json").read_text()),
            torch.load(folder / "outstats.pt", map_location="cpu", weights_only=False))


def layer_norms(runs: dict[str, dict], out: Path) -> None:
    rows = [{"model": m, "layer": lay, "sq_norm": v} for m, s in runs.items()
            for lay, v in zip(s["layers"], s["layer_sq_norms"]["mean[0]"])]
    plt.figure(figsize=(9, 4))
    ax = sns.barplot(pd.DataFrame(rows), x="layer", y="sq_norm", hue="model")
    ax.set(yscale="log", ylabel="‖∇ mean logit 0‖² in layer", title="Gradient of an output mean, per layer")
    plt.xticks(rotation=45, ha="right")
    plt.tight_layout()
    plt.savefig(out / "layer_grad_norms.png", dpi=120)
    plt.close()


def perturbation(runs: dict[str, dict], out: Path) -> None:
    rows = []
    for m, s in runs.items():
        for r in s.get("perturbation", {}).get("rows", []):
            for key, when in (("frac_before", "before"), ("frac_after_grad", "δ step along ∇mean_c"),
                              ("frac_after_random", "random step")):
                rows.append({"model": m, "class": r["class"], "when": when, "fraction": r[key]})
    if not rows:
        return
    g = sns.catplot(pd.DataFrame(rows), x="class", y="fraction", hue="when", col="model", kind="bar",
                    height=3.2, aspect=1.2)
    g.set_axis_labels("class c", "fraction predicted as c")
    g.savefig(out / "perturbation.png", dpi=120)
    plt.close("all")


def overlaps(runs: dict[str, dict], out: Path) -> None:
    rows = [{"model": m, "eigenvector": i + 1, "span": span, "overlap": v}
            for m, s in runs.items() if "eigen" in s
            for span, key in (("means", "overlap_means"), ("means+vars+skews", "overlap_full"))
            for i, v in enumerate(s["eigen"].get(key, []))]
    if not rows:
        return
    g = sns.catplot(pd.DataFrame(rows), x="eigenvector", y="overlap", hue="span", col="model", kind="bar",
                    height=3.2, aspect=1.3)
    g.set_axis_labels("Hessian eigenvector", "‖P v‖²")
    g.savefig(out / "overlaps.png", dpi=120)
    plt.close("all")


def projected(runs: dict[str, dict], out: Path) -> None:
    rows = []
    for m, s in runs.items():
        for when, vals in (("H", (s.get("eigen") or {}).get("eigenvalues") or []),
                           ("(I-P)H(I-P)", (s.get("projected") or {}).get("eigenvalues") or [])):
            rows += [{"model": m, "rank": i + 1, "operator": when, "eigenvalue": v} for i, v in enumerate(vals)]
    if not rows:
        return
    g = sns.relplot(pd.DataFrame(rows), x="rank", y="eigenvalue", hue="operator", col="model", marker="o",
                    kind="line", height=3.2, aspect=1.2, facet_kws={"sharey": False})
    g.savefig(out / "projected_eigs.png", dpi=120)
    plt.close("all")


def kdes(name: str, tensors: dict, out: Path, channels: int = 4) -> None:
    acts = tensors.get("activations")
    if not acts:
        return
    layers = list(acts["checkpoint"])
    fig, axes = plt.subplots(2, len(layers), figsize=(2.2 * len(layers), 4.5), squeeze=False)
    for row, when in enumerate(("init", "checkpoint")):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            samples = acts[when][layer]["samples"]
            for c in range(min(channels, samples.shape[0])):
                v = samples[c].double()
                if v.std() > 0:
                    sns.kdeplot(x=v.numpy(), ax=ax, fill=False, warn_singular=False)
            share = acts[when][layer]["layer_mean_share"]
            ax.set_title(f"{layer}\nmean share {share:.2f}", fontsize=8)
            ax.set(ylabel=when if col == 0 else "", yticks=[])
            ax.tick_params(labelsize=6)
    fig.suptitle(f"{name}: per-channel activation densities (first {channels} channels)")
    fig.tight_layout()
    fig.savefig(out / f"kde_{name}.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description="Plot bnlab outstats results.")
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--labels", default=None, help="comma-separated names (default: folder names)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else [d.name for d in args.dirs]
    if len(labels) != len(args.dirs):
        raise SystemExit("--labels needs one name per directory")
    args.out.mkdir(parents=True, exist_ok=True)
    loaded = {lab: load(d) for lab, d in zip(labels, args.dirs)}
    runs = {lab: s for lab, (s, _) in loaded.items()}
    layer_norms(runs, args.out)
    perturbation(runs, args.out)
    overlaps(runs, args.out)
    projected(runs, args.out)
    for lab, (_, t) in loaded.items():
        kdes(lab, t, args.out)
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
