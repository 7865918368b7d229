"""Worker processes never outlive their parent (issue 24, item 8): a `sweep -j 2` or `reproduce -j 2`
killed (SIGTERM or SIGKILL) right after its workers were spawned, while they are still starting up,
leaves no worker behind within a few seconds."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep.test_sweep_workers import CLI_BASE, _alive, _children

COMMANDS = {
    "sweep": ["sweep", "--grid", "lr=0.1,0.2", *CLI_BASE, "--epochs", "50", "-j", "2"],
    "reproduce": ["reproduce", "F6", "--scale", "smoke", "--no-figures", "-q", "-j", "2"],
}


def _workers(parent: int) -> list[int]:
    """The pool's worker processes among the parent's children (not multiprocessing's resource tracker)."""
    out = []
    for pid in _children(parent):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(pid)
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_workers_die_with_a_parent_killed_while_they_start(tmp_path: Path, command: str, sig: int) -> None:
    cmd = [sys.executable, "-m", "bnlab", *COMMANDS[command], "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(workers) < 2 and parent.poll() is None:
            time.sleep(0.05)
            workers = _workers(parent.pid)
        assert len(workers) == 2, "the command started no two workers"
        # Let the parent queue the work items (workers that find one train on as orphans) while the workers
        # are still importing torch: the window where the parent pid used to be read too late.
        time.sleep(2.0)
        parent.send_signal(sig)
        parent.wait(timeout=60)
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), f"orphaned workers kept running after {sig.name}"
        if sig == signal.SIGTERM:  # the parent killed its pool and exited as SIGTERM asks
            assert parent.returncode in (143, -signal.SIGTERM)
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def _python(code: str, **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}, **kwargs)


def test_a_worker_whose_parent_died_before_it_started_exits_at_once() -> None:
    """The parent pid is passed in: a worker re-parented before its initializer ran (its getppid() is
    another process now) exits instead of working on as an orphan."""
    child = _python("from bnlab.runtime import exit_with_parent; import time; "
                    "exit_with_parent(2**22 + 12345, poll_seconds=1e6); time.sleep(60)", stderr=subprocess.PIPE)
    assert child.wait(timeout=120) == 1
    assert child.stderr.read() == b""  # exited as asked, not by an error


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_kernel_kills_a_worker_with_its_parent() -> None:
    """With the pid poll switched off (once in 10^6 s), only PR_SET_PDEATHSIG can end the worker when
    its parent is SIGKILLed: it must be gone within seconds."""
    worker = ("from bnlab.runtime import exit_with_parent; import os, time; "
              "exit_with_parent(os.getppid(), poll_seconds=1e6); print('armed', flush=True); time.sleep(120)")
    parent = _python(f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', {worker!r}], "
                     "stdout=subprocess.PIPE, text=True); print(c.pid, flush=True); "
                     "print(c.stdout.readline(), end='', flush=True); time.sleep(120)",
                     stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "armed"
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _alive(pid):
            time.sleep(0.05)
        assert not _alive(pid), "the worker outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
