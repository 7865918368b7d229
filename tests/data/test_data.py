import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlab.config import DataSpec
from bnlab.data import cifar, load_data, train_batches
from bnlab.data.augment import augment_batch, draw_augmentation
from bnlab.data.dataset import balanced_indices, eval_set
from bnlab.errors import BnlabError


def test_official_folder_is_parsed(cifar_folder):
    data = load_data(DataSpec(data_dir=str(cifar_folder)))
    assert data.train_x.shape == (200, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (40, 3, 32, 32)
    import pickle
    with open(cifar_folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    # R, G, B planes of 32x32 row-major
    np.testing.assert_array_equal(data.train_x[0].numpy().reshape(-1), raw["data"][0])
    assert data.train_y[:40].tolist() == raw["labels"]


def test_parent_folder_and_tarball_are_found(cifar_folder, cifar_tarball):
    assert cifar.locate(cifar_folder.parent) == cifar_folder
    unpacked = cifar.locate(cifar_tarball)
    assert (unpacked / "test_batch").exists()
    assert load_data(DataSpec(data_dir=str(cifar_tarball))).train_x.shape[0] == 200


def test_tarball_md5_mismatch_is_refused(cifar_tarball, monkeypatch):
    monkeypatch.setattr("bnlab.data.cifar.TARBALL_MD5", "0" * 32)
    with pytest.raises(BnlabError, match="md5"):
        cifar.locate(cifar_tarball)


def test_download_goes_to_cache_with_checksum(cifar_tarball, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNLAB_DATA", str(cache))
    folder = cifar.locate(None, url=cifar_tarball.as_uri())
    assert folder == cache / "cifar-10-batches-py"
    assert (cache / "cifar-10-python.tar.gz").exists()
    assert cifar.locate(None, url="file:///nonexistent") == folder  # cached: no second download


def test_corrupt_download_leaves_nothing_behind(cifar_tarball, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNLAB_DATA", str(cache))
    monkeypatch.setattr("bnlab.data.cifar.TARBALL_MD5", "0" * 32)
    with pytest.raises(BnlabError, match="md5"):
        cifar.locate(None, url=cifar_tarball.as_uri())
    assert list(cache.iterdir()) == []


def test_offline_and_missing_data_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLAB_DATA", str(tmp_path / "cache"))
    with pytest.raises(BnlabError, match="downloading .* failed") as e:
        cifar.locate(None, url=(tmp_path / "nope.tar.gz").as_uri())
    assert "\n" not in str(e.value)
    with pytest.raises(BnlabError, match="no CIFAR-10 at --data-dir"):
        cifar.locate(tmp_path / "empty")


def test_corrupt_batch_file_is_reported(cifar_folder):
    (cifar_folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(BnlabError, match="data_batch_3"):
        load_data(DataSpec(data_dir=str(cifar_folder)))


def test_balanced_subset_is_reproducible_and_balanced():
    labels = np.arange(1000) % 10
    a = balanced_indices(labels, 100, seed=3)
    assert np.array_equal(a, balanced_indices(labels, 100, seed=3))
    assert not np.array_equal(a, balanced_indices(labels, 100, seed=4))
    assert np.bincount(labels[a]).tolist() == [10] * 10
    data = load_data(DataSpec(dataset="synthetic", subset=200, synthetic_train=500, synthetic_test=100))
    assert np.bincount(data.train_y.numpy()).tolist() == [20] * 10
    x, y = eval_set(data, 50, seed=0)
    assert len(y) == 50 and np.bincount(y.numpy()).tolist() == [5] * 10


def _reference(x, aug, cutout, mean, std):
    """Per-image reference: F.pad reflect, slice, flip, cutout."""
    out = []
    for i in range(len(x)):
        img = F.pad(x[i:i + 1].float(), (4, 4, 4, 4), mode="reflect")[0]
        dy, dx = int(aug.dy[i]), int(aug.dx[i])
        img = img[:, dy:dy + 32, dx:dx + 32]
        if aug.flip[i]:
            img = img.flip(2)
        img = (img - mean[0]) / std[0]
        if cutout:
            cy, cx = int(aug.cy[i]), int(aug.cx[i])
            img[:, cy:cy + cutout, cx:cx + cutout] = 0
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize("crop,flip,cutout", [(True, True, 8), (True, False, 0), (False, True, 8), (False, False, 0)])
def test_augmentation_geometry_matches_pad_crop_flip_cutout(crop, flip, cutout):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    aug = draw_augmentation(64, g, "cpu", crop=crop, flip=flip, cutout=cutout)
    mean, std = torch.full((1, 3, 1, 1), 120.0), torch.full((1, 3, 1, 1), 60.0)
    idx = torch.arange(64)
    got = augment_batch(x, aug, idx, cutout, mean, std)
    torch.testing.assert_close(got, _reference(x, aug, cutout, mean, std))
    if crop:
        assert aug.dy.min() >= 0 and aug.dy.max() <= 8 and len(aug.dy.unique()) > 5
    else:
        assert (aug.dy == 4).all()
    if cutout:  # box fully inside: exactly 8x8 zero pixels per channel
        assert aug.cy.max() <= 24
        zeros = (got == 0).all(1).sum(dim=(1, 2))
        assert (zeros >= 64).all()
    if flip:
        assert 10 < int(aug.flip.sum()) < 54


def test_epoch_batches_depend_only_on_seed_and_epoch():
    data = load_data(DataSpec(dataset="synthetic", synthetic_train=300, synthetic_test=50))
    spec = DataSpec(dataset="synthetic")
    a = [x for x, _ in train_batches(data, spec, 100, seed=1, epoch=2)]
    b = [x for x, _ in train_batches(data, spec, 100, seed=1, epoch=2)]
    c = [x for x, _ in train_batches(data, spec, 100, seed=1, epoch=3)]
    assert len(a) == 3 and all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_fixture_tarball_md5_is_what_we_patched(cifar_tarball):
    assert hashlib.md5(Path(cifar_tarball).read_bytes()).hexdigest() == cifar.TARBALL_MD5
