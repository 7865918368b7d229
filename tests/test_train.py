import csv
import json
import math

import pytest
import torch

from bnlab import load_checkpoint
from bnlab.config import make_config
from bnlab.norms import FrozenNorm, GhostBatchNorm
from bnlab.schedule import lr_at
from bnlab.train import train
from conftest import tiny_config


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_run_learns_and_writes_the_run_directory(tmp_path):
    result = train(tiny_config(epochs=3), tmp_path / "run", quiet=True)
    assert result.status == "finished"
    metrics = read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 3
    assert float(metrics[-1]["test_acc"]) > 0.5  # chance is 0.1
    assert float(metrics[-1]["train_loss"]) < float(metrics[0]["train_loss"])
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.csv", "dynamics.csv", "last.pt", "final.pt", "status.json"} <= files
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "finished"
    raw = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert {"model", "optimizer", "rng", "config", "metrics", "seed", "versions"} <= set(raw)


def test_dynamics_log_rows_are_consistent(tmp_path):
    train(tiny_config(epochs=1, weight_decay=0.0, log_channels=True), tmp_path / "run", quiet=True)
    rows = read_csv(tmp_path / "run" / "dynamics.csv")
    ckpt = load_checkpoint(tmp_path / "run" / "final.pt")
    names = [n for n, _ in ckpt.model.named_parameters()]
    steps = 1024 // 128
    assert len(rows) == steps * len(names)
    assert [r["param"] for r in rows[: len(names)]] == names
    last = {r["param"]: r for r in rows if int(r["step"]) == steps}
    for name, p in ckpt.model.named_parameters():  # logged norm after the last step = saved weights
        assert float(last[name]["w_norm"]) == pytest.approx(p.norm().item(), rel=1e-5)
    prev = {}
    for r in rows:
        name, w = r["param"], float(r["w_norm"])
        if name in prev:  # relative step is measured against the norm before the step
            assert float(r["rel_step"]) == pytest.approx(float(r["dw_norm"]) / prev[name], rel=1e-5)
        prev[name] = w
        if name.endswith("conv.weight"):  # BN-preceded: gradient orthogonal to w
            assert abs(float(r["cos_wg"])) < 1e-3
            # with wd=0 the update is ~orthogonal to w: angle ~= rel_step
            assert float(r["angle"]) == pytest.approx(float(r["rel_step"]), rel=0.05)
    ch = read_csv(tmp_path / "run" / "dynamics_channels.csv")
    assert {r["param"] for r in ch} == {n for n, p in ckpt.model.named_parameters() if p.dim() >= 2}


def test_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(epochs=3)
    train(cfg, tmp_path / "a", quiet=True)
    stopped = train(cfg, tmp_path / "b", quiet=True, stop_after_epoch=1)
    assert stopped.status == "stopped"
    assert not (tmp_path / "b" / "final.pt").exists()
    resumed = train(None, tmp_path / "b", resume=True, quiet=True)
    assert resumed.status == "finished"
    a = load_checkpoint(tmp_path / "a" / "final.pt").model.state_dict()
    b = load_checkpoint(tmp_path / "b" / "final.pt").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "dynamics.csv").read_text() == (tmp_path / "b" / "dynamics.csv").read_text()
    assert [r["test_acc"] for r in read_csv(tmp_path / "a" / "metrics.csv")] == \
        [r["test_acc"] for r in read_csv(tmp_path / "b" / "metrics.csv")]


def test_divergence_is_a_result_not_a_crash(tmp_path):
    cfg = tiny_config("no_bn", epochs=3, lr=50.0, lr_schedule="const", weight_decay=0.0)
    result = train(cfg, tmp_path / "run", quiet=True)
    assert result.status == "diverged"
    assert result.diverged["step"] >= 1 and result.diverged["lr"] == 50.0
    final = load_checkpoint(tmp_path / "run" / "final.pt")
    assert final.meta["status"] == "diverged"
    assert all(torch.isfinite(p).all() for p in final.model.parameters())


@pytest.mark.parametrize("variant,cls", [("bn", torch.nn.BatchNorm2d), ("ghost_bn", GhostBatchNorm),
                                         ("frozen_bn", FrozenNorm), ("no_bn", torch.nn.Identity)])
def test_variants_are_wired_to_their_norm_layer(tmp_path, variant, cls):
    train(tiny_config(variant, epochs=1), tmp_path / "run", quiet=True)
    ckpt = load_checkpoint(tmp_path / "run" / "final.pt")
    assert ckpt.config.variant == variant
    assert type(ckpt.model.layer2.norm) is cls
    if variant == "frozen_bn":  # calibrated from data, not left at (0, 1)
        assert not torch.equal(ckpt.model.prep.norm.running_var, torch.ones(8))


def test_lr_schedules():
    c = make_config("bn", epochs=24)
    assert lr_at(c, 0) == 0 and lr_at(c, 5) == pytest.approx(0.4) and lr_at(c, 24) == 0
    assert lr_at(c, 2.5) == pytest.approx(0.2)
    e = make_config("bn", lr=0.005, lr_schedule="exp", epochs=25)
    assert lr_at(e, 12) == pytest.approx(0.005 * 64)
    assert lr_at(make_config("bn", lr=0.1, lr_schedule="const"), 7.3) == 0.1
    p = make_config("bn", lr=5.0, epochs=10, lr_knots=(0, 4, 20), lr_mults=(0, 1, 0))
    assert lr_at(p, 10) == pytest.approx(5.0 * 10 / 16)
    assert math.isclose(lr_at(make_config("bn", epochs=12), 2.5), 0.4)
