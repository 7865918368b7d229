"""Divergence leaves every saved tensor finite: weights, optimizer state and BN buffers."""
from __future__ import annotations

from pathlib import Path

import torch

from bnlab.checkpoint import read_checkpoint
from bnlab.train import train
from conftest import tiny_config


def _all_finite(obj: object) -> bool:
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


def test_huge_lr_with_bn_diverges_with_finite_buffers(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(tiny_config(lr=1e6, epochs=2), out, quiet=True)
    assert result.status == "diverged"
    payload = read_checkpoint(out / "final.pt")
    assert payload["status"] == "diverged" and payload["diverged"]["reason"].startswith("non-finite")
    assert _all_finite(payload["model"]) and _all_finite(payload["optimizer"])
    bufs = {k: v for k, v in payload["model"].items() if "running" in k}
    assert bufs and _all_finite(bufs)


def test_no_weight_decay_huge_lr_is_flagged(tmp_path: Path) -> None:
    """lr 1e12 without weight decay used to finish at chance with inf buffers and no flag."""
    out = tmp_path / "run"
    result = train(tiny_config(lr=1e12, weight_decay=0.0, epochs=1), out, quiet=True)
    payload = read_checkpoint(out / "final.pt")
    assert _all_finite(payload["model"])
    assert result.status == "diverged" or all(torch.isfinite(v).all() for v in payload["model"].values()
                                                if v.is_floating_point())
