"""The fixed 3x3 patch-whitening first layer of the bag-of-tricks recipe (Page, "How to train your ResNet 8").

PCA whitening of 3x3x3 input patches written as a convolution: the 27 filters are the eigenvectors
v_i of the patches' covariance Σ, each divided by sqrt(λ_i + eps), so the 27 output channels of a
patch have covariance diag(λ_i / (λ_i + eps)) ≈ I. As in Page's code, Σ is the second moment
XᵀX/(n-1) of all valid (unpadded) 3x3 patches of the normalised images (their per-channel mean is
≈ 0 after normalisation), and the filters come in decreasing order of λ. The layer is fixed: its
filters are a buffer, not a parameter, so neither the optimizer nor the analyses (Hessian, output
statistics, dynamics) ever see them; they are stored in every checkpoint with the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BnlabError

PATCH = 3
WHITEN_EPS = 1e-2
WHITEN_IMAGES = 10_000  # training images whose patches give the covariance (Page: the first 10,000)
CHUNK = 256


def image_patches(x: torch.Tensor, size: int = PATCH) -> torch.Tensor:
    """All valid size x size patches of images x (N, C, H, W), as rows (N·(H-size+1)·(W-size+1), C·size·size).

    Row layout is (c, i, j), the layout of a conv filter's weight (C, size, size).
    """
    if x.dim() != 4 or x.shape[2] < size or x.shape[3] < size:
        raise BnlabError(f"patch whitening needs images (N, C, H, W) of at least {size}x{size}, got {tuple(x.shape)}")
    n, c = x.shape[:2]
    p = x.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, H', W', size, size)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size)


def patch_covariance(x: torch.Tensor, size: int = PATCH) -> torch.Tensor:
    """Second moment XᵀX/(n-1) of the patches of x, in float64 (the matrix Page's code decomposes)."""
    total, n = None, 0
    for i in range(0, x.shape[0], CHUNK):  # chunks of images: 10,000 images hold 9 M patches
        rows = image_patches(x[i:i + CHUNK].double(), size)
        part = rows.T @ rows
        total, n = (part if total is None else total + part), n + rows.shape[0]
    if total is None or n < 2:
        raise BnlabError("patch whitening needs at least two patches")
    return total / (n - 1)


def whitening_filters(x: torch.Tensor, eps: float = WHITEN_EPS, size: int = PATCH) -> torch.Tensor:
    """The (C·size², C, size, size) whitening filters of images x: v_i / sqrt(λ_i + eps), λ decreasing."""
    if not eps > 0:
        raise BnlabError(f"patch whitening needs eps > 0, got {eps}")
    c = x.shape[1]
    lam, vec = torch.linalg.eigh(patch_covariance(x, size))  # ascending
    lam, vec = lam.flip(0), vec.flip(1)
    filters = vec.T / torch.sqrt(lam.clamp_min(0) + eps)[:, None]
    return filters.reshape(-1, c, size, size).float()


class PatchWhitening(nn.Module):
    """A fixed conv (padding 1, no bias) whose filters are a buffer: set them with `set_filters`."""

    def __init__(self, in_channels: int = 3, size: int = PATCH) -> None:
        super().__init__()
        self.size = size
        k = in_channels * size * size
        # Identity patches until set from data: a freshly built net is well defined (and analyses load
        # the real filters from the checkpoint's state dict).
        self.register_buffer("weight", torch.eye(k).reshape(k, in_channels, size, size))

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def set_filters(self, filters: torch.Tensor) -> None:
        if filters.shape != self.weight.shape:
            raise BnlabError(f"whitening filters of shape {tuple(filters.shape)} do not fit {tuple(self.weight.shape)}")
        self.weight.copy_(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), padding=self.size // 2)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.out_channels}, {self.size}x{self.size}, fixed"


def whitening_layers(model: nn.Module) -> list[PatchWhitening]:
    return [m for m in model.modules() if isinstance(m, PatchWhitening)]


@torch.no_grad()
def fit_whitening(model: nn.Module, images: torch.Tensor, eps: float = WHITEN_EPS) -> int:
    """Set every PatchWhitening layer of `model` from normalised `images`; returns how many were set."""
    layers = whitening_layers(model)
    if layers:
        filters = whitening_filters(images.to(layers[0].weight.device), eps, layers[0].size)
        for m in layers:
            m.set_filters(filters)
    return len(layers)
