"""Test-time augmentation of the bag-of-tricks recipe: the mean of the logits of an image and its mirror."""
from __future__ import annotations

import torch
from torch import nn


def tta_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(model(x) + model(flip(x))) / 2, x a batch of (N, C, H, W) images, flipped left-right."""
    return 0.5 * (model(x) + model(torch.flip(x, dims=(3,))))


def eval_logits(model: nn.Module, x: torch.Tensor, tta: bool) -> torch.Tensor:
    """The logits an evaluation reports: with `tta`, averaged over the image and its mirror."""
    return tta_logits(model, x) if tta else model(x)
