#!/usr/bin/env python3
"""The figure of every finding of a `bnlab reproduce` folder, drawn from the stages' result files.

    python figures/plot_findings.py DIR [-o DIR/figures] [--only F2,F9]

Reads DIR/report.json (which findings were decided, and which stage folders hold their data) and writes
OUT/<id>.png and OUT/<id>.pdf per decided finding (OUT: -o, default DIR/figures), one "wrote PATH" line
per file. `bnlab reproduce` draws the same figures itself (`bnlab.reproduce.figures`, each finding's panel
from its module in bnlab/findings/); rerun this script to redraw them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import figstyle

from bnlab.reproduce.figures import draw_findings

PROG = "plot_findings"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="a `bnlab reproduce` folder")
    ap.add_argument("-o", "--out", type=Path, default=None, help="folder for the figures (default DIR/figures)")
    ap.add_argument("--only", default=None, help="comma-separated finding ids")
    args = ap.parse_args(argv)
    try:
        report = json.loads((args.dir / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise figstyle.fail(PROG, f"{args.dir} holds no readable report.json ({e})") from None
    out = figstyle.out_dir(PROG, args.out or args.dir / "figures")
    outcome = draw_findings(args.dir, report, out, set(args.only.split(",")) if args.only else None, quiet=False)
    for fid, tb in outcome.failed.items():
        print(f"{PROG}: {fid} failed:\n{tb}", file=sys.stderr)
    if outcome.failed:
        print(f"{PROG}: error: no figure for {', '.join(outcome.failed)} (tracebacks above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
