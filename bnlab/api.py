"""One-call entry points for notebooks: each takes a checkpoint (path or loaded) or a run folder plus
the same options as its command, and returns the result object the command writes.

    import bnlab
    h = bnlab.hessian("runs/bn/final.pt", top_k=10, bn_mode="batch", num_samples=1280)
    h.eigenvalues, h.record["settings"]["units"]
    s = bnlab.output_stats("runs/frozen.pt", eigvecs="results/hess_frozen", project=True, num_samples=1280)
    s.summary["eigen"]["overlap_full"]
    d = bnlab.analyse_dynamics("runs/bn")
    [(r.param, r.angle, r.angle_pred) for r in d.report.layers]
    h.write("results/hess_bn")          # the same files `bnlab hessian --out` writes

Evaluation-set options (`num_samples`, `batch_size`, `bn_mode`, `eval_seed`, `data_dir`, `dtype`, `weights`)
go to `bnlab.context.EvalSpec`; everything else to the analysis's options dataclass. Every analysis
defaults to the same evaluation set (`bnlab.context.DEFAULT_NUM_SAMPLES` examples, eval_seed 0): give
the same evaluation options to `hessian` and `output_stats` (above, `num_samples=1280` to both) when one
uses the other's eigenvectors; `output_stats(eigvecs=...)` warns about, and records in
`summary["eigen"]["eval_set_mismatch"]`, every evaluation setting in which they differ. `write(folder)`
creates the folder.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Checkpoint
from .context import EvalSpec, build_context
from .curvature.hessian import HessianOptions, HessianResult, run_hessian
from .dynamics.options import DynamicsOptions, DynamicsResult, run_dynamics
from .outstats.run import OutstatsOptions, OutstatsResult, run_outstats

_EVAL_KEYS = {f.name for f in dataclasses.fields(EvalSpec)}


def _split(options: dict[str, Any]) -> tuple[EvalSpec, dict[str, Any]]:
    spec = EvalSpec(**{k: options.pop(k) for k in list(options) if k in _EVAL_KEYS})
    for key in ("params", "stats", "channels", "hist_layers", "layers"):  # lists are fine in notebooks
        if isinstance(options.get(key), list):
            options[key] = tuple(options[key])
    return spec, options


def hessian(ckpt: str | os.PathLike | Checkpoint, *, device: str | torch.device = "auto", quiet: bool = True,
            **options: Any) -> HessianResult:
    """Top eigenpairs (and optionally density/trace) of a checkpoint's loss Hessian: `bnlab hessian`.

    Options: matrix ("hessian", "ggn": the Gauss-Newton matrix with its class-means term, "residual":
    H - G), top_k, which, tol, eigensolver, ncv, max_hvps, verify, density, density_probes,
    density_steps, trace, trace_matvecs, seed, warm_start, params, loss_scale, weight_decay_term,
    hvp_method, cache_graphs, plus the evaluation-set options (see module docs).
    """
    spec, rest = _split(dict(options))
    opts = HessianOptions(eval=spec, **rest)
    opts.validate()
    return run_hessian(build_context(ckpt, spec, device=device), opts, quiet=quiet)


def output_stats(ckpt: str | os.PathLike | Checkpoint, *, device: str | torch.device = "auto",
                 quiet: bool = True, **options: Any) -> OutstatsResult:
    """Output-statistic gradients, perturbations, spans and projected Hessian: `bnlab outstats`.

    Options: stats, module, channels, moments, delta, eigvecs (a hessian output folder), num_eigs,
    project, loss_scale, tol, seed, histograms, hist_layers, plus the evaluation-set options.
    """
    spec, rest = _split(dict(options))
    if isinstance(rest.get("eigvecs"), Path):
        rest["eigvecs"] = str(rest["eigvecs"])
    opts = OutstatsOptions(eval=spec, **rest)
    opts.validate()
    result = run_outstats(build_context(ckpt, spec, device=device), opts, quiet=quiet)
    for text in result.warnings:  # e.g. eigenvectors of a Hessian on another evaluation set
        warnings.warn(text, stacklevel=2)
    return result


def analyse_dynamics(run_dir: str | os.PathLike, **options: Any) -> DynamicsResult:
    """Measured vs predicted weight-decay equilibrium per layer of a run: `bnlab dynamics`.

    Options: layers, channels, window, eq_tol, cos_tol, checkpoint_check.
    """
    _, rest = _split(dict(options))
    return run_dynamics(run_dir, DynamicsOptions(**rest))
