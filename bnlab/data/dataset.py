"""The dataset held on the device, and the batch streams that training and analyses read."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataSpec
from ..errors import BnlabError
from . import cifar
from .augment import augment_batch, draw_augmentation
from .synthetic import make_synthetic

# Page's normalisation, 0-255 scale (docs/background.md, "DavidNet").
CIFAR_MEAN = (125.31, 122.95, 113.87)
CIFAR_STD = (62.99, 62.09, 66.70)


@dataclass
class Data:
    train_x: torch.Tensor  # uint8 (N,3,32,32) on the device
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # where the images came from (for the record)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalisation mean and std, (1,3,1,1) float32 on the device."""
        mean = torch.tensor(CIFAR_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD, device=self.device).view(1, 3, 1, 1)
        return mean, std


def balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices, n/10 per class, drawn reproducibly from `seed`, in a seeded random order."""
    rng = np.random.default_rng(seed)
    per = n // 10
    picks = []
    for c in range(10):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per:
            raise BnlabError(f"class-balanced subset of {n} needs {per} examples of class {c}, "
                             f"the data has {len(pool)}")
        picks.append(rng.choice(pool, per, replace=False))
    return rng.permutation(np.concatenate(picks))


def load_data(spec: DataSpec, device: torch.device | str = "cpu", seed: int = 0) -> Data:
    """Load the dataset of `spec` onto `device`; subsets are drawn from `seed`."""
    spec.validate()
    if spec.dataset == "synthetic":
        trx, try_ = make_synthetic(spec.synthetic_train, seed=10_000)
        tex, tey = make_synthetic(spec.synthetic_test, seed=20_000)
        source = f"synthetic({spec.synthetic_train}/{spec.synthetic_test})"
    else:
        folder = cifar.locate(spec.data_dir)
        trx, try_, tex, tey = cifar.read_folder(folder)
        source = str(folder)
    if spec.subset is not None:
        idx = balanced_indices(try_, spec.subset, seed)
        trx, try_ = trx[idx], try_[idx]
    if spec.test_subset is not None:
        idx = balanced_indices(tey, spec.test_subset, seed + 1)
        tex, tey = tex[idx], tey[idx]

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return Data(put(trx), put(try_), put(tex), put(tey), source)



def data_inputs(spec: DataSpec) -> list[tuple[str, Path]]:
    """The files and folders `load_data(spec)` reads, as (what, path) inputs for an output check."""
    if spec.dataset == "synthetic":
        return []
    return [("data folder", p) for p in cifar.input_paths(spec.data_dir)]

def normalise(x: torch.Tensor, data: Data) -> torch.Tensor:
    mean, std = data.stats()
    return (x.float() - mean) / std


def train_batches(data: Data, spec: DataSpec, batch_size: int, seed: int, epoch: int,
                  drop_last: bool = True, shard: tuple[int, int] = (0, 1)
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented, normalised training batches.

    Order and augmentation depend only on (seed, epoch), so a resumed run sees exactly the
    batches an uninterrupted run would. shard=(r, W): only rows [r·b/W, (r+1)·b/W) of each global
    batch b (one rank's part under torch.distributed), the same images whatever W.
    """
    n = data.train_x.shape[0]
    if drop_last and n < batch_size:
        raise BnlabError(f"batch size {batch_size} is larger than the training set ({n} images)")
    g = torch.Generator(device=data.device)
    g.manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g, device=data.device)
    aug = draw_augmentation(n, g, data.device, crop=spec.crop, flip=spec.flip, cutout=spec.cutout)
    mean, std = data.stats()
    stop = n - n % batch_size if drop_last else n
    r, world = shard
    for i in range(0, stop, batch_size):
        idx = perm[i:i + batch_size]
        if world > 1:
            idx = idx[len(idx) * r // world:len(idx) * (r + 1) // world]
        yield augment_batch(data.train_x[idx], aug, idx, spec.cutout, mean, std), data.train_y[idx]


def eval_set(data: Data, num_samples: int | None, seed: int = 0, split: str = "train"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed class-balanced set of `num_samples` uint8 images and labels (None: the whole split)."""
    x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
    if num_samples is None or num_samples == len(y):
        return x, y
    if num_samples > len(y):
        raise BnlabError(f"--num-samples {num_samples} is larger than the {split} set ({len(y)} images)")
    idx = torch.from_numpy(balanced_indices(y.cpu().numpy(), num_samples, seed)).to(x.device)
    return x[idx], y[idx]


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, data: Data
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, unaugmented, normalised batches of (x, y) in order; the last one may be smaller."""
    mean, std = data.stats()
    for i in range(0, len(y), batch_size):
        yield (x[i:i + batch_size].float() - mean) / std, y[i:i + batch_size]
