"""CIFAR batches are unpickled with an allow-list: a crafted batch file cannot run code, neither through
`bnlab train --data-dir` nor through a checkpoint that records that folder."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.data.cifar import read_folder
from bnlab.errors import BnlabError
from conftest import write_cifar_folder


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _poison(folder: Path, marker: Path) -> None:
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": np.zeros((40, 3072), np.uint8), "labels": [0] * 40, "x": Evil(marker)}, f, protocol=2)


def test_official_layout_still_loads(tmp_path: Path) -> None:
    x, y, tx, ty = read_folder(write_cifar_folder(tmp_path / "d"))
    assert x.shape == (200, 3, 32, 32) and x.dtype == np.uint8 and y.max() <= 9 and tx.shape == (40, 3, 32, 32)


def test_malicious_batch_is_refused_before_it_runs(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path / "d")
    marker = tmp_path / "pwned"
    _poison(folder, marker)
    with pytest.raises(BnlabError, match="asks to load code"):
        read_folder(folder)
    assert not marker.exists()
    r = CliRunner().invoke(main, ["train", "--data-dir", str(folder), "--width", "8", "--epochs", "1", "-q",
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "asks to load code" in r.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_checkpoint_pointing_at_a_poisoned_folder(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path / "d")
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data-dir", str(folder), "--width", "8", "--epochs", "1",
                                  "--batch-size", "50", "-q", "--out", str(run)])
    assert r.exit_code == 0, r.output
    marker = tmp_path / "pwned"
    _poison(folder, marker)
    r = CliRunner().invoke(main, ["hessian", str(run / "final.pt"), "--num-samples", "20", "--batch-size", "10",
                                  "--top-k", "1", "-q", "--out", str(tmp_path / "h")])
    assert r.exit_code == 2 and "asks to load code" in r.stderr
    assert not marker.exists()
