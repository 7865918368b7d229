"""The Hessian of a model's loss over a fixed set of batches, as a linear operator.

    L(θ) = c · [ Σ_b (n_b / N) · loss_fn(model_θ(x_b), y_b)  +  (wd / 2) · ‖θ_decayed‖² ]

where loss_fn returns the *mean* loss of a batch, N = Σ n_b, and c = 1 for ``loss_scale="mean"``
(mean loss over the N examples) or c = batch_size for ``"batch-sum"`` (the loss summed over a
batch of `batch_size`, the batch-norm post's units; exact when all batches have that size).

Vectors are flat float64 tensors over the selected parameters (`param_names` order). `matvec` and
`matmat` accept them on any device and return float64 on the same device; the products are
computed in the model's dtype on the model's device.

Graphs: a double-backward product needs each batch's gradient graph (one forward and one backward
with ``create_graph``). ``cache_graphs=True`` keeps them all between calls, so a product is only the
second backward (memory O(N)); ``False`` rebuilds them every call (memory O(batch)); ``"auto"``
(default) measures the first batch's graph and caches when all of them fit in half the free memory
of the device (or `cache_budget` bytes). The decision is in `describe()`.

The model is never changed: BN runs inside `bnlab.bnmode.bn_mode`, which leaves running stats and
``num_batches_tracked`` alone, and ``requires_grad`` flags are restored after each product.

Sharded (under torch.distributed, e.g. `torchrun ... -m bnlab hessian`): every rank holds the same
model and the same fixed batches; rank r takes a contiguous block of whole batches (so BN in batch
mode computes the same function), computes its partial sum Σ_b w_b H_b V over them with its own
graph cache, and one all_reduce sums the partials (dim × block numbers in the model's dtype). The
weights w_b = c·n_b/N use the global N, so unequal batches stay exact. Every rank gets the same
product, so a solver run on every rank from the same start vector takes the same steps; all ranks
must call every product, loss and gradient together.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import distributed
from ..bnmode import bn_mode as bn_mode_ctx
from ..errors import BnlabError
from ..progress import Progress
from .hvp import HVP_METHODS, LossFn, batch_gradient, double_backward_block, func_block
from .linop import SymmetricOperator
from .params import FlatLayout, select_parameters

LOSS_SCALES = ("mean", "batch-sum")
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]] | Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class HessianOperator(SymmetricOperator):
    """H = ∇²L(θ) over the selected parameters (see module docstring for L and conventions).

    Args:
        model: the network (not modified).
        batches: a sequence of (x, y) batches, or a zero-argument callable returning a fresh
            iterable of them (streamed: e.g. normalised on the fly from uint8 images).
        loss_fn: (logits, y) -> mean loss of the batch.
        bn_mode: "batch", "running" or "none" (as from `bnlab.bnmode.resolve_bn_mode`).
        params: glob patterns selecting parameters (see `params.select_parameters`); None = all.
        loss_scale: "mean" or "batch-sum" (then `batch_size` is the batch of the units).
        weight_decay: adds weight_decay·I (times c) on the decayed parameters.
        decayed: name -> bool, which parameters carry weight decay (default: all, as in training).
        method: "double_backward" (default; measured fastest on CPU) or "func".
        cache_graphs: True / False / "auto": keep the per-batch gradient graphs between products
            (double_backward only; "auto" falls back to streaming for "func").
        cache_budget: bytes the cached graphs may use in "auto" mode (default: half the free memory).
        block_size: max vectors per pass in `matmat` (bounds the memory of a batched pass).
        process_group: "auto" (default): shard over the world's ranks when torch.distributed is
            initialised with several; None: compute everything here; or a ProcessGroup.
    """

    def __init__(self, model: nn.Module, batches: Batches, *, loss_fn: LossFn, bn_mode: str,
                 params: Sequence[str] | None = None, loss_scale: str = "mean", batch_size: int | None = None,
                 weight_decay: float = 0.0, decayed: Callable[[str], bool] | None = None,
                 method: str = "double_backward", cache_graphs: bool | str = "auto",
                 cache_budget: float | None = None, block_size: int = 16, process_group: Any = "auto") -> None:
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
        self.model = model
        self._batches = batches
        self.loss_fn = loss_fn
        self.bn_mode = bn_mode
        self.method = method
        self.cache_graphs = cache_graphs
        self.block_size = max(1, int(block_size))
        named = select_parameters(model, params)
        self.param_names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.layout = FlatLayout(named)
        self.dim = self.layout.dim
        self.sizes = [len(y) for _, y in self.batches()]
        self.num_samples = sum(self.sizes)
        if self.num_samples == 0:
            raise BnlabError("the evaluation set is empty")
        self._group = distributed.resolve_group(process_group)
        world = 1 if self._group is None else dist.get_world_size(self._group)
        self._shard = distributed.shard_range(len(self.sizes), 0 if self._group is None else
                                              dist.get_rank(self._group), world)
        self.world_size = world
        self.loss_scale = loss_scale
        self.batch_size = batch_size or max(self.sizes)  # batch-sum units default to the largest batch
        self.scale = float(self.batch_size) if loss_scale == "batch-sum" else 1.0
        self.weight_decay = float(weight_decay)
        mask = [torch.full((p.numel(),), float(decayed is None or decayed(n))) for n, p in named]
        self._decay_mask = torch.cat(mask).to(torch.float64)
        self.hvp_count = 0  # Hessian-vector products done (a matmat of m vectors counts m)
        self.passes = 0  # passes over the evaluation set
        self._cache: list[torch.Tensor] | None = None
        self._cache_key: tuple[int, ...] | None = None
        self.cache_budget = cache_budget
        self.cache_info: dict[str, Any] = {"mode": cache_graphs if isinstance(cache_graphs, str) else
                                           ("on" if cache_graphs else "off")}
        self.quiet = True  # False: show progress while the gradient graphs are built

    # ----------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self._params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self._params[0].dtype

    def batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self._batches() if callable(self._batches) else self._batches

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat (dim,) or (m, dim) vector -> {parameter name: parameter-shaped tensor}."""
        return self.layout.unflatten(v)

    def flat_params(self) -> torch.Tensor:
        return self.layout.flatten([p.detach() for p in self._params]).to(torch.float64)

    def clear_cache(self) -> None:
        self._cache = None
        self._cache_key = None

    def describe(self) -> dict[str, Any]:
        """Everything that defines this operator, for the record."""
        return {"dim": self.dim, "num_samples": self.num_samples, "num_batches": len(self.sizes),
                "batch_size": self.batch_size, "bn_mode": self.bn_mode, "loss_scale": self.loss_scale,
                "scale_factor": self.scale, "weight_decay_term": self.weight_decay, "hvp_method": self.method,
                "cache_graphs": self.cache_graphs, "graph_cache": dict(self.cache_info),
                "dtype": str(self.dtype).replace("torch.", ""),
                "num_param_tensors": len(self.param_names),
                **({} if self._group is None else {"distributed": {
                    "world_size": self.world_size, "backend": str(dist.get_backend(self._group)),
                    "batches_per_rank": [len(distributed.shard_range(len(self.sizes), r, self.world_size))
                                         for r in range(self.world_size)]}})}

    # ----------------------------------------------------------------- products
    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for the rows of V (m, dim): one pass over the data per `block_size` rows."""
        self._check(V)
        if V.shape[0] == 0:  # no vectors: no pass over the data (and no collective under torchrun)
            return torch.zeros(0, self.dim, dtype=torch.float64, device=V.device)
        out = [self._block(V[i:i + self.block_size]) for i in range(0, V.shape[0], self.block_size)]
        return torch.cat(out)

    def gradient(self) -> torch.Tensor:
        """∇L (flat float64), one pass; for cost comparisons and checks."""
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with self._session():
            for (x, y), w in self._local_batches():
                g += batch_gradient(self.model, self._params, x, y, self.loss_fn, w, create_graph=False)
        g64 = self._sum_over_ranks(g).to(torch.float64)
        return g64 + self._decay_term(self.flat_params().to(g64.device))

    def loss(self) -> float:
        """L (with the same scale and weight-decay term as the Hessian)."""
        total = 0.0
        with torch.no_grad(), bn_mode_ctx(self.model, self.bn_mode):
            for (x, y), w in self._local_batches():
                total += float(self.loss_fn(self.model(x), y)) * w
        if self._group is not None:
            total = float(self._sum_over_ranks(torch.tensor([total], dtype=torch.float64, device=self.device)))
        theta = self.flat_params()
        decayed = self._decay_mask.to(theta.device) * theta ** 2  # the mask lives on the CPU
        return total + 0.5 * self.scale * self.weight_decay * float(decayed.sum())

    def _weights(self) -> list[float]:
        return [self.scale * n / self.num_samples for n in self.sizes]

    def _local_batches(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], float]]:
        """(batch, weight) of this rank's block of batches (all of them in one process)."""
        weights = self._weights()
        for i, batch in enumerate(self.batches()):
            if i >= self._shard.stop:
                break
            if i >= self._shard.start:
                yield batch, weights[i]

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._group is None else distributed.all_reduce_sum(t, self._group)

    def _decay_term(self, V: torch.Tensor) -> torch.Tensor:
        if not self.weight_decay:
            return torch.zeros_like(V)
        return (self.scale * self.weight_decay) * self._decay_mask.to(V.device) * V

    def _block(self, V: torch.Tensor) -> torch.Tensor:
        Vc = V.to(device=self.device, dtype=self.dtype)
        acc = torch.zeros_like(Vc)
        with self._session():
            if self.cache_graphs == "auto":
                self._decide_cache()
            if self.cache_graphs:
                for g in self._cached_gradients():
                    acc += double_backward_block(g, self._params, Vc, retain_last=True)
            else:
                for (x, y), w in self._local_batches():
                    if self.method == "func":
                        acc += func_block(self.model, self.param_names, self._params, self.layout.split,
                                          x, y, self.loss_fn, w, Vc)
                    else:
                        g = batch_gradient(self.model, self._params, x, y, self.loss_fn, w, create_graph=True)
                        acc += double_backward_block(g, self._params, Vc, retain_last=False)
                        del g
        acc = self._sum_over_ranks(acc)
        self.hvp_count += V.shape[0]
        self.passes += 1
        out = acc.to(torch.float64).to(V.device)
        return out + self._decay_term(V.to(torch.float64))

    def _decide_cache(self) -> None:
        """Resolve "auto": build the first batch's graph, measure what it holds, cache if all fit.

        Sharded: each rank decides for its own block (products do not depend on the decision).
        """
        first = next(iter(self._local_batches()), None)
        if first is None:  # more ranks than batches: nothing to compute (or cache) here
            self.cache_graphs = False
            self.cache_info.update(cached=False, estimated_bytes=0, budget_bytes=0)
            return
        (x, y), w = first
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            g = batch_gradient(self.model, self._params, x, y, self.loss_fn, w, create_graph=True)
        per_example = sum(storages.values()) / len(y)
        estimate = per_example * sum(self.sizes[i] for i in self._shard)
        budget = self.cache_budget if self.cache_budget is not None else 0.5 * (available_memory(self.device) or 0)
        self.cache_graphs = bool(estimate <= budget)
        self.cache_info.update(cached=self.cache_graphs, estimated_bytes=int(estimate), budget_bytes=int(budget))
        if self.cache_graphs:  # keep the graph just built as the first entry
            self._cache = [g, *self._build_graphs(skip_first=True)]
            self._cache_key = self._params_key()
        del g

    def _params_key(self) -> tuple[int, ...]:
        return tuple(p._version for p in self._params) + tuple(p.data_ptr() for p in self._params)

    def _cached_gradients(self) -> list[torch.Tensor]:
        # Rebuild when any parameter was modified in place since the graphs were made.
        key = self._params_key()
        if self._cache is None or key != self._cache_key:
            self._cache = self._build_graphs()
            self._cache_key = key
        return self._cache

    def _build_graphs(self, skip_first: bool = False) -> list[torch.Tensor]:
        """Every batch's gradient graph (the slow first step of a cached run: shown as progress)."""
        bar = Progress(len(self._shard), "hessian: gradient graphs", quiet=self.quiet, unit="batch")
        graphs = []
        for i, ((x, y), w) in enumerate(self._local_batches()):
            if not (skip_first and i == 0):
                graphs.append(batch_gradient(self.model, self._params, x, y, self.loss_fn, w, create_graph=True))
            bar.update(1)
        bar.close()
        return graphs

    @contextmanager
    def _session(self):  # noqa: ANN202
        """BN mode for the forward passes, and grad enabled on the selected parameters only for now."""
        flags = [p.requires_grad for p in self._params]
        try:
            with torch.enable_grad(), bn_mode_ctx(self.model, self.bn_mode):
                for p in self._params:
                    p.requires_grad_(True)
                yield
        finally:
            for p, f in zip(self._params, flags):
                p.requires_grad_(f)


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
