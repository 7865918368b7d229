"""`bnlab info`: an aligned, readable summary; the frozen model's own accuracy first; strict JSON;
config.json and checkpoints record resolved values, and configs with nulls still load."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bnlab.checkpoint import save_checkpoint
from bnlab.cli import main
from bnlab.config import TrainConfig, make_config
from bnlab.models import DEFAULT_CLASSIFIER_SCALE, build_model
from bnlab.train import train
from conftest import tiny_config


def run(*args: object):  # noqa: ANN201
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def strict_json(text: str) -> dict:
    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_constants)


def rows(output: str) -> dict[str, str]:
    lines = output.rstrip("\n").splitlines()
    colons = {line.index(": ") for line in lines}
    assert len(colons) == 1, f"labels not aligned:\n{output}"  # one column for every ':'
    return {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in lines}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("info")
    train(tiny_config(epochs=1, width=4, synthetic_train=512, synthetic_test=200), root / "run", quiet=True)
    run("freeze", root / "run" / "final.pt", "-o", root / "frozen.pt")
    return {"bn": root / "run" / "final.pt", "frozen": root / "frozen.pt", "root": root}


def test_config_json_records_resolved_values(runs: dict[str, Path]) -> None:
    cfg = json.loads((runs["bn"].parent / "config.json").read_text())
    assert cfg["lr_knots"] == [0.0, 5 / 24, 1.0] and cfg["lr_mults"] == [0.0, 1.0, 0.0]
    assert cfg["model"]["classifier_scale"] == DEFAULT_CLASSIFIER_SCALE["davidnet"]
    assert cfg["model"]["affine"] is True and cfg["model"]["act_param"] is None  # relu takes none
    simple = make_config("no_bn", model="simple", act="softplus").to_dict()
    assert simple["model"]["act_param"] == 10.0 and simple["model"]["affine"] is False


def test_old_configs_with_nulls_load_as_the_values_they_meant() -> None:
    d = make_config("bn", epochs=12).to_dict()
    d.update(lr_knots=None, lr_mults=None)
    d["model"].update(classifier_scale=None, affine=None, act_param=None)
    cfg = TrainConfig.from_dict(d)
    assert cfg == make_config("bn", epochs=12)
    assert cfg.knots() == ((0.0, 2.5, 12.0), (0.0, 1.0, 0.0))


def test_info_of_a_trained_checkpoint(runs: dict[str, Path]) -> None:
    r = rows(run("info", runs["bn"]).output)
    ckpt = torch.load(runs["bn"], weights_only=True)
    acc = ckpt["metrics"][-1]["test_acc"]
    assert r["variant"] == "bn" and r["status"] == "finished"
    assert r["test acc"].startswith(f"{acc:.4f} (this model")
    assert "parent acc" not in r
    assert r["versions"] == f"bnlab {ckpt['versions']['bnlab']}, torch {ckpt['versions']['torch']}"
    assert "{" not in r["versions"] and "piecewise (epoch:multiple 0:0, 0.2083:1, 1:0)" in r["training"]
    s = strict_json(run("info", runs["bn"], "--json").output)
    assert s["test_acc"] == acc and s["parent"] is None
    assert s["model"]["width"] == 4 and s["training"]["lr_knots"] == [0.0, 5 / 24, 1.0]


def test_info_of_a_frozen_checkpoint_puts_its_own_accuracy_first(runs: dict[str, Path]) -> None:
    meta = torch.load(runs["frozen"], weights_only=True)
    own, parent = meta["frozen"]["test_acc"], meta["metrics"][-1]["test_acc"]
    out = run("info", runs["frozen"]).output
    r = rows(out)
    assert r["variant"] == "frozen_bn"
    assert r["test acc"].startswith(f"{own:.4f} (frozen model")
    assert r["parent acc"].startswith(f"{parent:.4f} (BN model before freezing")
    assert out.index("test acc") < out.index("parent acc")
    assert str(runs["bn"].resolve()) in r["frozen from"]
    s = strict_json(run("info", runs["frozen"], "--json").output)
    assert s["test_acc"] == own and s["parent"]["test_acc"] == parent
    assert s["parent"]["path"] == str(runs["bn"].resolve()) and s["status"] == "frozen"


def test_info_json_is_strict_for_a_diverged_checkpoint(tmp_path: Path) -> None:
    cfg = make_config("no_bn", width=2, dataset="synthetic")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "d.pt", {
        "config": cfg.to_dict(), "model": build_model(cfg.model).state_dict(), "status": "diverged", "epoch": 0,
        "step": 3, "metrics": [{"epoch": 1, "test_acc": 0.1, "test_loss": math.inf, "train_loss": math.nan}],
        "diverged": {"step": 4, "epoch": 0.4, "lr": 0.39, "loss": math.inf, "reason": "non-finite loss"}})
    s = strict_json(run("info", tmp_path / "d.pt", "--json").output)
    assert s["test_loss"] is None and s["train_loss"] is None and s["diverged"]["loss"] is None
    r = rows(run("info", tmp_path / "d.pt").output)
    assert r["status"] == "diverged at step 4 (epoch 0.40, lr 0.39): non-finite loss"
    assert r["test acc"] == "0.1000 (this model; test loss n/a)"
