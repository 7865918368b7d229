"""benchmarks/train_throughput.py at smoke size: bnlab and the bare loop measured in fresh processes."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


def test_smoke_run_prints_rows_and_ratio() -> None:
    p = subprocess.run([sys.executable, str(SCRIPT), "--images", "512", "--test-images", "100", "--batch-size", "256",
                        "--epochs", "1", "--repeats", "1", "--width", "8", "--threads", "1"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert lines[0].startswith("width 8, batch 256, 512 images, 1 epochs, 1 threads")
    rows = {ln.split()[0]: [float(x) for x in ln.split()[1:]] for ln in lines[2:] if ln.split()[0] in ("bnlab", "bare")}
    assert set(rows) == {"bnlab", "bare"}
    assert all(r[0] > 0 and r[1] > 0 for r in rows.values())  # img/s and wall seconds
    assert 0 <= rows["bnlab"][5] <= 1  # test accuracy of the trained run
    ratio = re.search(r"median bnlab/bare ([0-9.]+) \(goal >= 0.95\)", lines[-1])
    assert ratio, lines[-1]
    # one repeat: the median is that repeat's ratio (img/s are printed to 0.1)
    assert float(ratio.group(1)) == pytest.approx(rows["bnlab"][0] / rows["bare"][0], abs=2e-3)
