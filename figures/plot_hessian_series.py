#!/usr/bin/env python3
"""Curvature along training from `bnlab hessian RUN_DIR --out DIR` (hessian_series.json): the F12 figure.

    python figures/plot_hessian_series.py DIR/hessian_series.json -o series.png

Left: lambda1 (mean-loss units) at every checkpoint with the stability threshold / lr (what lambda1 would be at
the edge of stability) and lambda2..k faintly. Middle: eta lambda1 / threshold, with the band 0.5-2x that
`bnlab reproduce` checks (F12). Right: squared overlap of each top eigenvector with the previous
checkpoint's eigenspace (row sums of overlap_with_previous: 1 = the direction persisted).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402


def draw(series: dict, out: Path, title: str | None = None) -> Path:
    """Draw one hessian_series.json record into `out` (PNG)."""
    cps = sorted(series["checkpoints"], key=lambda c: c["step"])
    steps = np.array([c["step"] for c in cps])
    lr = np.array([c["lr"] for c in cps])
    eta_l1 = np.array([c["eta_lambda1"] for c in cps])
    lam1 = eta_l1 / lr  # mean-loss units whatever loss_scale the eigenvalues were computed in
    scale = np.array([c["eigenvalues"][0] for c in cps]) / lam1
    threshold = series["threshold"]
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    k = len(cps[0]["eigenvalues"])
    for i in range(1, k):
        ax.plot(steps, [c["eigenvalues"][i] for c in cps] / scale, color="C0", alpha=0.3, lw=1,
                label="λ2..λk" if i == 1 else None)
    ax.plot(steps, lam1, "o-", color="C0", label="λ1")
    ax.plot(steps, threshold / lr, "--", color="black", label=f"threshold / η ({threshold:.3g}/η)")
    ax.set(xlabel="step", ylabel="eigenvalue (mean loss)", yscale="log", title="top Hessian eigenvalues")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.axhspan(0.5, 2.0, color="C2", alpha=0.15, label="0.5-2x (F12)")
    ax.axhline(1.0, color="black", lw=1)
    ax.plot(steps, eta_l1 / threshold, "o-", color="C1", label="η·λ1 / threshold")
    ax.set(xlabel="step", ylabel="η·λ1 / threshold", yscale="log",
           title=f"edge of stability (μ = {series['momentum']:g}{', Nesterov' if series.get('nesterov') else ''})")
    ax.legend(fontsize=8)
    ax = axes[2]
    rows = [(c["step"], np.array(c["overlap_with_previous"]).sum(axis=0)) for c in cps
            if c.get("overlap_with_previous") is not None]
    if rows:
        st = np.array([r[0] for r in rows])
        ov = np.stack([r[1] for r in rows])
        for i in range(ov.shape[1]):
            ax.plot(st, ov[:, i], "o-", ms=3, label=f"v{i + 1}")
        ax.set(ylim=(-0.02, 1.02), xlabel="step", ylabel="‖P_prev v_i‖²",
               title="overlap with the previous top-k space")
        ax.legend(fontsize=8, ncol=2)
    else:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("series", type=Path, help="a hessian_series.json (or the folder holding it)")
    ap.add_argument("-o", "--out", type=Path, default=Path("hessian_series.png"))
    args = ap.parse_args()
    path = args.series / "hessian_series.json" if args.series.is_dir() else args.series
    try:
        series = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"plot_hessian_series: cannot read {path} ({e})") from None
    if series.get("format") != "bnlab-hessian-series":
        raise SystemExit(f"plot_hessian_series: {path} is not a bnlab hessian series")
    print(f"wrote {draw(series, args.out)}")


if __name__ == "__main__":
    main()
