"""Every finding `bnlab reproduce` decides, in report order: one module per finding (bnlab/findings/f*.py),
each declaring a `FINDING` (`bnlab.findings.base.FindingDef`). Everything keyed by finding id elsewhere (the
spec table, the stages each finding reads, the evaluators, the figures, docs/findings.md's table) is a view
of this list, so adding a finding is one module and one line here.

Thresholds are fixed in each module once, loose enough for CPU-scale nets and tight enough that a wrong
implementation fails; they are never adapted to a scale. Eigenvalues are in mean-loss units unless
"batch-summed" (the batch-norm post's: loss summed over a batch of 256). mu = momentum, eta = lr,
lambda = weight decay (torch SGD: decay added to the gradient).
"""
from __future__ import annotations

from . import (
    f1_invariance,
    f2_equilibrium,
    f3_lars,
    f4_product,
    f4b_exp_lr,
    f5_collapse,
    f6_lr_stress,
    f7_mean_gradients,
    f8_perturbation,
    f9_sharpness,
    f10_overlap,
    f11_projection,
    f12_edge_of_stability,
    f13_gauss_newton,
)
from .base import FindingDef
from .posts import PostNumber
from .record import Finding

REGISTRY: tuple[FindingDef, ...] = tuple(m.FINDING for m in (
    f1_invariance, f2_equilibrium, f3_lars, f4_product, f4b_exp_lr, f5_collapse, f6_lr_stress, f7_mean_gradients,
    f8_perturbation, f9_sharpness, f10_overlap, f11_projection, f12_edge_of_stability, f13_gauss_newton))

BY_ID: dict[str, FindingDef] = {f.id: f for f in REGISTRY}
IDS: tuple[str, ...] = tuple(BY_ID)
FINDINGS: tuple[Finding, ...] = tuple(f.spec for f in REGISTRY)
FINDING_STAGES: dict[str, tuple[str, ...]] = {f.id: f.stages for f in REGISTRY}
POST_NUMBERS: dict[str, tuple[PostNumber, ...]] = {f.id: f.posts for f in REGISTRY if f.posts}


def in_group(group: str) -> tuple[str, ...]:
    """The ids of one post's findings (`bnlab reproduce weight-decay|batch-norm`), in report order."""
    return tuple(f.id for f in REGISTRY if f.spec.group == group)
