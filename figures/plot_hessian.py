#!/usr/bin/env python3
"""Draw `bnlab hessian` results: the top eigenvalues of several checkpoints, and their densities.

    python figures/plot_hessian.py RUN_A/hessian.json RUN_B/hessian.json [-o figs/]

Writes hessian.png and hessian.pdf (-o: a folder, or FILE.png; default the current folder). Each file is
named by the model its record describes ("simple net w8, frozen BN"; --labels overrides). Left: the top-k
eigenvalues against their rank, one colour per file (hollow markers: pairs that did not converge to --tol).
Right, for files computed with --density: the SLQ spectral density with a ±2 standard-error band, in the
same colours. The BN mode and loss units of each file are part of its legend entry: eigenvalues in
different modes or units do not compare.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import figstyle
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

PROG = "plot_hessian"


def label_of(rec: dict, name: str) -> str:
    s = rec["settings"]
    return f"{name} ({s['bn_mode']} BN, {s['loss_scale']} loss)" if s.get("bn_mode") not in (None, "none") \
        else f"{name} ({s['loss_scale']} loss)"


def default_names(records: list[dict], files: list[Path]) -> list[str]:
    """The model each record describes, with the file's folder added where two would read the same."""
    return figstyle.unique_labels([figstyle.model_label(r.get("settings", {})) for r in records],
                                  [f.parent.name for f in files])


def figure(records: list[dict], names: list[str]) -> Figure:
    """Eigenvalues by rank (and densities where present) of `records` (hessian.json contents)."""
    figstyle.apply()
    labels = [label_of(r, n) for r, n in zip(records, names)]
    colors = figstyle.color_map(labels)
    dens = [(lab, r["density"]) for r, lab in zip(records, labels) if "density" in r]
    fig = Figure(figsize=(11 if dens else 6.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if dens else 1, squeeze=False)[0]
    ax = axes[0]
    any_unconverged = False
    all_positive = True
    k_max = 1
    for rec, lab in zip(records, labels):
        eig = rec.get("eigen") or {}
        lam = np.asarray(eig.get("eigenvalues") or [], dtype=float)
        if lam.size == 0:
            continue
        conv = np.asarray(eig.get("converged") or [True] * lam.size, dtype=bool)
        rank = np.arange(1, lam.size + 1)
        k_max = max(k_max, lam.size)
        all_positive &= bool((lam > 0).all())
        ax.plot(rank, lam, color=colors[lab], lw=1.5, label=lab)
        ax.plot(rank[conv], lam[conv], "o", color=colors[lab], ms=6)
        if (~conv).any():
            any_unconverged = True
            ax.plot(rank[~conv], lam[~conv], "o", mfc="white", mec=colors[lab], ms=6)
    if all_positive:
        figstyle.log_axis(ax)
    else:
        ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xticks(np.arange(1, k_max + 1, max(1, k_max // 10)))
    ax.set_xlim(0.5, k_max + 0.5)
    ax.set(xlabel="rank", ylabel="Hessian eigenvalue", title="Top Hessian eigenvalues")
    handles, hl = ax.get_legend_handles_labels()
    if any_unconverged:
        handles.append(Line2D([], [], ls="", marker="o", mfc="white", mec="grey"))
        hl.append("not converged")
    if dens:
        ax2 = axes[1]
        top = 0.0
        for lab, d in dens:
            g, p, se = (np.asarray(d[k], dtype=float) for k in ("grid", "density", "density_stderr"))
            ax2.plot(g, p, color=colors[lab])
            top = max(top, float(np.nanmax(p)))
            ax2.fill_between(g, np.clip(p - 2 * se, 1e-12, None), p + 2 * se, color=colors[lab], alpha=0.25, lw=0)
        ax2.set_yscale("log")
        ax2.set_ylim(1e-6, 5 * top if top > 0 else None)  # a wide error band must not squash the curves
        ax2.set(xlabel="eigenvalue", ylabel="density (SLQ, Gaussian-smoothed)",
                title="Spectral density (band: ±2 standard errors)")
    fig.legend(handles, hl, loc="outside lower center", ncols=min(3, len(hl)), frameon=False)
    return fig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path, help="hessian.json files written by `bnlab hessian`")
    ap.add_argument("--labels", default=None,
                    help="comma-separated names (default: the model each record describes)")
    ap.add_argument("-o", "--out", type=Path, default=None,
                    help="a folder, or FILE.png; .png and .pdf are written (default ./hessian.png)")
    args = ap.parse_args(argv)
    target = figstyle.out_file(PROG, args.out, "hessian", Path("."))
    if args.labels and len(args.labels.split(",")) != len(args.files):
        raise figstyle.fail(PROG, "--labels needs one name per file")
    try:
        records = [json.loads(f.read_text()) for f in args.files]
    except (OSError, ValueError) as e:
        raise figstyle.fail(PROG, f"cannot read a hessian.json ({e})") from None
    names = args.labels.split(",") if args.labels else default_names(records, args.files)
    figstyle.save(figure(records, names), target)


if __name__ == "__main__":
    main()
