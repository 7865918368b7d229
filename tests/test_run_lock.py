"""One writer per run directory: a second process that wants a folder another one is writing is
refused with one line; the lock dies with its process (no stale locks after a kill)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnlab.errors import BnlabError
from bnlab.rundir import LOCK_NAME, claim_out_dir

HOLD = """
import sys, time
from bnlab.rundir import claim_out_dir
with claim_out_dir(sys.argv[1], resume=True):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_refused_and_lock_released_on_kill(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    holder = _holder(folder)
    try:
        with pytest.raises(BnlabError, match=rf"in use by another bnlab process \(pid {holder.pid}\)"):
            with claim_out_dir(folder, resume=True):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claim_out_dir(folder, resume=True):  # the kernel released the dead process's lock
        assert (folder / LOCK_NAME).exists()


def test_two_trainings_into_one_folder(tmp_path: Path) -> None:
    """Two `bnlab train` started together on one --out: exactly one trains, the other is refused."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bnlab", "train", "--width", "8", "--dataset", "synthetic", "--subset", "1000",
           "--test-subset", "200", "--batch-size", "128", "--epochs", "2", "-q", "--out", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[2] == 2)
    assert loser[1].count("\n") == 1 and ("in use by another" in loser[1] or "not empty" in loser[1]), loser[1]
    steps = [line.split(",", 1)[0] for line in (out / "dynamics.csv").read_text().splitlines()[1:]]
    per_step = {s: steps.count(s) for s in set(steps)}
    assert len(set(per_step.values())) == 1  # every step logged once per parameter tensor, not twice


def test_failed_claim_removes_the_folder_it_created(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with claim_out_dir(out):
            raise RuntimeError("the computation failed")
    assert not out.exists()
    kept = tmp_path / "kept"
    with claim_out_dir(kept):
        (kept / "result.json").write_text("{}")
    assert (kept / "result.json").exists()
    time.sleep(0)
    assert os.path.isdir(kept)
