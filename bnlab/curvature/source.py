"""The Hessian operator of a checkpoint: its training loss on a fixed evaluation set.

`hessian_operator_from_checkpoint` finds the data as the checkpoint's run did (its recorded
DataSpec, subset drawn with the run's seed), overridable with `data_dir`; draws a class-balanced
fixed set of `num_samples` training images with `eval_seed`; feeds them unaugmented in fixed
batches of `batch_size`; and uses the run's loss (cross-entropy with its label smoothing).
Everything that defines the result is in the operator's `settings` dict.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..bnmode import resolve_bn_mode
from ..checkpoint import Checkpoint, file_hash, load_checkpoint
from ..data import Data, eval_batches, eval_set, load_data
from ..device import resolve_device
from ..errors import BnlabError
from ..norms import GhostBatchNorm
from .operator import HessianOperator
from .params import parse_param_spec

DEFAULT_NUM_SAMPLES = 2560
DEFAULT_BATCH_SIZE = 256  # as in the batch-norm post


def _batch_sizes(n: int, b: int) -> list[int]:
    return [b] * (n // b) + ([n % b] if n % b else [])


def hessian_operator_from_checkpoint(
    ckpt: Checkpoint | str | os.PathLike, *, num_samples: int | None = DEFAULT_NUM_SAMPLES,
    batch_size: int = DEFAULT_BATCH_SIZE, bn_mode: str | None = None, data_dir: str | None = None,
    device: str | torch.device | None = None, params: str | list[str] | None = None, loss_scale: str = "mean",
    weight_decay_term: bool | float = False, method: str = "double_backward", cache_graphs: bool | str = "auto",
    dtype: torch.dtype | None = None, eval_seed: int = 0, data: Data | None = None, block_size: int = 16,
) -> HessianOperator:
    """Build the HessianOperator of `ckpt` (a path or a loaded Checkpoint; never modified).

    bn_mode: None = "batch" for models with BN ("none" for frozen/no-BN models, which have no choice);
    weight_decay_term: True adds the run's weight decay (wd·I on decayed = all parameters, as trained),
    a float adds that coefficient; dtype: compute dtype (None: the checkpoint's, float32), float64
    runs on a copy of the model; data: an already loaded Data to reuse (must match the run's).
    """
    dev = resolve_device(device if device is not None else "auto")
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt, dev)
    config = ckpt.config
    model = ckpt.model
    if next(model.parameters()).device != dev or (dtype is not None and dtype != next(model.parameters()).dtype):
        model = copy.deepcopy(model)  # the caller's model stays exactly as it was
        model.to(device=dev, dtype=dtype or next(model.parameters()).dtype)
    dtype = next(model.parameters()).dtype
    mode = resolve_bn_mode(model, bn_mode)
    if batch_size < 1:
        raise BnlabError(f"--batch-size must be at least 1, got {batch_size}")
    if num_samples is not None and (num_samples < 10 or num_samples % 10):
        raise BnlabError(f"--num-samples must be a positive multiple of 10 (class-balanced), got {num_samples}")
    spec = config.data if data_dir is None else dataclasses.replace(config.data, data_dir=str(data_dir))
    if data is None:
        data = load_data(spec, dev, seed=config.seed)
    x, y = eval_set(data, num_samples, seed=eval_seed)
    sizes = _batch_sizes(len(y), batch_size)
    ghosts = {m.splits for m in model.modules() if isinstance(m, GhostBatchNorm)}
    if mode == "batch":
        for s in ghosts:
            if any(n % s for n in sizes):
                raise BnlabError(f"ghost BN with {s} splits needs every batch divisible by {s}: choose --batch-size "
                                 f"and --num-samples as multiples of {s} (batches here: {sorted(set(sizes))})")
        if min(sizes) < 2:
            raise BnlabError("BN in batch mode needs batches of at least 2 examples; change --num-samples")
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=config.label_smoothing)

    def batches() -> Any:
        return ((xb.to(dtype), yb) for xb, yb in eval_batches(x, y, batch_size, data))

    wd = float(config.weight_decay) if weight_decay_term is True else float(weight_decay_term or 0.0)
    op = HessianOperator(model, batches, loss_fn=loss_fn, bn_mode=mode, params=parse_param_spec(params),
                         loss_scale=loss_scale, batch_size=batch_size, weight_decay=wd, method=method,
                         cache_graphs=cache_graphs, block_size=block_size)
    path = Path(ckpt.path)
    op.settings = {
        **op.describe(),
        "checkpoint": str(path), "checkpoint_sha256": file_hash(path) if path.is_file() else None,
        "variant": config.variant, "model": dataclasses.asdict(config.model),
        "data_source": data.source, "dataset": spec.dataset, "data_subset": spec.subset, "eval_seed": eval_seed,
        "label_smoothing": config.label_smoothing, "augmentation": "none",
        "params": parse_param_spec(params) or ["*"], "device": str(dev),
        "loss": "cross_entropy" + (f"(label_smoothing={config.label_smoothing})" if config.label_smoothing else ""),
        "units": ("mean loss over the evaluation set" if loss_scale == "mean"
                  else f"loss summed over a batch of {op.batch_size} (= {op.batch_size} x mean-loss Hessian)"),
    }
    return op
