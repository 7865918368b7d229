#!/usr/bin/env python3
"""Figure from a `bnlab ablate --out DIR` result (ablation.json), as PNG and PDF.

    python figures/plot_ablation.py DIR [--out FIGDIR]

ablation: two panels over the post's steps, each step holding every trick before it. Left: test
accuracy, each seed a dot and the mean ± standard error as a bar. Right: the training time of a run
(mean over seeds, evaluation excluded) next to the post's V100 time to 94%, each on its own axis, since
the machines differ; what compares is the shape.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import figstyle
import numpy as np
from matplotlib.figure import Figure

PROG = "plot_ablation"


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)  # JSON writes NaN (one seed: no s.e.) as null


def load(src: Path) -> list[dict]:
    try:
        rows = json.loads((src / "ablation.json").read_text())["steps"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise figstyle.fail(PROG, f"{src} is not a bnlab ablation output ({e})") from None
    if not rows:
        raise figstyle.fail(PROG, f"{src}/ablation.json holds no steps")
    return rows


def ablation_figure(rows: list[dict]) -> Figure:
    figstyle.apply()
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    acc_ax, time_ax = fig.subplots(1, 2)
    x = np.arange(len(rows))
    labels = [r["step"] for r in rows]
    ours, post = figstyle.colors(2)
    for i, r in enumerate(rows):
        accs = [100 * run["test_acc"] for run in r["runs"] if run["status"] == "finished"]
        acc_ax.scatter([i] * len(accs), accs, color=ours, alpha=0.45, s=16, zorder=2,
                       label="one seed" if i == 0 else None)
    mean = 100 * np.array([_num(r["test_acc_mean"]) for r in rows])
    se = np.nan_to_num(100 * np.array([_num(r["test_acc_se"]) for r in rows]))
    acc_ax.errorbar(x, mean, yerr=se, fmt="o-", color="black", capsize=3, lw=1.2, zorder=3, label="mean ± s.e.")
    acc_ax.set(xticks=x, ylabel="test accuracy (%)", title="Accuracy after each added trick")
    acc_ax.set_xticklabels(labels)
    figstyle.rotate_xticks(acc_ax)
    acc_ax.legend(loc="best", frameon=False)
    t = np.array([_num(r["train_s_mean"]) for r in rows])
    t_se = np.nan_to_num(np.array([_num(r["train_s_se"]) for r in rows]))
    time_ax.bar(x - 0.2, t, width=0.4, yerr=t_se, color=ours, capsize=2, label="this run (left axis)")
    time_ax.set(xticks=x, ylabel="training time per run (s)", title="Training time per step")
    time_ax.set_xticklabels(labels)
    figstyle.rotate_xticks(time_ax)
    twin = time_ax.twinx()
    twin.bar(x + 0.2, [r["post_seconds"] for r in rows], width=0.4, color=post, label="post, V100 (right axis)")
    twin.set(ylabel="post's time to 94% on a V100 (s)")
    # head room on both axes: the legend sits above the bars
    time_ax.set_ylim(0, 1.35 * float(np.nanmax(t + t_se)))
    twin.set_ylim(0, 1.35 * max(r["post_seconds"] for r in rows))
    twin.grid(False)
    handles = time_ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    names = time_ax.get_legend_handles_labels()[1] + twin.get_legend_handles_labels()[1]
    time_ax.legend(handles, names, loc="upper right", frameon=False)
    return fig


def main(argv: list[str] | None = None) -> None:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog=PROG, description=doc.splitlines()[0], epilog=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ablation_dir", type=Path, help="a `bnlab ablate` output directory (ablation.json)")
    parser.add_argument("--out", type=Path, help="folder for the figure (default: ablation_dir)")
    args = parser.parse_args(argv)
    target = (args.out or args.ablation_dir) / "ablation.png"
    figstyle.save(ablation_figure(load(args.ablation_dir)), target)


if __name__ == "__main__":
    main()
