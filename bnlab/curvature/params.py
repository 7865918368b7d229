"""Which parameters a Hessian is taken over, and flat <-> parameter-shaped vectors.

A selection is a list of glob patterns over parameter names (``fnmatch``); a pattern starting
with ``!`` excludes. Examples: ``["layer3*"]`` (one block), ``["*", "!*.norm.*"]`` (everything but
the BN affine parameters). Only the selected parameters vary; the others are held fixed.
"""
from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn

from ..errors import BnlabError


def parse_param_spec(spec: str | Sequence[str] | None) -> list[str] | None:
    """"a*,!b*" -> ["a*", "!b*"]; None/"" -> None (all parameters)."""
    if spec is None:
        return None
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    items = [s for s in items if s]
    return items or None


def select_parameters(model: nn.Module, patterns: Sequence[str] | None = None
                      ) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs selected by `patterns`, in the model's parameter order.

    With only exclusions (every pattern starts with ``!``) the selection starts from all parameters.
    Raises BnlabError if nothing is selected, naming what exists.
    """
    named = list(model.named_parameters())
    if not patterns:
        return named
    includes = [p for p in patterns if not p.startswith("!")]
    excludes = [p[1:] for p in patterns if p.startswith("!")]
    chosen = [(n, p) for n, p in named
              if (not includes or any(fnmatchcase(n, g) for g in includes))
              and not any(fnmatchcase(n, g) for g in excludes)]
    if not chosen:
        some = ", ".join(n for n, _ in named[:6])
        raise BnlabError(f"--params {','.join(patterns)} selects no parameter (names look like: {some}, ...)")
    return chosen


class FlatLayout:
    """Offsets of each selected parameter in the flat vector; flatten/unflatten both ways."""

    def __init__(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dim = sum(self.numels)

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Parameter-shaped views of a flat (dim,) or batched (m, dim) vector."""
        lead = flat.shape[:-1]
        return [c.reshape(*lead, *s) for c, s in zip(torch.split(flat, self.numels, dim=-1), self.shapes)]

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.split(flat)))
