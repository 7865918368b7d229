"""The lr schedules, by their formulas written out here, and the lr the trainer actually uses per step.

Convention (bnlab.train): step i of epoch e (0-based) uses lr_at(e + (i + 1) / steps_per_epoch), the
lr at the END of the step, so global step s (1-based) uses the lr at fractional epoch s / steps_per_epoch.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bnlab.config import make_config
from bnlab.schedule import lr_at
from bnlab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def piecewise_default(t: float, peak: float, epochs: int) -> float:
    """DavidNet's shape stretched to the run: 0 -> peak linearly until 5/24 of the run, then -> 0."""
    top = 5 * epochs / 24
    return peak * t / top if t <= top else peak * max(0.0, (epochs - t) / (epochs - top))


@pytest.mark.parametrize("epochs", [24, 3, 10])
def test_piecewise_default_shape(epochs: int) -> None:
    c = make_config("bn", epochs=epochs, lr=0.4)
    for t in np.linspace(0, epochs + 2, 97):
        assert lr_at(c, float(t)) == pytest.approx(piecewise_default(float(t), 0.4, epochs), abs=1e-12), t


def test_piecewise_custom_knots_exp_and_const() -> None:
    c = make_config("bn", lr=2.0, epochs=10, lr_knots=(0, 2, 6, 20), lr_mults=(0.1, 1.0, 0.5, 0.0))
    expect = {0: 0.2, 1: 1.1, 2: 2.0, 4: 1.5, 6: 1.0, 13: 0.5, 20: 0.0, 25: 0.0}
    for t, v in expect.items():
        assert lr_at(c, t) == pytest.approx(v, abs=1e-12), t
    held = make_config("bn", lr=1.0, epochs=10, lr_knots=(0, 4), lr_mults=(0.0, 0.5))
    assert lr_at(held, 9.0) == pytest.approx(0.5)  # constant beyond the last knot
    e = make_config("bn", lr=0.005, lr_schedule="exp", epochs=25)
    for t in (0.0, 0.5, 3.0, 12.0, 24.75):
        assert lr_at(e, t) == pytest.approx(0.005 * 2 ** (t / 2), rel=1e-12)
    k = make_config("bn", lr=0.3, lr_schedule="const", epochs=4)
    assert all(lr_at(k, t) == 0.3 for t in (0.0, 1.7, 4.0))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("schedule,lr", [("piecewise", 0.4), ("exp", 0.02)])
def test_trainer_uses_the_lr_at_the_end_of_each_step(tmp_path: Path, schedule: str, lr: float) -> None:
    """Plain SGD (no momentum, no weight decay): every parameter moves by exactly lr * ||g|| in a step,
    so the logged dw / g of every step reveals the lr the optimizer used, which must be the schedule's
    value at s / steps_per_epoch."""
    cfg = make_config("bn", width=2, dataset="synthetic", synthetic_train=256, synthetic_test=50, batch_size=64,
                      epochs=2, lr=lr, lr_schedule=schedule, momentum=0.0, nesterov=False, weight_decay=0.0)
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    spe = 256 // 64

    def truth(t: float) -> float:
        return piecewise_default(t, lr, 2) if schedule == "piecewise" else lr * 2 ** (t / 2)

    rows = read_rows(tmp_path / "run" / "dynamics.csv")
    assert sorted({int(r["step"]) for r in rows}) == list(range(1, 2 * spe + 1))
    for r in rows:
        s = int(r["step"])
        assert float(r["lr"]) == pytest.approx(truth(s / spe), rel=1e-7, abs=1e-12), s
        assert float(r["epoch"]) == pytest.approx(s / spe, rel=1e-6)
        g, dw = float(r["g_norm"]), float(r["dw_norm"])
        if g > 1e-6:
            assert dw == pytest.approx(truth(s / spe) * g, rel=2e-3, abs=1e-9), (s, r["param"])
    metrics = read_rows(tmp_path / "run" / "metrics.csv")
    assert [float(m["lr"]) for m in metrics] == pytest.approx([truth(1.0), truth(2.0)], abs=1e-12)
