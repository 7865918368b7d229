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

from bnlab.plotting.series import LR_ZERO, figure  # noqa: F401 (the script's figure, drawn by the package)

PROG = "plot_hessian_series"
STEM = "hessian_series"


def load(path: Path) -> dict:
    path = path / "hessian_series.json" if path.is_dir() else path
    try:
        series = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise figstyle.fail(PROG, f"cannot read {path} ({e})") from None
    if not isinstance(series, dict) or series.get("format") != "bnlab-hessian-series":
        raise figstyle.fail(PROG, f"{path} is not a bnlab hessian series (hessian_series.json)")
    return series


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
