"""The "frozen BN" model of the batch-norm post: BN replaced by the fixed affine map it computes
in eval mode, after its running statistics were refreshed over one pass of the training data."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import validate as check
from .checkpoint import Checkpoint, file_hash, load_checkpoint, save_checkpoint
from .data import Data, eval_batches, load_data
from .data.dataset import data_inputs
from .errors import BnlabError
from .models import build_model
from .norms import batch_norm_layers
from .rundir import check_apart, output_path
from .train import evaluate  # the trainer's test-set evaluation, so numbers are comparable


@torch.no_grad()
def refresh_bn_statistics(model: nn.Module, data: Data, batch_size: int = 512) -> int:
    """Recompute every BN layer's running statistics as the exact average over one pass of the
    unaugmented training set (cumulative average: momentum=None). Returns the number of batches.

    Only the BN buffers change; the model's training flag and momenta are restored.
    """
    layers = [m for _, m in batch_norm_layers(model)]
    if not layers:
        raise BnlabError("the model has no batch-norm layers to refresh")
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = len(data.train_y) - len(data.train_y) % batch_size or len(data.train_y)
    batches = 0
    try:
        for x, _ in eval_batches(data.train_x[:n], data.train_y[:n], batch_size, data):
            model(x)
            batches += 1
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.train(was_training)
    return batches


def frozen_copy(model: nn.Module, ckpt: Checkpoint) -> tuple[nn.Module, Any]:
    """A new model with norm 'frozen' carrying `model`'s weights and BN running statistics."""
    spec = dataclasses.replace(ckpt.config.model, norm="frozen",
                               affine=any(m.affine for _, m in batch_norm_layers(model)))
    frozen = build_model(spec).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    frozen.load_state_dict(state)
    return frozen.eval(), ckpt.config.replace(variant="frozen_bn", model=spec)


def freeze_checkpoint(path: str | Path, out: str | Path, *, data_dir: str | None = None,
                      device: str | torch.device = "cpu", batch_size: int | None = None,
                      force: bool = False, weights: str = "raw") -> dict[str, Any]:
    """Write the frozen-BN version of checkpoint `path` to `out`; returns its summary.

    weights: freeze the trained weights (raw) or their moving average (ema, runs trained with --ema).
    """
    out = output_path(out)
    if out.is_dir():
        raise BnlabError(f"{out} is a directory; -o names the checkpoint file to write")
    if out.exists() and not force:
        raise BnlabError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise BnlabError(f"directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise BnlabError(f"directory {out.parent} is not writable")
    if batch_size is not None:
        check.integer("--batch-size", batch_size, 2)
    ckpt = load_checkpoint(path, device=device, weights=weights)
    if not ckpt.has_batch_stats:
        raise BnlabError(f"{path} has no batch-norm layers (variant {ckpt.config.variant}); nothing to freeze")
    spec = ckpt.config.data if data_dir is None else dataclasses.replace(ckpt.config.data, data_dir=data_dir)
    check_apart(out, [("checkpoint", path), *data_inputs(spec)])  # -o over its own checkpoint or data: refused
    data = load_data(spec, device, seed=ckpt.config.seed)
    bs = batch_size or ckpt.config.batch_size
    batches = refresh_bn_statistics(ckpt.model, data, bs)
    bs = min(bs, len(data.train_y))  # a batch larger than the training set is one batch of all of it
    frozen, config = frozen_copy(ckpt.model, ckpt)
    test_loss, test_acc = evaluate(frozen, data, config, torch.device(device))
    summary = {"frozen_from": str(Path(path).resolve()), "frozen_from_sha256": file_hash(path),
               "bn_refresh_batches": batches, "bn_refresh_batch_size": bs, "weights": weights,
               "test_loss": test_loss, "test_acc": test_acc}
    meta = {k: ckpt.meta.get(k) for k in ("epoch", "step", "metrics", "seed") if k in ckpt.meta}
    save_checkpoint(out, {"config": config.to_dict(), "model": frozen.state_dict(), "status": "frozen",
                          **meta, "frozen": summary})
    return summary
