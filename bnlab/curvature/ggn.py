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

`ResidualOperator` is R = H − G: the curvature that comes from the network's second derivatives
weighted by the loss's gradient (small where the fit is good; no decay term, it cancels). It is the
Hessian of the loss linearised in the logits, ℓ(z₀) + ⟨∇ℓ(z₀), z − z₀⟩, so one Hessian product per
batch gives it (one forward, shared by every vector of a block, and the Hessian's graph cache).
`GGNOperator.class_means()` and `.cross_class_means()` are Papyan's class-means term (rank ≤ C) and
cross-class term (rank ≤ C(C−1)) of G, see their docstrings.

References: Sagun et al. 2017 (arXiv:1706.04454); Papyan 2019 (arXiv:1901.08244); Papyan 2020,
"Traces of class/cross-class structure pervade deep learning spectra" (arXiv:2008.11865, JMLR).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp, vjp, vmap

from ..bnmode import bn_mode as bn_mode_ctx
from .base import Batches, DataOperator
from .hvp import LossFn
from .linop import LowRankOperator
from .operator import HessianOperator

MATRICES = ("hessian", "ggn", "residual")


def _logits_map(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor], x: torch.Tensor
                ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], Callable[..., torch.Tensor],
                           dict[str, torch.Tensor]]:
    """One batch's logits as a function of the selected parameters, linearised once: (z, u -> flat J_bᵀ u,
    the function itself, its primals). Call under no_grad: the parameters outside the selection enter
    through the model itself (as in `func_block`), the transforms still differentiate."""
    primals = {n: p.detach() for n, p in zip(names, params)}

    def logits_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(model, p, (x,), strict=False)

    z, pullback = vjp(logits_of, primals)

    def pull(u: torch.Tensor) -> torch.Tensor:
        (g,) = pullback(u)
        return torch.cat([g[n].reshape(-1) for n in names])

    return z, pull, logits_of, primals


def ggn_block(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor],
              split: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
              loss_fn: LossFn, weight: float, V: torch.Tensor) -> torch.Tensor:
    """weight · J_bᵀ ∇²ℓ_b J_b V for the rows of V (m, dim): jvp, output Hessian, vjp; vmapped over rows."""
    with torch.no_grad():
        z, pull, logits_of, primals = _logits_map(model, names, params, x)
        out_grad = grad(lambda z: loss_fn(z, y) * weight)

        def product(v: torch.Tensor) -> torch.Tensor:
            _, jv = jvp(logits_of, (primals,), (dict(zip(names, split(v))),))
            _, hjv = jvp(out_grad, (z,), (jv,))
            return pull(hjv)

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
        class term). With the cross-class term (`cross_class_means`) and the within-class remainder
        (the columns' deviations from their class means) it sums to G; G − G_cm is PSD. One pass, C
        vjps per batch; the softmax output Hessian is assumed (true for cross-entropy with or without
        label smoothing). BN in batch mode: the J_i are taken in their batches (module docstring).
        No decay term.
        """
        return self._mean_term(cross=False)

    def cross_class_means(self) -> LowRankOperator:
        """Papyan's cross-class term c·Σ_c (n_c/N)·Σ_{k≠c} δ_ck δ_ckᵀ (rank ≤ C(C−1)), δ_ck the class-c mean
        of column k of Φ_i (see `class_means`). One pass, C(C−1) vjps per batch. No decay term."""
        return self._mean_term(cross=True)

    def _mean_term(self, cross: bool) -> LowRankOperator:
        sums: torch.Tensor | None = None
        counts: torch.Tensor | None = None
        with self._session():
            for (x, y), _ in self._local_batches():
                s, n = _factor_sums(self.model, self.param_names, self._params, x, y, cross)
                sums, counts = (s, n) if sums is None else (sums + s, counts + n)
        if sums is None:  # a rank without batches contributes zeros to the reduction
            c = self._num_classes()
            rows = c * (c - 1) if cross else c
            sums = torch.zeros(rows, self.dim, dtype=self.dtype, device=self.device)
            counts = torch.zeros(rows, dtype=torch.float64, device=self.device)
        # the counts are float64 (exact; the model's dtype rounds them, bfloat16 above 256): so is the block, on
        # every rank (cat promotes the sums)
        packed = self._sum_over_ranks(torch.cat([sums, counts[:, None]], 1)).to(torch.float64)
        sums, counts = packed[:, :-1], packed[:, -1]
        # c·Σ (n_c/N)·δ δᵀ with δ = S/n_c  ->  rows S·sqrt(c/(N·n_c)); empty classes drop out
        keep = counts > 0
        factor = sums[keep] * torch.sqrt(self.scale / (self.num_samples * counts[keep]))[:, None]
        self.passes += 1
        return LowRankOperator(factor.cpu())

    def _num_classes(self) -> int:
        x, _ = next(iter(self.batches()))
        with torch.no_grad(), bn_mode_ctx(self.model, self.bn_mode):
            return int(self.model(x).shape[1])


def _factor_sums(model: nn.Module, names: Sequence[str], params: Sequence[torch.Tensor], x: torch.Tensor,
                 y: torch.Tensor, cross: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums over one batch of the factor columns Φ_i e_k = J_iᵀ A_i e_k of the examples of class c, one row
    per pair (c, k): k = c (C rows, class-major) or every k ≠ c (C(C−1) rows); and the count n_c of each row
    (float64: exact in any model dtype)."""
    with torch.no_grad():
        z, pull, _, _ = _logits_map(model, names, params, x)
        p = torch.softmax(z, dim=1)
        C = z.shape[1]
        onehot = torch.nn.functional.one_hot(y, C).to(z.dtype)
        # A_i[j, k] = √p_ik·(δ_jk − p_ij): column k is √p_ik·(e_k − p_i)
        A = (torch.eye(C, dtype=z.dtype, device=z.device) - p[:, :, None]) * torch.sqrt(p)[:, None, :]
        eye = torch.eye(C, dtype=torch.bool, device=z.device)
        c_idx, k_idx = torch.nonzero(~eye if cross else eye, as_tuple=True)
        # cotangent of pair (c, k): row i is A_i e_k for the examples of class c, 0 elsewhere
        cot = onehot.T[c_idx][:, :, None] * A[:, :, k_idx].permute(2, 0, 1)
        return vmap(pull, chunk_size=C)(cot), onehot.sum(0, dtype=torch.float64)[c_idx]


def linearised(loss_fn: LossFn) -> LossFn:
    """loss_fn linearised in the logits at their current values: ℓ(z₀) + ⟨∇ℓ(z₀), z − z₀⟩ (z₀ = z, detached).

    The same value and gradient in θ as the loss, and its Hessian in θ is the residual
    R_b = Σ_{i,k} ∂ℓ_b/∂z_ik · ∇²z_ik (the output Hessian's part, G_b, is gone)."""
    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z0 = z.detach()
        return _value_and_output_gradient(loss_fn, z0, y, (z - z0))
    return loss


def _value_and_output_gradient(loss_fn: LossFn, z0: torch.Tensor, y: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """ℓ(z₀) + ⟨∇ℓ(z₀), dz⟩, ∇ℓ(z₀) by plain autograd, or by torch.func inside its transforms (the "func"
    route), where plain autograd is refused; plain autograd also works under the graph cache's
    saved-tensor hooks, which torch.func refuses."""
    try:
        leaf = z0.requires_grad_(True)
    except RuntimeError:  # inside a torch.func transform
        r, value = grad_and_value(lambda t: loss_fn(t, y))(z0)
    else:
        with torch.enable_grad():
            value = loss_fn(leaf, y)
            (r,) = torch.autograd.grad(value, leaf)
        value = value.detach()
    return value + (r * dz).sum()


class ResidualOperator(HessianOperator):
    """R = H − G: the Hessian's part from the network's own curvature (see the module docstring).

    The Hessian of the loss linearised in the logits (`linearised`), so one double-backward (or
    forward-over-reverse) product per batch gives R V directly, with `HessianOperator`'s method and
    graph cache; `loss()` and `gradient()` are the loss's own. Takes `HessianOperator`'s arguments;
    the decay term, in both H and G, cancels and is left out.
    """

    matrix = "residual"
    title = "residual H - G"

    def __init__(self, model: nn.Module, batches: Batches, *, loss_fn: LossFn, bn_mode: str,
                 weight_decay: float = 0.0, **hessian: Any) -> None:
        super().__init__(model, batches, loss_fn=linearised(loss_fn), bn_mode=bn_mode, **hessian)
        self.weight_decay_ignored = float(weight_decay)

    def _describe_extra(self) -> dict[str, Any]:
        return {**super()._describe_extra(), "weight_decay_cancels": self.weight_decay_ignored}
