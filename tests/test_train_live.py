"""A run's folder shows its progress while the first epoch runs: status.json says running from the
start, and the dynamics log reaches disk every few seconds (here: every step), so `bnlab dynamics`
works on a run that is still training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import bnlab.train as trainer
from bnlab.dynamics.log import read_run
from conftest import tiny_config


def test_dynamics_log_is_on_disk_during_the_first_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer, "DYNAMICS_FLUSH_SECONDS", 0.0)
    seen: list[int] = []
    real_step = trainer._Run.flush_dynamics

    def flush_and_look(self: trainer._Run) -> None:  # after each flush, read the folder as a user would
        real_step(self)
        if self.epoch == 0 and (self.out / "dynamics.csv").exists():
            log = read_run(self.out)
            seen.append(int(log.dynamics["step"].max()))
            assert json.loads((self.out / "status.json").read_text())["status"] == "running"

    monkeypatch.setattr(trainer._Run, "flush_dynamics", flush_and_look)
    trainer.train(tiny_config(epochs=1), tmp_path / "run", quiet=True)
    assert seen[:3] == [1, 2, 3]  # visible step by step, long before the epoch ended (8 steps)
