"""Deep fully connected ReLU nets at initialisation: channels collapse to near-constants with
depth (the post's KDE plots), and centring fixes it.

With He init (weights N(0, 2/fan_in), no bias) and inputs whose pairwise correlations are ~0,
the correlation c_l between the pre-activations of two inputs at layer l follows the ReLU
arc-cosine kernel recursion c_{l+1} = (√(1-c²) + (π - arccos c) c) / π, c_1 = 0: 0, 0.32, 0.68,
0.85, 0.94, 0.99 at layers 1, 2, 5, 10, 20, 50. A channel's mean over inputs squared, over its
second moment, averages the kernel over input pairs, so the layer's channel-mean share is
c_l + (1 - c_l)/n for n inputs: at depth every unit outputs nearly the same value for all inputs.
Centring each pre-activation over the inputs (BN's mean subtraction) keeps correlations near 0,
so the share of the next layer's (uncentred) pre-activations stays at the first step's 1/π.
"""
from __future__ import annotations

import math

import torch

from ..errors import BnlabError


def arccos_recursion(depth: int) -> list[float]:
    """c_1..c_depth of the ReLU arc-cosine kernel recursion from c_1 = 0."""
    cs = [0.0]
    for _ in range(depth - 1):
        c = min(cs[-1], 1.0)
        cs.append((math.sqrt(max(0.0, 1 - c * c)) + (math.pi - math.acos(c)) * c) / math.pi)
    return cs


@torch.no_grad()
def fc_collapse(depth: int = 50, width: int = 2048, n_inputs: int = 1000, *, centre: bool = False,
                seed: int = 0, hist_layers: tuple[int, ...] = (), hist_channels: int = 8,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Channel-mean share of the pre-activations at layers 1..depth of a He-initialised ReLU net.

    Inputs: `n_inputs` isotropic Gaussian vectors of dimension `width` (pairwise correlation ~0).
    With `centre`, each pre-activation is centred over the inputs before the ReLU (the share is
    measured before centring). `hist_layers` (1-based) also return per-channel values.
    """
    if depth < 1 or width < 1 or n_inputs < 2:
        raise BnlabError("the FC net needs depth >= 1, width >= 1 and at least 2 inputs")
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n_inputs, width, generator=g, device=device, dtype=dtype)
    shares, norm_spread, values = [], [], {}
    for layer in range(1, depth + 1):
        w = torch.randn(width, width, generator=g, device=device, dtype=dtype) * math.sqrt(2.0 / width)
        h = x @ w.T
        m = h.double().mean(dim=0)
        shares.append(float((m ** 2).sum() / (h.double() ** 2).mean(dim=0).sum()))
        # Without variance normalisation each input's norm random-walks multiplicatively with depth; once a few
        # inputs dominate, a channel's values over the inputs are heavy-tailed and its mean share falls.
        norms = h.double().norm(dim=1)
        norm_spread.append(float(norms.max() / norms.median()))
        if layer in hist_layers:
            values[layer] = h[:, :hist_channels].T.float().cpu()
        if centre:
            h = h - h.mean(dim=0, keepdim=True)
        x = torch.relu(h)
    theory = arccos_recursion(depth)
    return {"depth": depth, "width": width, "n_inputs": n_inputs, "centre": centre, "shares": shares,
            "norm_spread": norm_spread, "theory": theory,
            # c_l + (1 - c_l)/n: distinct input pairs at correlation c_l, plus the diagonal
            "theory_share": [c + (1 - c) / n_inputs for c in theory], "values": values}
