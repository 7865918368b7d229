#!/usr/bin/env python3
"""The weight-decay post's findings (F1-F4, F4b and F12 of docs/findings.md), checked against fixed thresholds:
a thin wrapper over `bnlab reproduce weight-decay`, which owns the runs, the checks and the report.

    python analyses/weight_decay_post.py --data-dir DIR/cifar-10-batches-py --out runs/wd_post
    python analyses/weight_decay_post.py --quick --out /tmp/wd_quick        # synthetic smoke scale

Any other `bnlab reproduce` option passes through (--scale, --device, --jobs, --force, -q). The report is
OUT/report.md (and .html, .json); rerunning with the same --out reuses every finished run.
"""
from __future__ import annotations

import sys

from bnlab.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--quick" in args:
        args = [a for a in args if a != "--quick"] + ["--scale", "smoke"]
    main(["reproduce", "weight-decay", *args])
