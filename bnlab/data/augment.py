"""Training augmentation, vectorised on the device: reflect-pad 4 + random 32x32 crop, random
horizontal flip, Cutout (box fully inside the image, zeros after normalisation).

All random choices of an epoch are drawn at once (`draw_augmentation`) from a seeded generator,
as in Page's code; `augment_batch` then applies them to a batch with one gather, no padding copy
and no per-sample Python loop: crop, reflection and flip are folded into row/column indices.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PAD = 4
SIZE = 32


@dataclass
class EpochAugmentation:
    """Per-example random choices for one epoch (tensors of length N, on the data's device)."""

    dy: torch.Tensor  # crop offset in the padded image, 0..2*PAD (int64)
    dx: torch.Tensor
    flip: torch.Tensor  # bool
    cy: torch.Tensor  # cutout top-left, 0..SIZE-cutout (int64)
    cx: torch.Tensor


def draw_augmentation(n: int, generator: torch.Generator, device: torch.device | str, *,
                      crop: bool = True, flip: bool = True, cutout: int = 8) -> EpochAugmentation:
    def ints(high: int) -> torch.Tensor:
        return torch.randint(0, high + 1, (n,), generator=generator, device=device)

    zeros = torch.zeros(n, dtype=torch.long, device=device)
    dy, dx = (ints(2 * PAD), ints(2 * PAD)) if crop else (zeros + PAD, zeros + PAD)
    fl = (torch.rand(n, generator=generator, device=device) < 0.5) if flip else zeros.bool()
    cy, cx = (ints(SIZE - cutout), ints(SIZE - cutout)) if cutout else (zeros, zeros)
    return EpochAugmentation(dy, dx, fl, cy, cx)


def _reflect(i: torch.Tensor) -> torch.Tensor:
    """Index into a SIZE-long axis of position i in its PAD-reflect-padded version (no edge repeat)."""
    i = i - PAD
    i = torch.where(i < 0, -i, i)
    return torch.where(i > SIZE - 1, 2 * (SIZE - 1) - i, i)


def augment_batch(x: torch.Tensor, aug: EpochAugmentation, idx: torch.Tensor, cutout: int,
                  mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Augment and normalise uint8 images `x` (B,3,32,32) whose dataset indices are `idx`.

    Returns float32 (B,3,32,32); the Cutout box is zero after normalisation.
    """
    b = x.shape[0]
    ar = torch.arange(SIZE, device=x.device)
    rows = _reflect(aug.dy[idx, None] + ar)  # (B, 32)
    cols = _reflect(aug.dx[idx, None] + ar)
    cols = torch.where(aug.flip[idx, None], cols.flip(1), cols)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = x[bi, :, rows[:, :, None], cols[:, None, :]]  # (B, 32, 32, 3)
    out = out.permute(0, 3, 1, 2).float().sub_(mean).div_(std)
    if cutout:
        in_y = (ar[None] >= aug.cy[idx, None]) & (ar[None] < aug.cy[idx, None] + cutout)
        in_x = (ar[None] >= aug.cx[idx, None]) & (ar[None] < aug.cx[idx, None] + cutout)
        box = in_y[:, :, None] & in_x[:, None, :]
        out = out.masked_fill_(box[:, None], 0.0)
    return out.contiguous()
