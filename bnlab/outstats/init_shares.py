"""F5's measurement beside `bnlab collapse`: the channel-mean share of DavidNet's layers at initialisation,
with and without BN (reported side by side; the finding sets no threshold on it)."""
from __future__ import annotations

import torch

from ..bnmode import resolve_bn_mode
from ..context import EvalSpec, batch_sizes
from ..data import Data, eval_batches, eval_set
from ..models import ModelSpec, build_model
from .activations import activation_stats, default_layers


def davidnet_init_shares(width: int, data: Data, num_samples: int, batch_size: int, *, seed: int = 0
                         ) -> dict[str, dict[str, float]]:
    """Per-layer channel-mean share of DavidNet at init, with BN (batch statistics) and without BN, on a fixed
    class-balanced set of training images (the layers `bnlab outstats` draws, plus the logits)."""
    EvalSpec(num_samples=num_samples, batch_size=batch_size).validate()
    x, y = eval_set(data, num_samples, seed=seed)
    sizes = batch_sizes(len(y), batch_size)
    if min(sizes) < 2:
        raise ValueError("batches of at least 2 images are needed for batch statistics")
    batches = [(xb, yb) for xb, yb in eval_batches(x, y, batch_size, data)]
    out = {}
    for name, norm in (("bn", "bn"), ("no_bn", "none")):
        torch.manual_seed(seed)
        model = build_model(ModelSpec(model="davidnet", width=width, norm=norm)).to(data.device)
        layers = [*default_layers(model), "logits"]
        stats = activation_stats(model, batches, layers, mode=resolve_bn_mode(model, None), seed=seed)
        out[name] = {k: float(stats[k]["layer_mean_share"]) for k in layers}
    return out
