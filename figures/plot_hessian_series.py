#!/usr/bin/env python3
"""Curvature along training from `bnlab hessian RUN_DIR --out DIR` (hessian_series.json): the F12 figure.

    python figures/plot_hessian_series.py DIR [-o figs/]

Writes hessian_series.png and .pdf (into DIR unless -o names a folder or a FILE.png). Left: λ1 (mean-loss
units, as recorded) at every checkpoint, λ2..k faintly, and the stability threshold / η where η > 0 (what λ1
would be at the edge of stability). Middle: η·λ1 / threshold with the 0.5-2x band that `bnlab reproduce`
checks (F12); checkpoints at η = 0 have no such ratio and are marked on the step axis. Right: the squared
overlap of each top eigenvector with the previous checkpoint's top-k space (1 = the direction persisted).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import figstyle
import numpy as np
from matplotlib.figure import Figure

PROG = "plot_hessian_series"
STEM = "hessian_series"
LR_ZERO = 1e-12  # an lr below this is the end of a schedule: no edge of stability to compare with


def load(path: Path) -> dict:
    path = path / "hessian_series.json" if path.is_dir() else path
    try:
        series = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise figstyle.fail(PROG, f"cannot read {path} ({e})") from None
    if not isinstance(series, dict) or series.get("format") != "bnlab-hessian-series":
        raise figstyle.fail(PROG, f"{path} is not a bnlab hessian series (hessian_series.json)")
    return series


def figure(series: dict, title: str | None = None) -> Figure:
    """The three panels of one hessian_series.json record."""
    figstyle.apply()
    cps = sorted((c for c in series["checkpoints"] if c.get("eigenvalues")), key=lambda c: c["step"])
    steps = np.array([c["step"] for c in cps], dtype=float)
    lr = np.array([c["lr"] for c in cps], dtype=float)
    scale = float(series.get("settings", {}).get("scale_factor", 1.0))  # batch-summed -> mean loss
    eig = np.array([c["eigenvalues"] for c in cps], dtype=float) / scale
    threshold = float(series["threshold"])
    moving = lr > LR_ZERO
    c_lam, c_ratio = figstyle.colors(2)
    fig = Figure(figsize=(15, 4.4), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    ax = axes[0]
    for i in range(1, eig.shape[1]):
        ax.plot(steps, eig[:, i], color=c_lam, alpha=0.35, lw=1, label="λ2..λk" if i == 1 else None)
    ax.plot(steps, eig[:, 0], "o-", color=c_lam, label="λ1")
    if moving.any():
        ax.plot(steps[moving], threshold / lr[moving], "--", color="black",
                label=f"threshold / η  ({threshold:.3g} / η)")
    ax.set(xlabel="step", ylabel="eigenvalue (mean loss)", title="Top Hessian eigenvalues")
    figstyle.log_axis(ax)
    ax.legend(fontsize=8, loc="best")
    ax = axes[1]
    ax.axhspan(0.5, 2.0, color=c_ratio, alpha=0.12, lw=0, label="0.5-2x (F12's band)")
    ax.axhline(1.0, color="black", lw=1)
    ratio = lr * eig[:, 0] / threshold
    ax.plot(steps[moving], ratio[moving], "o-", color=c_ratio, label="η·λ1 / threshold")
    ax.set(xlabel="step", ylabel="η·λ1 / threshold",
           title=f"Edge of stability (μ = {series['momentum']:g}{', Nesterov' if series.get('nesterov') else ''})")
    figstyle.log_axis(ax)
    if (~moving).any():  # the lr = 0 checkpoints: λ1 is drawn on the left, the ratio is 0 (off a log axis)
        for s in steps[~moving]:
            ax.axvline(s, color="grey", ls=":", lw=1)
        ax.plot([], [], color="grey", ls=":", label="η = 0 (no ratio)")
    ax.legend(fontsize=8, loc="best")
    ax = axes[2]
    rows = [(c["step"], np.asarray(c["overlap_with_previous"], dtype=float).sum(axis=0)) for c in cps
            if c.get("overlap_with_previous") is not None]
    if rows:
        st = np.array([r[0] for r in rows])
        ov = np.stack([r[1] for r in rows])
        for i, color in zip(range(ov.shape[1]), figstyle.colors(ov.shape[1])):
            ax.plot(st, ov[:, i], "o-", ms=4, color=color, label=f"v{i + 1}")
        ax.set(ylim=(-0.02, 1.02), xlabel="step", ylabel="‖P_prev v_i‖²",
               title="Overlap with the previous top-k space")
        figstyle.legend_outside(ax, title="eigenvector")
    else:
        ax.set_axis_off()
    pad = 0.05 * (steps.max() - steps.min()) if steps.size > 1 else 1.0
    axes[0].set_xlim(steps.min() - pad, steps.max() + pad)  # shared: every panel covers every checkpoint
    if title:
        fig.suptitle(title)
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("series", type=Path, help="a hessian_series.json (or the folder holding it)")
    ap.add_argument("-o", "--out", type=Path, default=None,
                    help="a folder, or FILE.png; .png and .pdf are written (default: the series' folder)")
    args = ap.parse_args(argv)
    series = load(args.series)
    folder = args.series if args.series.is_dir() else args.series.parent
    figstyle.save(figure(series), figstyle.out_file(PROG, args.out, STEM, folder))


if __name__ == "__main__":
    main()
