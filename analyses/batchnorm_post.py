#!/usr/bin/env python3
"""The batch-norm post's findings (F5-F11 of docs/findings.md: collapse at init, LR stress test, and the
three-model comparison of output-statistic gradients and Hessian outliers), checked against fixed thresholds:
a thin wrapper over `bnlab reproduce batch-norm`, which owns the runs, the checks and the report.

    python analyses/batchnorm_post.py --data-dir DIR/cifar-10-batches-py --out runs/bn_post
    python analyses/batchnorm_post.py --quick --out /tmp/bn_quick           # synthetic smoke scale

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
    main(["reproduce", "batch-norm", *args])
