"""Draw `bnlab hessian` results: top-k eigenvalues of several checkpoints side by side, and densities.

    python figures/plot_hessian.py RUN_A/hessian.json RUN_B/hessian.json --labels BN,frozen -o hessian.png

Left: the top-k eigenvalues of each file (one strip per file, log scale). Right: the SLQ spectral
densities (files computed with --density), with their ±2 standard-error band. The BN mode and the
units of each file go into its label, because eigenvalues in different modes or units do not compare.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402


def label_of(rec: dict, name: str) -> str:
    s = rec["settings"]
    return f"{name}\n({s['bn_mode']}, {s['loss_scale']})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--labels", default=None, help="comma-separated names (default: parent folder names)")
    ap.add_argument("-o", "--out", default="hessian.png")
    args = ap.parse_args()
    names = args.labels.split(",") if args.labels else [f.parent.name for f in args.files]
    if len(names) != len(args.files):
        raise SystemExit("plot_hessian: error: --labels needs one name per file")
    recs = [json.loads(f.read_text()) for f in args.files]
    rows = [{"checkpoint": label_of(r, n), "rank": i + 1, "eigenvalue": lam}
            for r, n in zip(recs, names) for i, lam in enumerate(r.get("eigen", {}).get("eigenvalues", []))]
    dens = [(label_of(r, n), r["density"]) for r, n in zip(recs, names) if "density" in r]
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2 if dens else 1, figsize=(12 if dens else 6, 4.5), squeeze=False)
    ax = axes[0, 0]
    if rows:
        df = pd.DataFrame(rows)
        sns.stripplot(data=df, x="checkpoint", y="eigenvalue", hue="rank", palette="viridis", size=6, jitter=0.15,
                      ax=ax, legend=False)
        if (df["eigenvalue"] > 0).all():
            ax.set_yscale("log")
        ax.set_title("top-k Hessian eigenvalues")
        ax.set_xlabel("")
    if dens:
        ax = axes[0, 1]
        for label, d in dens:
            g, p, se = np.array(d["grid"]), np.array(d["density"]), np.array(d["density_stderr"])
            ax.plot(g, p, label=label.replace("\n", " "))
            ax.fill_between(g, np.clip(p - 2 * se, 1e-12, None), p + 2 * se, alpha=0.25)
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-6)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (SLQ, Gaussian-smoothed)")
        ax.set_title("spectral density ±2 s.e.")
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
