"""Sweeps: a point's result does not depend on -j; workers die with their parent; several
`--worker` processes share one folder and run every point once; a killed worker loses nothing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from bnlab.checkpoint import read_checkpoint
from bnlab.sweep import Grid, parse_grid, point_dir, run_sweep

BASE = dict(width=4, dataset="synthetic", synthetic_train=256, synthetic_test=64, batch_size=64, epochs=1)
CLI_BASE = ["--width", "4", "--dataset", "synthetic", "--set", "synthetic_train=512", "--set", "synthetic_test=64",
            "--batch-size", "64", "-q"]


def _weights(out: Path, grid: Grid) -> list[dict[str, torch.Tensor]]:
    return [read_checkpoint(point_dir(out, p) / "final.pt")["model"] for p in grid.points()]


def test_result_does_not_depend_on_jobs(tmp_path: Path) -> None:
    grid = Grid(axes=parse_grid("lr=0.1,0.2"), base=BASE, threads=2)
    run_sweep(grid, tmp_path / "j1", jobs=1, quiet=True)
    run_sweep(grid, tmp_path / "j2", jobs=2, quiet=True)
    for a, b in zip(_weights(tmp_path / "j1", grid), _weights(tmp_path / "j2", grid)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "j1" / "grid.json").read_text())["threads"] == 2


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is dead too
        return f.read().split()[2] != "Z"


def test_workers_die_with_the_parent(tmp_path: Path) -> None:
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "bnlab", "sweep", "--grid", "lr=0.1,0.2", *CLI_BASE, "--epochs", "50",
           "-j", "2", "--out", str(out)]
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        workers: list[int] = []
        while time.time() < deadline and not any((out / "points").glob("*/config.json")):
            time.sleep(0.2)
        workers = [c for c in _children(parent.pid)]
        assert workers, "the sweep started no workers"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "orphaned workers kept training"
    finally:
        os.killpg(parent.pid, signal.SIGKILL) if parent.poll() is None else None


def test_two_workers_share_a_sweep_and_a_killed_worker_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "s"
    plan = subprocess.run([sys.executable, "-m", "bnlab", "sweep", "--grid", "lr=0.05,0.1,0.2", *CLI_BASE,
                           "--epochs", "2", "--out", str(out), "--plan-only"], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    worker = [sys.executable, "-m", "bnlab", "sweep", str(out), "--worker", "-j", "1", "-q", "--no-summary"]
    first = subprocess.Popen(worker, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any((out / "points").glob("*/last.pt")):
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # mid-point: one epoch committed, the second not
    first.wait()
    procs = [subprocess.Popen(worker, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    grid = Grid.from_dict(json.loads((out / "grid.json").read_text()))
    for p in grid.points():
        status = json.loads((point_dir(out, p) / "status.json").read_text())
        assert status["status"] == "finished" and status["epoch"] == 2
        steps = [line.split(",", 1)[0] for line in (point_dir(out, p) / "dynamics.csv").read_text().splitlines()[1:]]
        counts = {s: steps.count(s) for s in set(steps)}
        assert len(set(counts.values())) == 1  # each step once per tensor: nothing ran twice into one folder
    # the summary is the same whichever process writes it
    s1 = subprocess.run([sys.executable, "-m", "bnlab", "sweep", str(out), "--summary-only", "-q"],
                        capture_output=True, text=True)
    assert s1.returncode == 0, s1.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["points"]] == ["finished"] * 3


def test_plain_sweep_refuses_a_folder_in_use(tmp_path: Path) -> None:
    from bnlab.errors import BnlabError
    from bnlab.rundir import LOCK_NAME
    from bnlab.sweep.runner import _flock

    out = tmp_path / "s"
    grid = Grid(axes=parse_grid("lr=0.1"), base=BASE)
    out.mkdir()
    with _flock(out / LOCK_NAME, shared=True):
        try:
            run_sweep(grid, out, quiet=True)
        except BnlabError as e:
            assert "in use by another bnlab sweep" in str(e)
        else:
            raise AssertionError("a plain sweep ran in a folder a worker holds")
