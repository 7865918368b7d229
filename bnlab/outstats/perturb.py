"""The post's perturbation test: a weight step of ~1% of ‖θ‖ along the gradient of one class's
mean logit moves many predictions to that class when the model lacks BN (or has it frozen); a
random step of the same norm does not. The model itself is never modified: perturbed weights
are passed to `torch.func.functional_call`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..bnmode import bn_mode
from ..errors import BnlabError
from .gradients import Batches, trainable_parameters


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(model)[1]])


@torch.no_grad()
def evaluate_shifted(model: nn.Module, batches: Batches, mode: str, num_classes: int,
                     offset: torch.Tensor | None = None) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(fraction of inputs predicted as each class, mean cross-entropy, mean centred logits) with
    weights θ + offset."""
    names, params = trainable_parameters(model)
    replaced = None
    if offset is not None:
        replaced, start = {}, 0
        for n, p in zip(names, params):
            replaced[n] = p.detach() + offset[start:start + p.numel()].view_as(p).to(p.dtype)
            start += p.numel()
    counts = torch.zeros(num_classes, dtype=torch.float64)
    logit_sum = torch.zeros(num_classes, dtype=torch.float64)
    loss, n_total = 0.0, 0
    with bn_mode(model, mode):
        for x, y in batches:
            z = model(x) if replaced is None else functional_call(model, replaced, (x,))
            counts += torch.bincount(z.argmax(dim=1), minlength=num_classes).double().cpu()
            loss += F.cross_entropy(z.double(), y, reduction="sum").item()
            logit_sum += (z - z.mean(dim=1, keepdim=True)).double().sum(dim=0).cpu()
            n_total += y.shape[0]
    return counts / n_total, loss / n_total, logit_sum / n_total


def perturbation_table(model: nn.Module, batches: Batches, mean_grads: torch.Tensor, *, mode: str,
                       delta: float = 0.01, seed: int = 0, classes: Sequence[int] | None = None) -> dict:
    """Per class c: predicted-as-c fraction and loss before, after a step δ‖θ‖ along the normalised
    gradient of class c's mean logit, and after a random step of the same norm; and the shift of
    class c's mean centred logit under each step.

    `mean_grads` (C, P) are the mean-logit gradients (rows in class order, or as listed in `classes`).
    """
    if delta <= 0:
        raise BnlabError(f"--delta must be positive, got {delta}")
    classes = list(classes) if classes is not None else list(range(mean_grads.shape[0]))
    theta = flat_parameters(model)
    num_classes = _num_classes(model, batches, mode)
    step = delta * theta.double().norm().item()
    frac0, loss0, mean0 = evaluate_shifted(model, batches, mode, num_classes)
    gen = torch.Generator(device="cpu").manual_seed(seed)  # drawn on the CPU: the same directions on any device
    rows = []
    for c, g in zip(classes, mean_grads):
        g = g.to(theta.device).double()
        if g.norm() == 0:
            raise BnlabError(f"the mean gradient of class {c} is zero; no direction to step along")
        frac_g, loss_g, mean_g = evaluate_shifted(model, batches, mode, num_classes, g / g.norm() * step)
        r = torch.randn(theta.numel(), generator=gen, dtype=torch.float64).to(theta.device)
        frac_r, loss_r, mean_r = evaluate_shifted(model, batches, mode, num_classes, r / r.norm() * step)
        rows.append({"class": c, "frac_before": frac0[c].item(), "frac_after_grad": frac_g[c].item(),
                     "frac_after_random": frac_r[c].item(), "loss_before": loss0, "loss_after_grad": loss_g,
                     "loss_after_random": loss_r, "mean_logit_shift_grad": (mean_g[c] - mean0[c]).item(),
                     "mean_logit_shift_random": (mean_r[c] - mean0[c]).item()})
    return {"delta": delta, "step_norm": step, "theta_norm": theta.double().norm().item(), "rows": rows}


@torch.no_grad()
def _num_classes(model: nn.Module, batches: Batches, mode: str) -> int:
    with bn_mode(model, mode):
        return int(model(batches[0][0]).shape[1])  # a whole batch: ghost BN needs its full size
