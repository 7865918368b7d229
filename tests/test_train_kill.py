"""Nothing is lost when a run dies: a kill at any point of an epoch's writes is resumed to exactly
the files an uninterrupted run writes; temp files of interrupted writes are swept on resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bnlab.train as trainer
from bnlab.checkpoint import read_checkpoint
from bnlab.train import train
from conftest import tiny_config


class Killed(BaseException):
    """Stands for SIGKILL: raised from inside a write, caught by nothing in bnlab."""


def _kill_during(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = trainer.save_checkpoint

    def save(path, payload):  # noqa: ANN001, ANN202
        if Path(path).name == name:
            Path(path).with_name(f".{name}.12345.tmp").write_bytes(b"half a file")
            raise Killed()
        return real(path, payload)

    monkeypatch.setattr(trainer, "save_checkpoint", save)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny_config(epochs=2, save_every=1), out, quiet=True)
    return out


@pytest.mark.parametrize("victim", ["final.pt", "ckpt_epoch_002.pt", "ckpt_epoch_001.pt", "last.pt"])
def test_kill_during_a_write_then_resume(tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch,
                                         victim: str) -> None:
    out = tmp_path / "run"
    _kill_during(monkeypatch, victim)
    with pytest.raises(Killed):
        train(tiny_config(epochs=2, save_every=1), out, quiet=True)
    monkeypatch.undo()
    assert any(out.glob(".*.tmp"))
    status = json.loads((out / "status.json").read_text())["status"]
    assert status == "running"  # not "finished": the promised files are not all there
    result = train(None, out, resume=True, quiet=True)
    assert result.status == "finished"
    assert not list(out.glob(".*.tmp"))  # swept
    for name in ("final.pt", "last.pt", "ckpt_epoch_001.pt", "ckpt_epoch_002.pt"):
        ref, got = _weights(reference / name), _weights(out / name)
        assert all(torch.equal(ref[k], got[k]) for k in ref), name
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    assert (out / "metrics.csv").read_text() .count("\n") == (reference / "metrics.csv").read_text().count("\n")


def test_finished_run_missing_status_is_completed(tmp_path: Path) -> None:
    """Killed after last.pt (final) but before status.json: resume completes status.json, exit 0."""
    out = tmp_path / "run"
    train(tiny_config(epochs=1), out, quiet=True)
    (out / "status.json").write_text(json.dumps({"status": "running", "epoch": 0, "step": 0}))
    (out / "final.pt").unlink()
    result = train(None, out, resume=True, quiet=True)
    assert result.status == "finished"
    assert (out / "final.pt").is_file()
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
