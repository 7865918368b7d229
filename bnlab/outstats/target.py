"""Which output the statistics are taken of: the logits (default) or any named module.

``"logits"`` means the model output centred over classes (z - mean_c z). Softmax, and so the loss
and the predictions, ignore a shift common to all logits; centring removes that irrelevant
direction, which is why the 10 class-mean gradients span at most 9 dimensions (docs/background.md,
"The batch-norm post").
``"logits_raw"`` is the output as is. Any other name is a module of ``model.named_modules()``
whose output is captured with a forward hook.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import BnlabError

LOGITS = ("logits", "logits_raw")


@dataclass(frozen=True)
class Target:
    module: str = "logits"
    channels: tuple[int, ...] | None = None  # None: every channel

    def check(self, model: nn.Module) -> None:
        if self.module not in LOGITS and (not self.module or self.module not in dict(model.named_modules())):
            names = ", ".join(n for n, _ in model.named_children())
            raise BnlabError(f"no module {self.module!r} in this model; use logits or a module name "
                             f"such as {names} (dotted names reach inner modules)")

    @property
    def is_logits(self) -> bool:
        return self.module in LOGITS


def select_channels(out: torch.Tensor, channels: Sequence[int] | None, name: str) -> torch.Tensor:
    if channels is None:
        return out
    c = out.shape[1] if out.dim() > 1 else 1
    bad = [i for i in channels if not 0 <= i < c]
    if bad:
        raise BnlabError(f"channel(s) {bad} out of range for {name}, which has {c} channels")
    return out[:, list(channels)]


def forward_with_target(model: nn.Module, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """(model output, target output with the chosen channels) from one forward pass."""
    if target.is_logits:
        z = model(x)
        out = z - z.mean(dim=1, keepdim=True) if target.module == "logits" else z
        return z, select_channels(out, target.channels, target.module)
    captured: list[torch.Tensor] = []
    module = dict(model.named_modules())[target.module]
    handle = module.register_forward_hook(lambda _m, _i, o: captured.append(o))
    try:
        z = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise BnlabError(f"module {target.module!r} ran {len(captured)} times in one forward pass; "
                         "pick a module that runs once")
    return z, select_channels(captured[0], target.channels, target.module)
