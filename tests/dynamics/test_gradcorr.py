"""The gradients' autocorrelation log (--log-grad-lags): cos(g_t, g_{t-k}) per tensor, against numpy on known
gradient sequences, through a real training run and its resume, and the options' refusals."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnlab.config import make_config
from bnlab.dynamics.log import GRADCORR_FILE, read_run
from bnlab.dynamics.tracker import DynamicsTracker
from bnlab.errors import BnlabError
from bnlab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(3, 2))
        self.b = nn.Parameter(torch.ones(4))


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    den = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x.ravel() @ y.ravel() / den) if den > 0 else math.nan


def test_cosines_at_every_lag_equal_numpys_through_the_ring(tmp_path: Path) -> None:
    """Nine steps through a ring of K = 3 (it wraps twice), logging steps 2, 4, 5, 8, 9: every logged cosine is
    numpy's of the two gradients k steps apart, NaN where fewer than k were kept or a gradient is zero."""
    K, gen = 3, np.random.default_rng(0)
    model = _Two()
    tr = DynamicsTracker(model, grad_lags=K)
    history: list[list[np.ndarray]] = []
    logged = {2, 4, 5, 8, 9}
    for step in range(1, 10):
        grads = [gen.normal(size=p.shape) for p in model.parameters()]
        if step == 8:
            grads[1] = np.zeros(4)  # a zero gradient: its cosines are undefined
        for p, g in zip(model.parameters(), grads):
            p.grad = torch.tensor(g, dtype=torch.float32)
        tr.observe_grads(step in logged)
        if step in logged:
            tr.before_step()
            tr.after_step(step, step / 10, 0.1, torch.tensor(1.0), torch.tensor(0.5))
        history.append(grads)
    tr.flush(tmp_path / "d.csv", None, tmp_path / "g.csv")
    with open(tmp_path / "g.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "param", "gcos_1", "gcos_2", "gcos_3"]
    assert [(int(r["step"]), r["param"]) for r in rows] == [(s, n) for s in sorted(logged) for n in ("a", "b")]
    for r in rows:
        s, i = int(r["step"]), ("a", "b").index(r["param"])
        for k in range(1, K + 1):
            got = float(r[f"gcos_{k}"])
            want = _cos(history[s - 1][i], history[s - 1 - k][i]) if s - k >= 1 else math.nan
            if math.isnan(want):
                assert math.isnan(got), (s, r["param"], k)
            else:
                assert got == pytest.approx(want, abs=1e-5), (s, r["param"], k)
    assert not tr.gc_rows  # flushed


def test_without_lags_nothing_is_kept_or_written(tmp_path: Path) -> None:
    model = _Two()
    tr = DynamicsTracker(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    tr.before_step()
    tr.after_step(1, 0.1, 0.1, torch.tensor(1.0), torch.tensor(0.5))
    tr.flush(tmp_path / "d.csv", None, tmp_path / "g.csv")
    assert (tmp_path / "d.csv").is_file() and not (tmp_path / "g.csv").exists()


def _config(**kw: object):  # noqa: ANN202
    base = dict(width=2, dataset="synthetic", synthetic_train=96, synthetic_test=20, batch_size=32, epochs=2,
                lr_schedule="const", lr=0.1, log_every=2, log_grad_lags=2)
    base.update(kw)
    return make_config("bn", **base)


def test_a_run_logs_the_autocorrelation_at_its_logged_steps_and_resumes(tmp_path: Path) -> None:
    """3 steps per epoch, logged every 2nd: rows at steps 2, 4, 6 for every tensor (step 2's lag 2 would be step 0:
    NaN; steps 4 and 6 have both lags, cosines in [-1, 1]); an interrupted
    run resumed after epoch 1 (step 3) restarts its ring: step 4's lags reach back before the resume (NaN), step 6's
    do not and equal the uninterrupted run's (the resume continues the same run)."""
    whole = tmp_path / "whole"
    train(_config(), whole, device="cpu", quiet=True)
    log = read_run(whole)
    g = log.gradcorr
    assert g is not None and sorted(set(g["step"].astype(int))) == [2, 4, 6]
    assert set(g.param_order) == set(log.dynamics.param_order)
    later = g.select(g["step"] > 2)
    both = np.concatenate([later["gcos_1"], later["gcos_2"], g.select(g["step"] == 2)["gcos_1"]])
    assert np.all(np.isfinite(both)) and np.all(np.abs(both) <= 1 + 1e-6)
    assert np.all(np.isnan(g.select(g["step"] == 2)["gcos_2"]))

    part = tmp_path / "part"
    train(_config(), part, device="cpu", quiet=True, stop_after_epoch=1)
    train(None, part, device="cpu", quiet=True, resume=True)
    g2 = read_run(part).gradcorr
    at4 = g2.select(g2["step"] == 4)
    assert np.all(np.isnan(at4["gcos_1"])) and np.all(np.isnan(at4["gcos_2"]))
    for step in (2, 6):
        for lag in ("gcos_1", "gcos_2") if step == 6 else ("gcos_1",):
            np.testing.assert_allclose(g2.select(g2["step"] == step)[lag], g.select(g["step"] == step)[lag], atol=1e-5)
    assert sorted(set(g2["step"].astype(int))) == [2, 4, 6] and len(g2["step"]) == len(g["step"])


def test_a_run_without_lags_writes_no_autocorrelation(tmp_path: Path) -> None:
    train(_config(log_grad_lags=0, epochs=1), tmp_path / "r", device="cpu", quiet=True)
    assert not (tmp_path / "r" / GRADCORR_FILE).exists() and read_run(tmp_path / "r").gradcorr is None


@pytest.mark.parametrize("kw,match", [(dict(log_grad_lags=33), r"--log-grad-lags"),
                                      (dict(log_grad_lags=-1), r"--log-grad-lags"),
                                      (dict(log_grad_lags=2, log_every=0), r"^--log-grad-lags needs the dynamics log")])
def test_impossible_lag_options_are_refused(kw: dict, match: str) -> None:
    with pytest.raises(BnlabError, match=match):
        _config(**kw)
