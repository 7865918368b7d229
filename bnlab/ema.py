"""Exponential moving average of a model's weights, the evaluation model of the bag-of-tricks recipe.

As in Page's code: every `every` optimizer steps (the first step included) each floating-point entry
of the state dict (parameters and BN running statistics; not ``num_batches_tracked``) is updated as
ema <- rho·ema + (1 - rho)·w with rho = momentum^every, so the average forgets at the per-step rate
`momentum` although it is only touched every `every` steps. The average starts from the weights at
initialisation.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import validate as check


class WeightEMA:
    """The averaged copy of `model` (same architecture, eval mode), updated by `update(step)`."""

    def __init__(self, model: nn.Module, momentum: float, every: int = 1) -> None:
        check.in_range("--ema", momentum, 0.0, 1.0, high_open=True)
        check.integer("--ema-every", every, 1)
        self.momentum, self.every = float(momentum), int(every)
        self.rho = self.momentum ** self.every
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Average in `model`'s current state if optimizer step `step` (1-based) is an update step."""
        if (step - 1) % self.every:
            return False
        live = model.state_dict()
        avg = [v for v in self.model.state_dict().values() if v.is_floating_point()]
        new = [live[k] for k, v in self.model.state_dict().items() if v.is_floating_point()]
        torch._foreach_mul_(avg, self.rho)
        torch._foreach_add_(avg, [w.to(a.dtype) for w, a in zip(new, avg)], alpha=1.0 - self.rho)
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
