"""CIFAR-10 (official release, downloaded with checksum) and a synthetic 10-class task, held
as uint8 tensors on the device, with bulk per-epoch augmentation on the device."""
from .augment import EpochAugmentation, augment_batch, draw_augmentation
from .dataset import (
    CIFAR_MEAN,
    CIFAR_STD,
    Data,
    balanced_indices,
    eval_batches,
    eval_set,
    load_data,
    normalise,
    train_batches,
)

__all__ = [
    "CIFAR_MEAN", "CIFAR_STD", "Data", "EpochAugmentation", "augment_batch", "balanced_indices",
    "draw_augmentation", "eval_batches", "eval_set", "load_data", "normalise", "train_batches",
]
