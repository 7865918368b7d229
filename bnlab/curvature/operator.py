"""The Hessian of a model's loss over a fixed set of batches, as a linear operator.

H = ∇²L(θ) for the loss L of `bnlab.curvature.base` (batches weighted n_b/N, "mean" or "batch-sum"
units, optional weight-decay term, BN in an explicit mode, sharded by whole batches): one
`DataOperator` whose per-batch product is a Hessian-vector product (`bnlab.curvature.hvp`).

Graphs: a double-backward product needs each batch's gradient graph (one forward and one backward
with ``create_graph``). ``cache_graphs=True`` keeps them all between calls, so a product is only the
second backward (memory O(N)); ``False`` rebuilds them every call (memory O(batch)); ``"auto"``
(default) measures the first batch's graph and caches when all of them fit in half the free memory
of the device (or `cache_budget` bytes). `GraphCache` is that strategy; its decision is in
`describe()`. Sharded, each rank decides for its own block of batches.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import BnlabError
from ..progress import Progress
from .base import LOSS_SCALES, Batches, DataOperator
from .hvp import HVP_METHODS, LossFn, batch_gradient, compiled_func_block, double_backward_block, func_block

__all__ = ["LOSS_SCALES", "Batches", "GraphCache", "HessianOperator", "available_memory"]


class HessianOperator(DataOperator):
    """H = ∇²L(θ) over the selected parameters (see `bnlab.curvature.base` for L and conventions).

    Args (besides `DataOperator`'s: model, batches, loss_fn, bn_mode, params, loss_scale, batch_size,
    weight_decay, decayed, block_size, process_group, provenance):
        method: "double_backward" (default; measured fastest on CPU), "func" or "func_compiled"
            (torch.func through torch.compile, opt-in: docs/performance.md).
        cache_graphs: True / False / "auto": keep the per-batch gradient graphs between products
            (double_backward only; "auto" falls back to streaming for "func").
        cache_budget: bytes the cached graphs may use in "auto" mode (default: half the free memory).
    """

    matrix = "hessian"
    title = "Hessian"

    def __init__(self, model: nn.Module, batches: Batches, *, loss_fn: LossFn, bn_mode: str,
                 params: Sequence[str] | None = None, loss_scale: str = "mean", batch_size: int | None = None,
                 weight_decay: float = 0.0, decayed: Callable[[str], bool] | None = None,
                 method: str = "double_backward", cache_graphs: bool | str = "auto",
                 cache_budget: float | None = None, block_size: int = 16, process_group: Any = "auto",
                 provenance: dict[str, Any] | None = None) -> None:
        if method not in HVP_METHODS:
            raise BnlabError(f"unknown HVP method {method!r}; choose one of {', '.join(HVP_METHODS)}")
        if loss_scale not in LOSS_SCALES:
            raise BnlabError(f"unknown loss scale {loss_scale!r}; choose one of {', '.join(LOSS_SCALES)}")
        if cache_graphs not in (True, False, "auto"):
            raise BnlabError(f"cache_graphs must be True, False or 'auto', got {cache_graphs!r}")
        if cache_graphs is True and method != "double_backward":
            raise BnlabError("cache_graphs needs method double_backward")
        if method != "double_backward":
            cache_graphs = False
        super().__init__(model, batches, loss_fn=loss_fn, bn_mode=bn_mode, params=params, loss_scale=loss_scale,
                         batch_size=batch_size, weight_decay=weight_decay, decayed=decayed, block_size=block_size,
                         process_group=process_group, provenance=provenance)
        self.method = method
        self.graph_cache = GraphCache(self, cache_graphs, cache_budget)

    # the cache's state, under the names the operator has always had
    @property
    def cache_graphs(self) -> bool | str:
        return self.graph_cache.mode

    @property
    def cache_info(self) -> dict[str, Any]:
        return self.graph_cache.info

    @property
    def cache_budget(self) -> float | None:
        return self.graph_cache.budget

    @property
    def _cache(self) -> list[torch.Tensor] | None:
        return self.graph_cache.graphs

    def clear_cache(self) -> None:
        self.graph_cache.clear()

    def _describe_extra(self) -> dict[str, Any]:
        return {"hvp_method": self.method, "cache_graphs": self.cache_graphs, "graph_cache": dict(self.cache_info)}

    def batch_product(self, x: torch.Tensor, y: torch.Tensor, weight: float, V: torch.Tensor) -> torch.Tensor:
        """weight · H_b V, the graph built for this call only."""
        if self.method != "double_backward":  # func, or func_compiled (the same product through torch.compile)
            block = compiled_func_block if self.method == "func_compiled" else func_block
            return block(self.model, self.param_names, self._params, self.layout.split, x, y, self.loss_fn, weight, V)
        g = batch_gradient(self.model, self._params, x, y, self.loss_fn, weight, create_graph=True)
        return double_backward_block(g, self._params, V, retain_last=False)

    def local_products(self, V: torch.Tensor) -> torch.Tensor:
        if self.graph_cache.mode == "auto":
            self.graph_cache.decide()
        if not self.graph_cache.mode:
            return super().local_products(V)
        acc = torch.zeros_like(V)
        for g in self.graph_cache.gradients():
            acc += double_backward_block(g, self._params, V, retain_last=True)
        return acc


class GraphCache:
    """Every local batch's gradient graph, kept between the products of `op` (memory O(N)).

    mode: True (keep them), False (stream), "auto" (decide at the first product: cache when the
    graphs, estimated from the first batch's, fit in `budget` bytes, default half the free memory).
    The graphs are rebuilt when a parameter was modified in place since they were made.
    """

    def __init__(self, op: HessianOperator, mode: bool | str, budget: float | None) -> None:
        self.op = op
        self.mode = mode
        self.budget = budget
        self.graphs: list[torch.Tensor] | None = None
        self._key: tuple[int, ...] | None = None
        self.info: dict[str, Any] = {"mode": mode if isinstance(mode, str) else ("on" if mode else "off")}

    def clear(self) -> None:
        self.graphs = None
        self._key = None

    def decide(self) -> None:
        """Resolve "auto": build the first batch's graph, measure what it holds, cache if all fit.

        Sharded: each rank decides for its own block (products do not depend on the decision).
        """
        op = self.op
        first = next(iter(op._local_batches()), None)
        if first is None:  # more ranks than batches: nothing to compute (or cache) here
            self.mode = False
            self.info.update(cached=False, estimated_bytes=0, budget_bytes=0)
            return
        (x, y), w = first
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            g = batch_gradient(op.model, op._params, x, y, op.loss_fn, w, create_graph=True)
        per_example = sum(storages.values()) / len(y)
        estimate = per_example * sum(op.sizes[i] for i in op._shard)
        budget = self.budget if self.budget is not None else 0.5 * (available_memory(op.device) or 0)
        self.mode = bool(estimate <= budget)
        self.info.update(cached=self.mode, estimated_bytes=int(estimate), budget_bytes=int(budget))
        if self.mode:  # keep the graph just built as the first entry
            self.graphs = [g, *self._build(skip_first=True)]
            self._key = self._params_key()
        del g

    def _params_key(self) -> tuple[int, ...]:
        ps = self.op._params
        return tuple(p._version for p in ps) + tuple(p.data_ptr() for p in ps)

    def gradients(self) -> list[torch.Tensor]:
        # Rebuild when any parameter was modified in place since the graphs were made.
        key = self._params_key()
        if self.graphs is None or key != self._key:
            self.graphs = self._build()
            self._key = key
        return self.graphs

    def _build(self, skip_first: bool = False) -> list[torch.Tensor]:
        """Every batch's gradient graph (the slow first step of a cached run: shown as progress)."""
        op = self.op
        bar = Progress(len(op._shard), "hessian: gradient graphs", quiet=op.quiet, unit="batch")
        graphs = []
        for i, ((x, y), w) in enumerate(op._local_batches()):
            if not (skip_first and i == 0):
                graphs.append(batch_gradient(op.model, op._params, x, y, op.loss_fn, w, create_graph=True))
            bar.update(1)
        bar.close()
        return graphs


def available_memory(device: torch.device, meminfo: str = "/proc/meminfo") -> int | None:
    """Free bytes on `device` (CUDA: free device memory; CPU: MemAvailable of `meminfo`, else the free
    pages), None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
