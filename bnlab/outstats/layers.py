"""Per-layer split of parameter-space vectors (the post's table of squared gradient norms)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

# Sub-modules of a ConvBlock: their parameters belong to the block (prep, layer1, ...).
_BLOCK_PARTS = ("conv", "norm", "act", "pool")


def layer_of(param_name: str) -> str:
    """The block a parameter belongs to: 'layer1.conv.weight' -> 'layer1',
    'layer1_res.a.norm.bias' -> 'layer1_res.a', 'classifier.weight' -> 'classifier'."""
    parts = param_name.split(".")[:-1]
    if len(parts) > 1 and parts[-1] in _BLOCK_PARTS:
        parts = parts[:-1]
    return ".".join(parts) if parts else param_name


def layer_slices(param_names: Sequence[str], param_shapes: Sequence[tuple[int, ...]]) -> dict[str, list[slice]]:
    """Layer name -> slices of the flat parameter vector, layers in model order."""
    out: dict[str, list[slice]] = {}
    start = 0
    for name, shape in zip(param_names, param_shapes):
        n = 1
        for s in shape:
            n *= s
        out.setdefault(layer_of(name), []).append(slice(start, start + n))
        start += n
    return out


def per_layer_sq_norms(vectors: torch.Tensor, param_names: Sequence[str],
                       param_shapes: Sequence[tuple[int, ...]]) -> tuple[list[str], torch.Tensor]:
    """(layers, (K, n_layers) squared norms) of each row of `vectors` (K, P) restricted to each layer."""
    slices = layer_slices(param_names, param_shapes)
    cols = [sum((vectors[:, s].double() ** 2).sum(dim=1) for s in ss) for ss in slices.values()]
    return list(slices), torch.stack(cols, dim=1)
