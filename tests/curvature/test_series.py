"""Curvature along training: `bnlab hessian RUN_DIR` against per-checkpoint solves (its edge-of-stability
threshold is checked against simulated SGD in tests/test_theory.py), and what warm starts save."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import bnlab
from bnlab import theory
from bnlab.cli import main
from bnlab.curvature.series import squared_overlaps
from bnlab.train import train
from conftest import tiny_config


def test_squared_overlaps() -> None:
    q, _ = torch.linalg.qr(torch.randn(20, 3, dtype=torch.float64))
    u = q.T
    rot = torch.tensor([[0.6, 0.8, 0.0], [-0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    o = squared_overlaps(u, rot @ u)
    torch.testing.assert_close(o, torch.tensor([[0.36, 0.64, 0.0], [0.64, 0.36, 0.0], [0.0, 0.0, 1.0]],
                                               dtype=torch.float64))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(epochs=3, save_every=1, width=4, synthetic_train=256, batch_size=64, lr=0.1), out,
          quiet=True)
    return out


def test_series_equals_per_checkpoint_solves(tmp_path: Path, run_dir: Path) -> None:
    out = tmp_path / "series"
    r = CliRunner().invoke(main, ["hessian", str(run_dir), "--top-k", "3", "--tol", "1e-6", "--num-samples", "60",
                                  "--batch-size", "30", "--compare-cold", "-q", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "hessian_series.json").read_text())
    assert rec["format"] == "bnlab-hessian-series" and len(rec["checkpoints"]) == 3
    assert rec["threshold"] == pytest.approx(2 * 1.9 / 2.8)
    config = bnlab.load_checkpoint(run_dir / "final.pt").config
    for i, e in enumerate(rec["checkpoints"]):
        assert e["epoch"] == i + 1 and e["warm_started"] == (i > 0)
        single = bnlab.hessian(run_dir / f"ckpt_epoch_{i + 1:03d}.pt", top_k=3, tol=1e-6, num_samples=60,
                               batch_size=30)
        assert e["eigenvalues"] == pytest.approx(single.eigenvalues.tolist(), rel=1e-4)
        metrics = json.loads(json.dumps(bnlab.load_checkpoint(run_dir / "final.pt").meta["metrics"]))
        assert e["lr"] == pytest.approx(metrics[i]["lr"])
        assert e["eta_lambda1"] == pytest.approx(e["lr"] * e["eigenvalues"][0])
        assert e["ratio_to_threshold"] == pytest.approx(e["eta_lambda1"] / theory.stability_threshold(
            config.momentum, config.nesterov))
        if i:
            o = torch.tensor(e["overlap_with_previous"])
            assert o.shape == (3, 3) and bool((o >= 0).all()) and bool((o.sum(0) <= 1 + 1e-6).all())
            assert e["hvps_cold"] is not None
        assert (out / f"epoch_{i + 1:03d}" / "eigvecs.pt").is_file()
    wc = rec["warm_vs_cold"]
    assert wc["hvps_warm"] > 0 and wc["hvps_cold"] > 0


def test_series_needs_saved_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(epochs=1, width=4, synthetic_train=256, batch_size=64), run, quiet=True)
    r = CliRunner().invoke(main, ["hessian", str(run), "--num-samples", "60", "--batch-size", "30", "-q",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--save-every" in r.stderr and not (tmp_path / "o").exists()
