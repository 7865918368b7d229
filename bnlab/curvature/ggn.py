"""The Gauss-Newton view of the Hessian: H = G + R over the same batches, BN mode, weights and shards.

For batch b with logits z_b = f_θ(x_b) (n_b × C) and mean loss ℓ_b(z_b):

    H_b = J_bᵀ ∇²ℓ_b J_b  +  Σ_{i,k} ∂ℓ_b/∂z_ik · ∇²z_ik        (J_b = ∂z_b/∂θ, (n_b·C) × dim)
        =        G_b        +            R_b

`GGNOperator` is G = c·Σ_b (n_b/N)·G_b (+ the decay term, when asked: it is exact curvature and
PSD), computed matrix-free per batch: ``torch.func.jvp`` of the logits (J v), the output Hessian by
autodiff of `loss_fn` on the logits, then ``torch.func.vjp`` (Jᵀ u). (The first forward-mode product
of a process loads torch's scripted decompositions: a one-time cost of seconds, ~25 s on a loaded
2-core machine.) For softmax cross-entropy the
output Hessian is block-diagonal over examples, (1/n_b)·(diag(p_i) − p_i p_iᵀ) per example; label
smoothing does not change it (the smoothed targets enter the loss linearly in z), so G is the same
with and without it. G is positive semi-definite for a convex loss.

BN in batch mode: J_b differentiates through the batch statistics, so example i's row block J_i
depends on the other examples of its batch. G keeps its per-example form Σ_i J_iᵀ H_i J_i (the
loss is a sum over examples), but each J_i is taken in its batch: the per-example structure of G is
per batch, and G depends on how the examples are batched (as H does). In running mode and without
BN the J_i are the ordinary per-example Jacobians.

`ResidualOperator` is R = H − G (the difference of the two per-batch products, one all_reduce):
the curvature that comes from the network's second derivatives weighted by the loss's gradient
(small where the fit is good; no decay term, it cancels). `GGNOperator.class_means()` is Papyan's
class-means term G_cm (rank ≤ C), see its docstring.

References: Sagun et al. 2017 (arXiv:1706.04454); Papyan 2019 (arXiv:1901.08244); Papyan 2020,
"Traces of class/cross-class structure pervade deep learning spectra" (arXiv:2008.11865, JMLR).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from ..bnmode import bn_mode as bn_mode_ctx
from .base import Batches, DataOperator
from .hvp import LossFn
from .linop import LowRankOperator
from .operator import HessianOperator

MATRICES = ("hessian", "ggn", "residual")


def ggn_block(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor],
              split: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
              loss_fn: LossFn, weight: float, V: torch.Tensor) -> torch.Tensor:
    """weight · J_bᵀ ∇²ℓ_b J_b V for the rows of V (m, dim): jvp, output Hessian, vjp; vmapped over rows."""
    primals = {n: p.detach() for n, p in zip(names, params)}

    def logits_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, p, (x,), strict=False)

    def loss_of(z: torch.Tensor) -> torch.Tensor:
        return loss_fn(z, y) * weight

    # no_grad: the parameters outside the selection enter through the model itself (as in func_block)
    with torch.no_grad():
        z, pullback = vjp(logits_of, primals)
        out_grad = grad(loss_of)

        def product(v: torch.Tensor) -> torch.Tensor:
            _, jv = jvp(logits_of, (primals,), (dict(zip(names, split(v))),))
            _, hjv = jvp(out_grad, (z,), (jv,))
            (g,) = pullback(hjv)
            return torch.cat([g[n].reshape(-1) for n in names])

        if V.shape[0] == 1:
            return product(V[0])[None]
        return vmap(product)(V)


class GGNOperator(DataOperator):
    """The generalised Gauss-Newton matrix G = c·Σ_b (n_b/N)·J_bᵀ ∇²ℓ_b J_b (+ decay term).

    Takes `DataOperator`'s arguments (the same batches, BN mode, units, decay and sharding as a
    `HessianOperator` given the same ones). See the module docstring for BN in batch mode.
    """

    matrix = "ggn"
    title = "Gauss-Newton matrix"

    def batch_product(self, x: torch.Tensor, y: torch.Tensor, weight: float, V: torch.Tensor) -> torch.Tensor:
        return ggn_block(self.model, self.param_names, self._params, self.layout.split, x, y, self.loss_fn,
                         weight, V)

    def class_means(self) -> LowRankOperator:
        """Papyan's class-means term G_cm of G (softmax cross-entropy), as a rank ≤ C operator.

        With H_i = diag(p_i) − p_i p_iᵀ = A_i A_iᵀ, A_i = diag(√p_i) − p_i √p_iᵀ, G = (c/N)·Σ_i Φ_i Φ_iᵀ
        for the per-example factors Φ_i = J_iᵀ A_i (dim × C); column k of Φ_i is −√p_ik times the
        gradient of example i's loss had its label been k. The class means δ_c = mean over the n_c
        examples of class c of column c of Φ_i give G_cm = c·Σ_c (n_c/N)·δ_c δ_cᵀ (Papyan 2020's
        class term; the cross-class term, rank ≤ C(C−1), uses the columns k ≠ c, and the within-class
        remainder the deviations from the means). G − G_cm is PSD. One pass, C vjps per batch;
        the softmax output Hessian is assumed (true for cross-entropy with or without label smoothing).
        BN in batch mode: the J_i are taken in their batches (module docstring). No decay term.
        """
        sums: torch.Tensor | None = None
        counts: torch.Tensor | None = None
        with self._session():
            for (x, y), _ in self._local_batches():
                s, n = _class_sums(self.model, self.param_names, self._params, x, y)
                sums, counts = (s, n) if sums is None else (sums + s, counts + n)
        if sums is None:  # a rank without batches contributes zeros to the reduction
            c = self._num_classes()
            sums = torch.zeros(c, self.dim, dtype=self.dtype, device=self.device)
            counts = torch.zeros(c, dtype=self.dtype, device=self.device)
        packed = self._sum_over_ranks(torch.cat([sums, counts[:, None]], 1)).to(torch.float64)
        sums, counts = packed[:, :-1], packed[:, -1]
        # c·Σ_c (n_c/N)·δ_c δ_cᵀ with δ_c = S_c/n_c  ->  rows S_c·sqrt(c/(N·n_c)); empty classes drop out
        keep = counts > 0
        factor = sums[keep] * torch.sqrt(self.scale / (self.num_samples * counts[keep]))[:, None]
        self.passes += 1
        return LowRankOperator(factor.cpu())

    def _num_classes(self) -> int:
        x, _ = next(iter(self.batches()))
        with torch.no_grad(), bn_mode_ctx(self.model, self.bn_mode):
            return int(self.model(x).shape[1])


def _class_sums(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor], x: torch.Tensor,
                y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, dim) S_c = Σ_{i in class c} J_iᵀ A_i e_c over one batch, and the (C,) class counts."""
    primals = {n: p.detach() for n, p in zip(names, params)}
    with torch.no_grad():
        z, pullback = vjp(lambda p: functional_call(model, p, (x,), strict=False), primals)
        p = torch.softmax(z, dim=1)
        C = z.shape[1]
        onehot = torch.nn.functional.one_hot(y, C).to(z.dtype)
        # A_i e_{y_i} = √p_{i,y_i}·(e_{y_i} − p_i): row i of the cotangent, put under its class
        u = torch.sqrt((p * onehot).sum(1, keepdim=True)) * (onehot - p)
        cot = onehot.T[:, :, None] * u[None]  # (C, n, C): class c keeps the rows of its examples

        def pull(c: torch.Tensor) -> torch.Tensor:
            (g,) = pullback(c)
            return torch.cat([g[n].reshape(-1) for n in names])

        return vmap(pull)(cot), onehot.sum(0)


class ResidualOperator(DataOperator):
    """R = H − G: the Hessian's part from the network's own curvature (see the module docstring).

    Takes `HessianOperator`'s arguments (its method and graph cache serve the H part); the decay
    term, in both H and G, cancels and is left out.
    """

    matrix = "residual"
    title = "residual H - G"

    def __init__(self, model: nn.Module, batches: Batches, *, loss_fn: LossFn, bn_mode: str,
                 weight_decay: float = 0.0, method: str = "double_backward", cache_graphs: bool | str = "auto",
                 cache_budget: float | None = None, **common: Any) -> None:
        super().__init__(model, batches, loss_fn=loss_fn, bn_mode=bn_mode, **common)
        # the two parts over this operator's very batches, shard and units, without the decay term
        parts = {**common, "batch_size": self.batch_size, "process_group": self._group, "weight_decay": 0.0}
        self.hessian = HessianOperator(model, batches, loss_fn=loss_fn, bn_mode=bn_mode, method=method,
                                       cache_graphs=cache_graphs, cache_budget=cache_budget, **parts)
        self.ggn = GGNOperator(model, batches, loss_fn=loss_fn, bn_mode=bn_mode, **parts)
        self.hessian.quiet = self.quiet
        self.weight_decay_ignored = float(weight_decay)

    @property
    def quiet(self) -> bool:
        return self.__dict__.get("_quiet", True)

    @quiet.setter
    def quiet(self, value: bool) -> None:  # the H part shows the progress of its graph building
        self._quiet = value
        if "hessian" in self.__dict__:
            self.hessian.quiet = value

    def _describe_extra(self) -> dict[str, Any]:
        return {**self.hessian._describe_extra(), "weight_decay_cancels": self.weight_decay_ignored}

    def local_products(self, V: torch.Tensor) -> torch.Tensor:
        return self.hessian.local_products(V) - self.ggn.local_products(V)
