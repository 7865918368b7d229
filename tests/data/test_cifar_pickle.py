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


def _batch(folder: Path, data: object, labels: object) -> None:
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"batch_label": "edited", "data": data, "labels": labels, "filenames": []}, f, protocol=2)


_PIXELS = np.zeros((40, 3072), np.uint8)
_LABELS = [i % 10 for i in range(40)]
# Nothing is cast: casting would read floats as pixels, wrap 300 to 44 and truncate label 3.7 to 3.
BAD_BATCHES = {
    "float data": (_PIXELS.astype(np.float32), _LABELS, "dtype float32"),
    "pixel 300": (np.full((40, 3072), 300, np.int64), _LABELS, "to 300, expected uint8"),
    "negative pixel": (np.full((40, 3072), -1, np.int16), _LABELS, "dtype int16 with values from -1"),
    "label 3.7": (_PIXELS, [3.7] * 40, "labels of dtype float64"),
    "labels of shape (N, 1)": (_PIXELS, np.array(_LABELS).reshape(40, 1), "labels of shape (40, 1)"),
    "label 10": (_PIXELS, [10] * 40, "labels from 10 to 10"),
    "empty batch": (np.zeros((0, 3072), np.uint8), [], "empty batch"),
    "images of 3000 values": (np.zeros((40, 3000), np.uint8), _LABELS, "shape (40, 3000)"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_malformed_batches_are_named(tmp_path: Path, case: str) -> None:
    folder = write_cifar_folder(tmp_path / "d")
    data, labels, message = BAD_BATCHES[case]
    _batch(folder, data, labels)
    with pytest.raises(BnlabError, match="not a CIFAR-10 batch") as e:
        read_folder(folder)
    assert message in str(e.value) and "asks to load code" not in str(e.value)


def test_int64_pixels_within_range_still_load(tmp_path: Path) -> None:
    """A faithful re-encoding with wider integers (values 0..255) is the same images."""
    folder = write_cifar_folder(tmp_path / "d")
    pixels = np.arange(40 * 3072, dtype=np.int64).reshape(40, 3072) % 256
    _batch(folder, pixels, np.array(_LABELS, dtype=np.int32))
    x, y, _, _ = read_folder(folder)
    assert x.dtype == np.uint8 and np.array_equal(x[:40].reshape(40, -1), pixels) and y[:40].tolist() == _LABELS


def test_malformed_batch_through_the_cli_is_one_line(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path / "d")
    _batch(folder, np.full((40, 3072), 300, np.int64), _LABELS)
    r = CliRunner().invoke(main, ["train", "--data-dir", str(folder), "--width", "8", "--epochs", "1", "-q",
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "to 300, expected uint8" in r.stderr
    assert not (tmp_path / "run").exists()
