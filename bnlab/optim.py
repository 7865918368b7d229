"""The optimizer's parameter groups: weights, and biases with their own lr and weight decay.

Page's bag of tricks trains every bias (with frozen BN scales these are BN's β, the only biases
DavidNet has) with lr x k and weight decay / k, k = 64 (`TrainConfig.bias_scale`). With k = 1 the
two groups are one. Each group carries ``lr_scale``, the multiple of the schedule's lr it takes.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .config import TrainConfig


def is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """SGD parameter groups of the trainable parameters of `model` (empty groups left out)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.bias_scale == 1.0:
        return [{"params": [p for _, p in named], "lr_scale": 1.0, "weight_decay": config.weight_decay}]
    k = config.bias_scale
    groups = [{"params": [p for n, p in named if not is_bias(n)], "lr_scale": 1.0,
               "weight_decay": config.weight_decay},
              {"params": [p for n, p in named if is_bias(n)], "lr_scale": k, "weight_decay": config.weight_decay / k}]
    return [g for g in groups if g["params"]]
