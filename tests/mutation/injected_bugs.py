#!/usr/bin/env python3
"""Plausible science bugs, injected one at a time into a copy of the sources: the suite must fail on each.

The first three are the bugs a review once injected that the suite let through (batch weighting,
lagged dynamics predictions, the lr off by one step); the others are their neighbours. Each entry
names the file, the exact text replaced, the replacement, and the test files run against the copy.
Nothing is written into the repository.

    python tests/mutation/injected_bugs.py            # every bug; exit code 1 if one survives
    python tests/mutation/injected_bugs.py --list     # what is injected where
    python tests/mutation/injected_bugs.py weighting  # one bug by name

(Mutation testing of whole modules with mutmut: tests/mutation/run_mutation.py, tests/MUTATION.md.)
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Bug:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


BUGS = (
    Bug("weighting", "every batch of the Hessian weighted 1/(number of batches) instead of n_b/N",
        "bnlab/curvature/base.py",
        "return [self.scale * n / self.num_samples for n in self.sizes]",
        "return [self.scale / len(self.sizes) for n in self.sizes]",
        ("tests/curvature/test_operator.py",)),
    Bug("lagged_momentum", "momentum dropped from the lagged norm recursion",
        "bnlab/theory.py", "    A = filter_sum(momentum)\n    decay = 1 - 4 * lrs * wd * A",
        "    A = 1.0\n    decay = 1 - 4 * lrs * wd * A", ("tests/test_theory.py", "tests/dynamics")),
    Bug("lagged_nesterov", "Nesterov ignored in the lagged angle",
        "bnlab/theory.py", "np.sqrt(noise_gain(momentum, nesterov) * np.asarray(grad_scale)",
        "np.sqrt(noise_gain(momentum, False) * np.asarray(grad_scale)", ("tests/test_theory.py", "tests/dynamics")),
    Bug("lr_off_by_one", "the schedule's lr taken at the start of each step instead of its end",
        "bnlab/train.py", "frac = epoch + (i + 1) / run.steps_per_epoch",
        "frac = epoch + i / run.steps_per_epoch", ("tests/test_train.py",)),
    Bug("dense_weighting", "the ground-truth dense Hessian weights batches equally (as the operator once did)",
        "bnlab/curvature/dense.py", "* (len(y) / n_total)", "* (1 / len(batches))",
        ("tests/curvature/test_operator.py", "tests/curvature/test_curvature.py")),
    Bug("relaxation", "relaxation time without the momentum factor",
        "bnlab/theory.py", "return (1 - momentum) / (4 * np.asarray(lr) * np.asarray(wd, dtype=float))",
        "return 1 / (4 * np.asarray(lr) * np.asarray(wd, dtype=float))", ("tests/test_theory.py", "tests/dynamics")),
)


def export(dst: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def run_bug(bug: Bug, work: Path) -> tuple[bool, float, str]:
    """(caught, seconds, last line of pytest) for one bug injected into a fresh copy."""
    copy = work / bug.name
    export(copy)
    target = copy / bug.path
    text = target.read_text()
    if text.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: the text to replace occurs {text.count(bug.old)} times in {bug.path}; "
                         "update tests/mutation/injected_bugs.py")
    target.write_text(text.replace(bug.old, bug.new))
    env = {**os.environ, "PYTHONPATH": str(copy), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", "0", *bug.tests],
                       cwd=copy, env=env, capture_output=True, text=True)
    tail = (r.stdout.strip().splitlines() or [""])[-1]
    shutil.rmtree(copy, ignore_errors=True)
    return r.returncode != 0, time.perf_counter() - t0, tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="bugs to inject (default: all)")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    known = {b.name: b for b in BUGS}
    if args.list:
        for b in BUGS:
            print(f"{b.name:16s} {b.path}: {b.what}  (tests: {' '.join(b.tests)})")
        return
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise SystemExit(f"unknown bug(s) {', '.join(unknown)}; known: {', '.join(known)}")
    survived = []
    with tempfile.TemporaryDirectory(prefix="bnlab-bugs-") as tmp:
        for b in [known[n] for n in args.names] or BUGS:
            caught, secs, tail = run_bug(b, Path(tmp))
            print(f"{'caught  ' if caught else 'SURVIVED'} {b.name:16s} {secs:6.1f}s  {b.what}  [{tail}]", flush=True)
            if not caught:
                survived.append(b.name)
    if survived:
        print(f"{len(survived)} bug(s) survived: {', '.join(survived)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
