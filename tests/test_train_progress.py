"""What a training run tells its user while it runs: progress lines off a terminal, the whole run's ETA,
the CPU cost of a large net at its start, where a resume starts."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

import bnlab.train as trainer
from bnlab.progress import Progress, RunEta, eta_text
from bnlab.train import train
from conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def test_run_eta_closed_form() -> None:
    eta = RunEta(total=10, done=0, steps_per_stage=5)
    assert eta.remaining() is None  # nothing timed yet
    eta.add_step(2.0)
    eta.add_step(4.0)
    assert eta.seconds_per_step == 3.0 and eta.remaining() == 8 * 3.0  # no evaluation timed yet
    eta.add_eval(5.0)
    assert eta.remaining() == 8 * 3.0 + 2 * 5.0  # 8 steps left = 2 more stages, each ending in an evaluation
    resumed = RunEta(total=10, done=6, steps_per_stage=5)  # a resumed run times its own steps only
    resumed.add_step(1.0)
    assert resumed.remaining() == 3 * 1.0
    assert [eta_text(s) for s in (40, 700, 3.5 * 3600, 19 * 3600)] == ["40s", "12min", "3.5h", "19h"]


def test_heartbeat_lines_off_a_terminal() -> None:
    stream = io.StringIO()  # not a TTY
    bar = Progress(4, "stage", unit="step", stream=stream, heartbeat=0.0)
    for i in range(3):
        bar.update(1, f"item {i}")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and all(line.startswith("stage: ") for line in lines)
    assert re.match(r"stage: 2/4 step in [0-9.]+s, .* left \| item 1$", lines[1]), lines[1]
    assert "left" not in lines[-1] and lines[-1].endswith("| item 2")  # the closing line: 3/4 done
    quiet = io.StringIO()
    Progress(4, "stage", stream=quiet, heartbeat=0.0, quiet=True).update(1)
    without = io.StringIO()
    Progress(4, "stage", stream=without).update(1)  # no heartbeat: only the closing line (never closed here)
    assert quiet.getvalue() == without.getvalue() == ""


def test_training_prints_progress_within_an_epoch_and_the_run_eta(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    train(tiny_config(epochs=2, synthetic_train=512), tmp_path / "run", device="cpu", progress_every=1e-9)
    out, err = capsys.readouterr()
    steps = 512 // 128
    beats = [line for line in err.splitlines() if line.startswith("epoch 1/2: ") and " left | " in line]
    assert len(beats) == steps - 1  # one per step but the last, whose line is the epoch's closing line
    assert all(re.search(r"\| loss [0-9.]+ acc [0-9.]+ lr [0-9.e-]+ \| run ETA [0-9.]+(s|min|h)$", b) for b in beats)
    assert re.search(r"^epoch 1: .* eval \| run ETA [0-9.]+(s|min|h)$", out, re.M), out
    assert "run ETA" not in out.splitlines()[-1]  # the last epoch: nothing left
    assert "note: on this CPU" not in err  # width 8: no cost note


def test_cpu_cost_note_and_resume_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer, "SLOW_CPU_WIDTH", 8)  # tiny_config's width stands for a large one
    train(tiny_config(epochs=2), tmp_path / "run", device="cpu", stop_after_epoch=1, progress_every=None)
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note: on this CPU")]
    assert len(notes) == 1, err
    m = re.search(r"takes about [0-9.]+(s|min|h) more \(([0-9.e+-]+) s/step over the first 2 steps, 14 steps left\); "
                  r"`--width 16` \(~[0-9]+x less compute\) or `bnlab reproduce --scale cpu` finish on a CPU$", notes[0])
    assert m and float(m.group(2)) > 0, notes[0]
    train(None, tmp_path / "run", resume=True, device="cpu", progress_every=None)
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "resuming from epoch 1 (last.pt)"
    assert len(re.findall("note: on this CPU", err)) == 1 and "12 steps left" not in err  # 6 left after 2 more
    assert "over the first 2 steps, 6 steps left" in err
