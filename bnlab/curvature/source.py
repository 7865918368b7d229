"""Curvature operators of an analysis context: `curvature_operator(ctx, matrix, ...)`, the one factory
(the Hessian, the Gauss-Newton matrix or the residual of the context's training loss on its fixed
batches, with `.settings`), and `hessian_operator_from_checkpoint`, the Hessian of a checkpoint in
one call for notebooks and scripts that want only the operator.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..checkpoint import Checkpoint
from ..context import DEFAULT_BATCH_SIZE, DEFAULT_NUM_SAMPLES, AnalysisContext, EvalSpec, build_context
from ..data import Data
from ..errors import BnlabError
from .base import DataOperator
from .ggn import MATRICES, GGNOperator, ResidualOperator
from .operator import HessianOperator
from .params import parse_param_spec


def curvature_operator(ctx: AnalysisContext, matrix: str = "hessian", *, params: str | Sequence[str] | None = None,
                       loss_scale: str = "mean", weight_decay_term: bool | float = False,
                       method: str = "double_backward", cache_graphs: bool | str = "auto",
                       block_size: int = 16) -> DataOperator:
    """The `matrix` ("hessian", "ggn" or "residual") of the context's training loss, with `.settings`.

    weight_decay_term: True adds the run's wd·I (all parameters are decayed, as trained), a float
    adds that coefficient (the residual has none: it cancels). method, cache_graphs: the Hessian's
    HVP route and graph cache (the Gauss-Newton matrix has neither).
    """
    if matrix not in MATRICES:
        raise BnlabError(f"unknown matrix {matrix!r}; choose one of {', '.join(MATRICES)}")
    patterns = parse_param_spec(params) if isinstance(params, str) else params
    wd = float(ctx.config.weight_decay) if weight_decay_term is True else float(weight_decay_term or 0.0)
    common = dict(loss_fn=ctx.loss_fn, bn_mode=ctx.bn_mode, params=patterns, loss_scale=loss_scale,
                  batch_size=ctx.spec.batch_size, weight_decay=wd, block_size=block_size,
                  provenance=ctx.settings())
    if matrix == "ggn":
        return GGNOperator(ctx.model, ctx.batches, **common)
    kind = HessianOperator if matrix == "hessian" else ResidualOperator
    return kind(ctx.model, ctx.batches, method=method, cache_graphs=cache_graphs, **common)


def hessian_operator_from_checkpoint(
    ckpt: Checkpoint | str | os.PathLike, *, num_samples: int | None = DEFAULT_NUM_SAMPLES,
    batch_size: int = DEFAULT_BATCH_SIZE, bn_mode: str | None = None, data_dir: str | None = None,
    device: str | torch.device | None = None, params: str | Sequence[str] | None = None, loss_scale: str = "mean",
    weight_decay_term: bool | float = False, method: str = "double_backward", cache_graphs: bool | str = "auto",
    dtype: torch.dtype | None = None, eval_seed: int = 0, data: Data | None = None, block_size: int = 16,
) -> HessianOperator:
    """The HessianOperator of `ckpt` (a path or a loaded Checkpoint; never modified), with `.settings`.

    bn_mode: None = "batch" for models with BN ("none" for frozen/no-BN models, which have no choice);
    weight_decay_term: True adds the run's weight decay (wd·I on all parameters, as trained), a float
    adds that coefficient; dtype: compute dtype (None: the checkpoint's), a different one runs on a
    copy of the model; data: an already loaded Data to reuse (must match the run's).
    """
    spec = EvalSpec(num_samples=num_samples, batch_size=batch_size, bn_mode=bn_mode, eval_seed=eval_seed,
                    data_dir=data_dir, dtype=str(dtype).replace("torch.", "") if dtype is not None else None)
    ctx = build_context(ckpt, spec, device=device if device is not None else "auto", data=data)
    return curvature_operator(ctx, "hessian", params=params, loss_scale=loss_scale,
                              weight_decay_term=weight_decay_term, method=method, cache_graphs=cache_graphs,
                              block_size=block_size)
