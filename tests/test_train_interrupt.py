"""Ctrl-C and SIGTERM stop a training run with its state recorded, and `--resume` continues it exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bnlab.checkpoint import read_checkpoint
from bnlab.cli import main
from bnlab.config import TrainConfig
from bnlab.interrupt import Interrupt, signals_interrupt
from bnlab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]
TINY_CLI = ["--variant", "bn", "--width", "4", "--dataset", "synthetic", "--subset", "500", "--test-subset", "50",
            "--batch-size", "32", "--progress-every", "0.001"]  # 15 steps per epoch, a progress line per step


def _signal_when(out: Path, epochs: int, line_start: str, sig: int) -> tuple[int, str]:
    """Start `bnlab train` in a subprocess, send `sig` when stderr shows a line starting so; (exit code, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # one thread, as the in-process runs
    argv = [sys.executable, "-m", "bnlab", "train", *TINY_CLI, "--epochs", str(epochs), "--out", str(out)]
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen = []
    try:
        for line in p.stderr:
            seen.append(line)
            if line.startswith(line_start):
                p.send_signal(sig)
                sent = time.perf_counter()
                break
        rest = p.stderr.read()
        code = p.wait(timeout=120)
    finally:
        p.kill()
    assert time.perf_counter() - sent < 60  # not a whole epoch's wait (measured 3.5 s at load 12 on 2 cores)
    return code, "".join(seen) + rest


def test_sigint_records_interrupted_and_resume_continues_exactly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, err = _signal_when(out, 2, "epoch 2/2:", signal.SIGINT)
    assert code == 130, err
    status = json.loads((out / "status.json").read_text())
    done = status["epoch"]  # the last finished epoch
    assert status["status"] == "interrupted" and done == 1, status
    assert read_checkpoint(out / "last.pt")["epoch"] == done and status["step"] == 15 * done
    info = status["interrupted"]
    assert info["signal"] == "SIGINT" and info["resume_from_epoch"] == done and info["step"] > 15 * done
    assert info["resume_command"] == f"bnlab train --resume {out}"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted (SIGINT) at step {info['step']} (epoch 2/2, step "), last
    assert f"Resume with: bnlab train --resume {out}  (continues from epoch {done} (last.pt))" in last

    r = CliRunner().invoke(main, ["train", "--resume", str(out), "--progress-every", "30"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == f"resuming from epoch {done} (last.pt)"
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    # the same weights as the run never interrupted (same config, one thread both)
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    train(config, tmp_path / "ref", device="cpu", quiet=True)
    ref, got = read_checkpoint(tmp_path / "ref" / "final.pt")["model"], read_checkpoint(out / "final.pt")["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_sigterm_in_the_first_epoch_restarts_from_the_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, err = _signal_when(out, 1, "epoch 1/1:", signal.SIGTERM)
    assert code == 143, err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["epoch"] == 0 and status["interrupted"]["signal"] == "SIGTERM"
    assert not (out / "last.pt").exists()
    assert err.strip().splitlines()[-1].endswith("(continues from the start (no epoch had finished))")
    r = CliRunner().invoke(main, ["train", "--resume", str(out), "-q"])
    assert r.exit_code == 0 and r.stdout.startswith("finished:"), r.output


def test_a_signal_during_a_long_kernel_reaches_the_watcher() -> None:
    """The main thread inside one long C++ call cannot run Python's handler; the watcher thread acts."""
    events = []
    a = torch.randn(3000, 3000)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when pytest runs as a background job
    with pytest.raises(Interrupt) as caught:
        with signals_interrupt(lambda intr: events.append(("watcher", intr.signal_name)), grace=0.2):
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
            torch.mm(a, a)  # one call of ~1 s or more on one thread
            events.append(("main", "after the kernel"))  # never: the handler raises first
    events.append(("main", caught.value.signal_name))
    assert events == [("watcher", "SIGINT"), ("main", "SIGINT")]
    assert caught.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is before  # restored
