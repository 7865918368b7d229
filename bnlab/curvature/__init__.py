"""Curvature of a checkpoint's training loss: Hessian operator, top eigenpairs, spectral density, trace.

Public API (all vectors flat float64 torch tensors over the selected parameters):

- ``HessianOperator(model, batches, *, loss_fn, bn_mode, params=None, loss_scale="mean",
  batch_size=None, weight_decay=0.0, method="double_backward", cache_graphs="auto", cache_budget=None,
  process_group="auto")``: ``.dim``, ``.matvec(v)``, ``.matmat(V)`` (rows of V; one data pass per block;
  sharded by whole batches over the ranks of an initialised torch.distributed group), ``.hvp_count``,
  ``.param_names``, ``.unflatten(v)``, ``.as_linear_operator()`` (scipy), ``.gradient()``,
  ``.loss()``, ``.describe()``. Inputs may live on any device; outputs come back float64 on the
  input's device; products run on the model's device and dtype. Never modifies the model.
- ``hessian_operator_from_checkpoint(ckpt, *, num_samples, batch_size, bn_mode, data_dir, device,
  params, loss_scale, weight_decay_term, method, cache_graphs, dtype, eval_seed)``: the operator of
  a checkpoint's training loss on its fixed evaluation set, with ``.settings`` (what was computed).
- ``GGNOperator(model, batches, *, loss_fn, bn_mode, ...)`` (the Gauss-Newton matrix G = Jᵀ H_out J,
  ``.class_means()``: Papyan's class-means term) and ``ResidualOperator`` (R = H − G): the same
  arguments, batches, weights and sharding as the Hessian (`bnlab.curvature.ggn`).
- ``DataOperator``: the base of the three (batches, n_b/N weights, shards, BN session, decay term,
  ``describe()``, ``settings``); a new curvature matrix is a subclass with one ``batch_product``.
- ``curvature_operator(ctx, matrix, ...)``: the operator of an analysis context, with ``.settings``.
- ``SymmetricOperator`` (base: ``dim``, ``matmat``; ``matvec``, ``@``, ``as_linear_operator()`` derived),
  ``DenseOperator(matrix)``, ``LowRankOperator(F)`` (Fᵀ F), ``SumOperator([(a, A), ...])``,
  ``ProjectedOperator(op, basis)`` ((I-P) A (I-P)).
- ``top_eigenpairs(op, k, which="LA", tol=1e-4, v0=None, *, method="lanczos"|"arpack", ncv,
  max_hvps, seed, verify, callback) -> EigenResult`` for any SymmetricOperator.
- ``HessianOptions``, ``run_hessian(context, options) -> HessianResult`` (``.write(out)``): what
  `bnlab hessian` does (see also ``bnlab.hessian``).
- ``slq_density(op, num_probes, lanczos_steps, seed) -> DensityResult`` (``.density(grid, sigma)``
  with pointwise standard error, ``.trace()``, ``.moment(p)``, ``.to_dict()``).
- ``hutchinson_trace(op, num_probes, seed)``, ``hutchpp_trace(op, num_matvecs, seed)`` -> TraceResult.
- ``dense_hessian(model, batches, loss_fn, bn_mode, ...)``: torch.func ground truth for tiny nets.
- ``select_parameters``, ``parse_param_spec``: parameter subsets by glob (``"layer3*,!*.norm.*"``).
"""
from .base import DataOperator
from .dense import dense_hessian
from .density import DensityResult, slq_density
from .ggn import MATRICES, GGNOperator, ResidualOperator
from .hessian import HessianOptions, HessianResult, run_hessian
from .lanczos import EigenResult, residual_norms, top_eigenpairs
from .linop import DenseOperator, LowRankOperator, ProjectedOperator, SumOperator, SymmetricOperator
from .operator import LOSS_SCALES, HessianOperator
from .params import FlatLayout, parse_param_spec, select_parameters
from .source import curvature_operator, hessian_operator_from_checkpoint
from .trace import TraceResult, hutchinson_trace, hutchpp_trace

__all__ = [
    "LOSS_SCALES", "MATRICES", "DataOperator", "DenseOperator", "GGNOperator", "LowRankOperator",
    "ResidualOperator", "SumOperator", "curvature_operator", "DensityResult", "EigenResult", "FlatLayout",
    "HessianOperator",
    "HessianOptions", "HessianResult", "ProjectedOperator", "SymmetricOperator", "TraceResult", "dense_hessian",
    "hessian_operator_from_checkpoint", "hutchinson_trace", "run_hessian",
    "hutchpp_trace", "parse_param_spec", "residual_norms", "select_parameters", "slq_density", "top_eigenpairs",
]
