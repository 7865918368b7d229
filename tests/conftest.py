"""Shared fixtures: tiny CIFAR-10 files in the official format, small synthetic configs."""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.config import make_config

# Device paths (tensors made on the operator's or the model's device) are only observable with a
# second device: these tests run on a GPU machine and are skipped elsewhere (tests/MUTATION.md).
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Under pytest-xdist the cores are shared by the workers: torch's default (one intra-op thread per
# core in every worker) would oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-net tests, restored afterwards. Tiny tensors gain
    nothing from threads, and on a shared, loaded machine spinning OpenMP workers made single
    backward passes 100x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_cifar_folder(root: Path, per_batch: int = 40, seed: int = 0) -> Path:
    """Write data_batch_1..5, test_batch and batches.meta like cifar-10-python.tar.gz unpacks to."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]
        d = {"batch_label": f"{name} of 6", "labels": labels,
             "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
             "filenames": [f"img_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, f, protocol=2)
    return folder


@pytest.fixture
def cifar_folder(tmp_path: Path) -> Path:
    return write_cifar_folder(tmp_path / "data")


@pytest.fixture
def cifar_tarball(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cifar-10-python.tar.gz of the tiny folder; the expected md5 is patched to its own."""
    folder = write_cifar_folder(tmp_path / "src")
    tarball = tmp_path / "dl" / "cifar-10-python.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tf:
        tf.add(folder, arcname="cifar-10-batches-py")
    monkeypatch.setattr("bnlab.data.cifar.TARBALL_MD5", hashlib.md5(tarball.read_bytes()).hexdigest())
    return tarball


def tiny_config(variant: str = "bn", **options: object):
    """A run small enough for a unit test: width 8, 1024 synthetic images, batch 128."""
    defaults = dict(width=8, dataset="synthetic", synthetic_train=1024, synthetic_test=256, batch_size=128,
                    epochs=2, lr=0.2)
    if variant == "ghost_bn":
        defaults["ghost_splits"] = 4
    defaults.update(options)
    return make_config(variant, **defaults)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run directory of a tiny BN net (shared by a test module's tests)."""
    from bnlab.train import train

    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(epochs=1, synthetic_train=512, batch_size=128), out, quiet=True)
    return out


class HeldOn:
    """Mixin for a test operator with a dense `self.A` built from a spectrum: held on `device`, its products
    insist on vectors already there (a solver's basis lives on the operator's device: no host round trip per
    product). Use as `class OnDevice(HeldOn, SomeOperator)`."""

    def __init__(self, spectrum, device: str) -> None:
        super().__init__(spectrum)
        self.A = self.A.to(device)
        self._device = self.A.device  # with its index: torch.device("cuda") != torch.device("cuda:0")

    @property
    def device(self) -> torch.device:
        return self._device

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        assert V.device == self._device, f"a product was asked on {V.device}"
        return super().matmat(V)
