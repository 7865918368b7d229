"""A curvature matrix of a model's loss over a fixed set of batches, as a linear operator.

Every such matrix M is a weighted sum over the batches of a per-batch matrix, plus the curvature of
the weight-decay term:

    M = c · [ Σ_b (n_b / N) · M_b  +  wd · D ]        (D: diagonal 0/1 mask of the decayed parameters)

for the loss L(θ) = c · [ Σ_b (n_b / N) · loss_fn(model_θ(x_b), y_b) + (wd / 2) · ‖θ_decayed‖² ],
where loss_fn returns the *mean* loss of a batch, N = Σ n_b, and c = 1 for ``loss_scale="mean"``
(mean loss over the N examples) or c = batch_size for ``"batch-sum"`` (the loss summed over a
batch of `batch_size`, the batch-norm post's units; exact when all batches have that size).
M_b is the Hessian of batch b's loss (`HessianOperator`), its Gauss-Newton part (`GGNOperator`), ...

`DataOperator` owns what every such matrix shares: the fixed batches and their weights
w_b = c·n_b/N, the parameter selection and its flat layout, the BN-mode session (the model is never
changed), the decay term, sharding over a process group, `describe()` and `settings`. A subclass
implements one method, `batch_product(x, y, weight, V)` = weight · M_b V for the rows of V (inside
the session), or overrides `local_products` when it needs more than one batch at a time (a graph
cache).

Vectors are flat float64 tensors over the selected parameters (`param_names` order). `matvec` and
`matmat` accept them on any device and return float64 on the same device; the products are
computed in the model's dtype on the model's device.

Sharded (under torch.distributed, e.g. `torchrun ... -m bnlab hessian`): every rank holds the same
model and the same fixed batches; rank r takes a contiguous block of whole batches (so BN in batch
mode computes the same function), computes its partial sum Σ_b w_b M_b V over them, and one
all_reduce sums the partials (dim × block numbers in the model's dtype). The weights use the global
N, so unequal batches stay exact. Every rank gets the same product, so a solver run on every rank
from the same start vector takes the same steps; all ranks must call every product, loss and
gradient together.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import distributed
from ..bnmode import bn_mode as bn_mode_ctx
from ..errors import BnlabError
from .hvp import LossFn, batch_gradient
from .linop import SymmetricOperator
from .params import FlatLayout, select_parameters

LOSS_SCALES = ("mean", "batch-sum")
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]] | Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class DataOperator(SymmetricOperator):
    """A curvature matrix over fixed batches (see the module docstring); subclasses give `batch_product`.

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
        block_size: max vectors per pass in `matmat` (bounds the memory of a batched pass).
        process_group: "auto" (default): shard over the world's ranks when torch.distributed is
            initialised with several; None: compute everything here; or a ProcessGroup.
        provenance: what defines the data (checkpoint, evaluation set, ...), merged into `settings`.
    """

    matrix = "abstract"  # the name recorded as settings["matrix"] (hessian, ggn, residual, ...)
    title = "curvature"  # the matrix's name in prose (the units)

    def __init__(self, model: nn.Module, batches: Batches, *, loss_fn: LossFn, bn_mode: str,
                 params: Sequence[str] | None = None, loss_scale: str = "mean", batch_size: int | None = None,
                 weight_decay: float = 0.0, decayed: Callable[[str], bool] | None = None, block_size: int = 16,
                 process_group: Any = "auto", provenance: dict[str, Any] | None = None) -> None:
        if loss_scale not in LOSS_SCALES:
            raise BnlabError(f"unknown loss scale {loss_scale!r}; choose one of {', '.join(LOSS_SCALES)}")
        self.model = model
        self._batches = batches
        self.loss_fn = loss_fn
        self.bn_mode = bn_mode
        self.block_size = max(1, int(block_size))
        named = select_parameters(model, params)
        self.param_patterns = list(params or ["*"])
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
        self.hvp_count = 0  # matrix-vector products done (a matmat of m vectors counts m)
        self.passes = 0  # passes over the evaluation set
        self.provenance: dict[str, Any] = dict(provenance or {})
        self.quiet = True  # False: show progress where a subclass has a slow first step

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

    def describe(self) -> dict[str, Any]:
        """Everything that defines this operator, for the record."""
        return {"matrix": self.matrix, "dim": self.dim, "num_samples": self.num_samples,
                "num_batches": len(self.sizes), "batch_size": self.batch_size, "bn_mode": self.bn_mode,
                "loss_scale": self.loss_scale, "scale_factor": self.scale, "weight_decay_term": self.weight_decay,
                "dtype": str(self.dtype).replace("torch.", ""), "num_param_tensors": len(self.param_names),
                **self._describe_extra(),
                **({} if self._group is None else {"distributed": {
                    "world_size": self.world_size, "backend": str(dist.get_backend(self._group)),
                    "batches_per_rank": [len(distributed.shard_range(len(self.sizes), r, self.world_size))
                                         for r in range(self.world_size)]}})}

    def _describe_extra(self) -> dict[str, Any]:
        """A subclass's own settings for `describe()` (e.g. the HVP method)."""
        return {}

    @property
    def units(self) -> str:
        return ("mean loss over the evaluation set" if self.loss_scale == "mean" else
                f"loss summed over a batch of {self.batch_size} (= {self.batch_size} x mean-loss {self.title})")

    @property
    def settings(self) -> dict[str, Any]:
        """What was computed, for result files: `describe()` (as of now), the provenance, params and units."""
        return {**self.describe(), **self.provenance, "matrix": self.matrix, "params": list(self.param_patterns),
                "units": self.units}

    # ----------------------------------------------------------------- products
    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """M V for the rows of V (m, dim): one pass over the data per `block_size` rows."""
        self._check(V)
        if V.shape[0] == 0:  # no vectors: no pass over the data (and no collective under torchrun)
            return torch.zeros(0, self.dim, dtype=torch.float64, device=V.device)
        out = [self._block(V[i:i + self.block_size]) for i in range(0, V.shape[0], self.block_size)]
        return torch.cat(out)

    def batch_product(self, x: torch.Tensor, y: torch.Tensor, weight: float, V: torch.Tensor) -> torch.Tensor:
        """weight · M_b V for the rows of V (m, dim) in the model's dtype, inside the session."""
        raise NotImplementedError(f"{type(self).__name__} defines no per-batch product")

    def local_products(self, V: torch.Tensor) -> torch.Tensor:
        """Σ_b w_b M_b V over this rank's batches (inside the session); V in the model's dtype and device."""
        acc = torch.zeros_like(V)
        for (x, y), w in self._local_batches():
            acc += self.batch_product(x, y, w, V)
        return acc

    def _block(self, V: torch.Tensor) -> torch.Tensor:
        Vc = V.to(device=self.device, dtype=self.dtype)
        with self._session():
            acc = self.local_products(Vc)
        acc = self._sum_over_ranks(acc)
        self.hvp_count += V.shape[0]
        self.passes += 1
        out = acc.to(torch.float64).to(V.device)
        return out + self._decay_term(V.to(torch.float64))

    # ----------------------------------------------------------------- the loss itself
    def gradient(self) -> torch.Tensor:
        """∇L (flat float64), one pass; for cost comparisons and checks."""
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with self._session():
            for (x, y), w in self._local_batches():
                g += batch_gradient(self.model, self._params, x, y, self.loss_fn, w, create_graph=False)
        g64 = self._sum_over_ranks(g).to(torch.float64)
        return g64 + self._decay_term(self.flat_params().to(g64.device))

    def loss(self) -> float:
        """L (with the same scale and weight-decay term as the curvature)."""
        total = 0.0
        with torch.no_grad(), bn_mode_ctx(self.model, self.bn_mode):
            for (x, y), w in self._local_batches():
                total += float(self.loss_fn(self.model(x), y)) * w
        if self._group is not None:
            total = float(self._sum_over_ranks(torch.tensor([total], dtype=torch.float64, device=self.device)))
        theta = self.flat_params()
        decayed = self._decay_mask.to(theta.device) * theta ** 2  # the mask lives on the CPU
        return total + 0.5 * self.scale * self.weight_decay * float(decayed.sum())

    # ----------------------------------------------------------------- shared machinery
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
