"""Exact float64 experiments on a net whose every trainable parameter is scale-invariant (the simulations
behind findings F1 and F4b; `bnlab reproduce` runs them as its `exact` stage).

The net is DavidNet with BN's affine fixed (gamma = 1, beta = 0), BN's eps set to 1e-30 (torch refuses 0; any channel's
variance is ~1e-2..1, so eps is below float64 resolution) and the classifier
frozen: every trainable tensor is then a conv followed by batch-statistics BN, so the loss is exactly
invariant to each tensor's scale (eps would break it at the eps/variance level, which is what F1 measures
on the real, trained net). Data: the synthetic task, fixed batches, the same sequence for every run.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataSpec
from ..data import eval_batches, load_data
from ..models import ModelSpec, build_model
from ..norms import batch_norm_layers


def invariant_net(width: int = 4, seed: int = 0) -> nn.Module:
    """A float64 DavidNet in which every trainable tensor is exactly scale-invariant (see module docs)."""
    torch.manual_seed(seed)
    model = build_model(ModelSpec(model="davidnet", width=width, norm="bn_fixed_affine")).double()
    for _, bn in batch_norm_layers(model):
        bn.eps = 1e-30
    model.classifier.weight.requires_grad_(False)
    return model.train()


def _batches(n: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = load_data(DataSpec(dataset="synthetic", synthetic_train=n, synthetic_test=10), "cpu", seed=seed)
    return [(x.double(), y) for x, y in eval_batches(data.train_x, data.train_y, batch_size, data)]


def _cycle(batches: list[Any], steps: int) -> Iterator[Any]:
    for t in range(steps):
        yield t, batches[t % len(batches)]


def _params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def pythagoras_check(*, width: int = 4, steps: int = 100, lr: float = 0.5, n: int = 128, batch_size: int = 16,
                     seed: int = 0) -> dict[str, Any]:
    """Plain SGD (mu = 0, lambda = 0) on the invariant net: per step and tensor, the Pythagorean residual
    |‖w'‖² - ‖w‖² - eta²‖g‖²| / (eta²‖g‖²) and the norm increment ‖w'‖² - ‖w‖² (relative to ‖w‖²)."""
    model = invariant_net(width, seed)
    params = _params(model)
    batches = _batches(n, batch_size, seed)
    opt = torch.optim.SGD([p for _, p in params], lr=lr, momentum=0.0, weight_decay=0.0)
    worst_res, min_inc, worst_cos = 0.0, float("inf"), 0.0
    rel_steps = []
    for _, (x, y) in _cycle(batches, steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        before = [p.detach().clone() for _, p in params]
        g2 = [float(p.grad.pow(2).sum()) for _, p in params]
        for (_, p), w in zip(params, before):
            worst_cos = max(worst_cos, abs(float((w * p.grad).sum())) / float(w.norm() * p.grad.norm()))
        opt.step()
        for (_, p), w, gg in zip(params, before, g2):
            n0, n1 = float(w.pow(2).sum()), float(p.detach().pow(2).sum())
            step2 = lr * lr * gg
            worst_res = max(worst_res, abs(n1 - n0 - step2) / step2)
            min_inc = min(min_inc, (n1 - n0) / n0)
            rel_steps.append((step2 / n0) ** 0.5)
    return {"dtype": "float64", "width": width, "steps": steps, "lr": lr, "momentum": 0.0, "weight_decay": 0.0,
            "images": n, "batch_size": batch_size,
            "tensors": len(params), "max_rel_residual": worst_res, "min_norm_increment": min_inc,
            "max_abs_cos_wg": worst_cos, "median_rel_step": float(torch.tensor(rel_steps).median())}


def _run(model: nn.Module, batches: list[Any], steps: int, lr_of_step: Any, wd: float) -> list[list[torch.Tensor]]:
    """SGD (mu = 0) for `steps` steps; returns the per-tensor unit directions after every step."""
    params = [p for _, p in _params(model)]
    opt = torch.optim.SGD(params, lr=lr_of_step(0), momentum=0.0, weight_decay=wd)
    dirs = []
    for t, (x, y) in _cycle(batches, steps):
        for group in opt.param_groups:
            group["lr"] = lr_of_step(t)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        dirs.append([(p.detach() / p.detach().norm()).clone() for p in params])
    return dirs


def exp_lr_equivalence(*, width: int = 4, steps: int = 200, lr: float = 0.1, wd: float = 0.02, n: int = 128,
                       batch_size: int = 16, seed: int = 0) -> dict[str, Any]:
    """SGD(lr, wd) vs SGD(lr (1 - lr wd)^(-2t-1), 0) from the same start on the same batches (Li & Arora
    2019): the largest per-tensor distance between their unit directions over all steps. The control run
    (constant lr, no decay) shows how far apart directions get when the equivalence does not hold.

    Rounding differences between the two runs grow with the dynamics' sensitivity to initial conditions:
    at large effective lr (tiny nets on a few batches, lr wd >~ 5e-3) they reach 1e-2 within 200 steps
    (measured at width 2 on two batches), so the defaults keep lr wd = 2e-3 (lr grows 2.2x).
    """
    batches = _batches(n, batch_size, seed)
    a = 1.0 - lr * wd
    runs = {}
    for name, lr_of_step, decay in (("wd", lambda t: lr, wd), ("exp", lambda t: lr * a ** (-2 * t - 1), 0.0),
                                    ("control", lambda t: lr, 0.0)):
        runs[name] = _run(invariant_net(width, seed), batches, steps, lr_of_step, decay)

    def per_step(other: str) -> list[float]:
        return [max(float((u - v).norm()) for u, v in zip(du, dv)) for du, dv in zip(runs["wd"], runs[other])]

    exp, control = per_step("exp"), per_step("control")
    return {"dtype": "float64", "width": width, "steps": steps, "lr": lr, "weight_decay": wd, "momentum": 0.0,
            "images": n, "batch_size": batch_size,
            "lr_growth": a ** (-2 * (steps - 1)), "max_direction_diff": max(exp),
            "control_max_direction_diff": max(control), "per_step_direction_diff": exp,
            "per_step_control_diff": control}
