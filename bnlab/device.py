"""Device selection with clear errors."""
from __future__ import annotations

import torch

from .errors import BnlabError


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" -> cuda if available else cpu; otherwise the named device, checked to exist."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise BnlabError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BnlabError(f"device {name} asked for, but this torch sees no CUDA GPU; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise BnlabError(f"device {name} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    if dev.type not in ("cpu", "cuda"):
        raise BnlabError(f"device type {dev.type} is not supported; use cpu or cuda")
    return dev
