"""Per-channel activation distributions by layer: how close each channel is to a constant.

The channel-mean share of a channel is m² / E[x²] (mean and second moment over examples and
spatial positions): 0 for a centred channel, 1 for a channel whose output ignores the input.
A layer's share is Σ_c m_c² / Σ_c E[x_c²]. Histograms and value samples per channel are the
data of the post's KDE plots.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..bnmode import bn_mode
from ..errors import BnlabError
from .gradients import Batches
from .moments import channel_view


def default_layers(model: nn.Module) -> list[str]:
    """Top-level modules that own parameters (prep, layer1, ..., classifier), in order."""
    return [n for n, m in model.named_children() if any(True for _ in m.parameters())]


def _capture(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules and n != "logits"]
    if missing:
        raise BnlabError(f"no module(s) {', '.join(missing)} in this model")
    got: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: got.__setitem__(n, o))
               for n in layers if n != "logits"]
    try:
        z = model(x)
    finally:
        for h in handles:
            h.remove()
    if "logits" in layers:
        got["logits"] = z
    return got


@torch.no_grad()
def activation_stats(model: nn.Module, batches: Batches, layers: Sequence[str], *, mode: str,
                     bins: int = 64, hist_channels: int = 16, samples: int = 2000, seed: int = 0) -> dict:
    """Per layer: channel-mean shares, and for the first `hist_channels` channels histograms
    (`bins` bins over the channel's own range) and up to `samples` values for KDE plots."""
    gen = torch.Generator().manual_seed(seed)
    acc: dict[str, dict[str, torch.Tensor]] = {}
    with bn_mode(model, mode):
        for x, _ in batches:  # pass 1: moments and ranges
            for n, out in _capture(model, layers, x).items():
                v = channel_view(out).double()
                a = acc.setdefault(n, {"s1": 0, "s2": 0, "count": 0, "lo": None, "hi": None, "samples": []})
                a["s1"] = a["s1"] + v.sum(dim=(0, 2))
                a["s2"] = a["s2"] + (v * v).sum(dim=(0, 2))
                a["count"] += v.shape[0] * v.shape[2]
                h = v[:, :hist_channels].transpose(0, 1).reshape(min(hist_channels, v.shape[1]), -1)
                lo, hi = h.min(dim=1).values, h.max(dim=1).values
                a["lo"] = lo if a["lo"] is None else torch.minimum(a["lo"], lo)
                a["hi"] = hi if a["hi"] is None else torch.maximum(a["hi"], hi)
                k = min(h.shape[1], -(-samples // len(batches)))
                idx = torch.randperm(h.shape[1], generator=gen)[:k].to(h.device)
                a["samples"].append(h[:, idx].float().cpu())
        for x, _ in batches:  # pass 2: histograms over the now known ranges
            for n, out in _capture(model, layers, x).items():
                a = acc[n]
                v = channel_view(out).double()
                h = v[:, :hist_channels].transpose(0, 1).reshape(a["lo"].shape[0], -1)
                width = (a["hi"] - a["lo"]).clamp_min(1e-12)
                idx = ((h - a["lo"][:, None]) / width[:, None] * bins).long().clamp(0, bins - 1)
                counts = torch.zeros(h.shape[0], bins, dtype=torch.float64, device=h.device)
                counts.scatter_add_(1, idx, torch.ones_like(h))
                a["hist"] = a.get("hist", 0) + counts
    result = {}
    for n in layers:
        a = acc[n]
        m = a["s1"] / a["count"]
        e2 = a["s2"] / a["count"]
        result[n] = {
            "channels": int(m.numel()),
            "layer_mean_share": float((m ** 2).sum() / e2.sum().clamp_min(1e-300)),
            "channel_mean_share": (m ** 2 / e2.clamp_min(1e-300)).cpu(),
            "mean": m.cpu(), "second_moment": e2.cpu(),
            "hist": a["hist"].cpu(),
            "hist_lo": a["lo"].cpu(), "hist_hi": a["hi"].cpu(),
            "samples": torch.cat(a["samples"], dim=1)[:, :samples],
        }
    return result
