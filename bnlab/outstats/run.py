"""`bnlab outstats` as a function: options → `run_outstats(context, options)` → `OutstatsResult.write(out)`.

The evaluation set, BN mode and (when needed) the Hessian come from the analysis context, so
`bnlab hessian` and `bnlab outstats` with the same evaluation options read identical batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import validate as check
from ..bnmode import resolve_bn_mode
from ..context import AnalysisContext, EvalSpec
from ..curvature.hessian import MAX_HVPS, loss_scale_opt, solve_with_progress, tol_opt
from ..curvature.linop import ProjectedOperator
from ..curvature.operator import LOSS_SCALES
from ..curvature.source import curvature_operator
from ..errors import BnlabError
from ..io.eigvecs import Eigvecs, read_eigvecs
from ..io.folder import result_folder
from ..io.jsonfile import write_json
from ..io.result import write_files
from ..io.torchfile import atomic_torch_save
from ..models import build_model
from ..options import opt
from .activations import activation_stats, default_layers
from .gradients import check_stats, stat_gradients, trainable_parameters
from .layers import per_layer_sq_norms
from .moments import MOMENTS
from .perturb import perturbation_table
from .subspace import orthonormal_basis, overlaps, random_overlaps
from .target import Target

SUMMARY_FILE = "outstats.json"
TENSORS_FILE = "outstats.pt"


@dataclass(frozen=True)
class OutstatsOptions:
    """What `bnlab outstats` computes (the evaluation set is `eval`)."""

    eval: EvalSpec = field(default_factory=EvalSpec)
    stats: tuple[str, ...] = opt(("mean", "var", "skew"), help="Per-channel statistics: any of mean,var,skew (bases "
                                 "are built in that order).")
    module: str = opt("logits", help="logits (centred over classes), logits_raw, or a module name (prep, layer1, "
                      "layer3_res.b, ...).")
    channels: tuple[int, ...] | None = opt(None, help="Comma-separated channels of the module.", domain=">= 0",
                                           default_text="all")
    moments: str = opt("per-batch", choices=MOMENTS, help="per-batch: statistics within each fixed batch, averaged "
                       "(the post); pooled: over the whole set.")
    delta: float = opt(0.01, help="Perturbation step.", unit="relative to ‖θ‖", domain="(0, 1]")
    eigvecs: str | None = opt(None, path=True, help="A `bnlab hessian` output dir (or its eigvecs.pt): overlaps of "
                              "its eigenvectors with the spans.")
    num_eigs: int = opt(0, help="Without --eigvecs: compute this many top Hessian eigenvectors here. With "
                        "--project: how many projected eigenvalues (0: as many as eigenvectors, at least 1).",
                        domain=">= 0")
    project: bool = opt(False, help="Top eigenvalues of (I-P)H(I-P), P = projector on the full span.")
    loss_scale: str = loss_scale_opt()
    tol: float = tol_opt()
    seed: int = opt(0, help="Seed of random directions and probes.", domain="0..2^32-1")
    histograms: bool = opt(True, flag="--no-histograms", help="Skip activation histograms (at init and now).")
    hist_layers: tuple[str, ...] | None = opt(None, help="Comma-separated layers for activation histograms.",
                                              default_text="every parameterised top-level layer and logits")
    project_k: int = opt(0, help="With --project: eigenpairs of the projected Hessian (0: as many as the "
                         "eigenvectors given, or --num-eigs).", domain=">= 0")

    def validate(self) -> None:
        self.eval.validate()
        check_stats(self.stats)
        check.choice("--moments", self.moments, MOMENTS)
        check.in_range("--delta", self.delta, 0.0, 1.0, low_open=True)
        check.integer("--num-eigs", self.num_eigs, 0, MAX_HVPS)
        check.integer("--project-k", self.project_k, 0, MAX_HVPS)
        if not self.module.strip():
            raise BnlabError("--module must name the output to take statistics of (logits, logits_raw or a module)")
        check.choice("--loss-scale", self.loss_scale, LOSS_SCALES)
        check.in_range("--tol", self.tol, 0.0, 1.0, low_open=True, high_open=True)
        check.seed("--seed", self.seed)
        if self.channels is not None:
            for c in self.channels:
                check.integer("--channels", c, 0)


@dataclass
class OutstatsResult:
    summary: dict[str, Any]  # what outstats.json holds
    tensors: dict[str, Any]  # what outstats.pt holds (gradients, values, activations)

    @property
    def warnings(self) -> list[str]:
        """What the reader of these numbers must know (eigenvectors from another evaluation set)."""
        eigen = self.summary.get("eigen") or {}
        mismatch = eigen.get("eval_set_mismatch")
        return [mismatch_warning(mismatch, eigen["source"])] if mismatch else []

    def write(self, out: str | Path) -> list[Path]:
        out = result_folder(out)
        return write_files([lambda: atomic_torch_save(self.tensors, out / TENSORS_FILE),
                            lambda: write_json(out / SUMMARY_FILE, self.summary)])


def check_eigvecs_match(ev: Eigvecs, op_settings: dict[str, Any], param_names: list[str], source: str) -> None:
    """Eigenvectors from `bnlab hessian` must belong to this checkpoint and parameter layout."""
    theirs, ours = ev.settings.get("checkpoint_sha256"), op_settings.get("checkpoint_sha256")
    if not theirs:  # without it nothing shows that they belong to this checkpoint
        raise BnlabError(f"the eigenvectors in {source} record no checkpoint_sha256 (not written by `bnlab "
                         "hessian`, or edited); rerun `bnlab hessian` on this checkpoint")
    if ours and theirs != ours:
        raise BnlabError(f"the eigenvectors in {source} were computed for another checkpoint "
                         f"({ev.settings.get('checkpoint', '?')}); rerun `bnlab hessian` on this one")
    if list(ev.param_names) != list(param_names):
        raise BnlabError(f"the eigenvectors in {source} are over other parameters than this model's "
                         f"(hessian --params {ev.settings.get('params')}); overlaps need all trainable parameters")


# What makes two evaluation sets the same data seen the same way (where the files lie may differ).
EVAL_SET_KEYS = ("dataset", "data_subset", "num_samples", "batch_size", "eval_seed", "bn_mode", "dtype",
                 "label_smoothing")


def eval_set_mismatch(hessian_settings: dict[str, Any], ours: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The evaluation-set settings in which eigenvectors from `bnlab hessian` differ from this analysis's:
    {key: {"hessian": theirs, "outstats": ours}} (empty: the same set). Keys either side lacks are not compared."""
    return {k: {"hessian": hessian_settings[k], "outstats": ours[k]} for k in EVAL_SET_KEYS
            if k in hessian_settings and k in ours and hessian_settings[k] != ours[k]}


def mismatch_warning(mismatch: dict[str, dict[str, Any]], source: str) -> str:
    """One line saying how the eigenvectors' evaluation set differs, and how to make them agree."""
    diff = ", ".join(f"{k} {v['hessian']} vs {v['outstats']}" for k, v in mismatch.items())
    return (f"the eigenvectors in {source} were computed on another evaluation set ({diff}; hessian vs outstats): "
            "overlaps compare vectors of two different Hessians; pass the same evaluation options to both")


def check_inputs(ctx: AnalysisContext, opts: OutstatsOptions) -> Eigvecs | None:
    """Everything that can be refused before the computation; returns the eigenvectors to use."""
    opts.validate()
    Target(opts.module, opts.channels).check(ctx.model)
    if opts.histograms and opts.hist_layers:
        modules = {n for n, _ in ctx.model.named_modules() if n}
        missing = [n for n in opts.hist_layers if n not in modules and n != "logits"]
        if missing:
            raise BnlabError(f"--hist-layers: no module(s) {', '.join(missing)} in this model; use logits or "
                             f"names such as {', '.join(default_layers(ctx.model))}")
    dim = sum(p.numel() for p in trainable_parameters(ctx.model)[1])
    if opts.num_eigs > dim:
        raise BnlabError(f"--num-eigs {opts.num_eigs} is larger than the Hessian's dimension ({dim} parameters)")
    if opts.eigvecs is None:
        return None
    ev = read_eigvecs(opts.eigvecs)
    check_eigvecs_match(ev, ctx.settings(), trainable_parameters(ctx.model)[0], str(opts.eigvecs))
    return ev


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_unchanged(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    changed = [k for k, v in snap.items() if not torch.equal(v, now[k])]
    if changed:  # a bug in bnlab, never a user error: say so loudly
        raise BnlabError(f"internal error: outstats changed the model ({', '.join(changed[:3])}); please report")


def _init_model(ctx: AnalysisContext, dtype: torch.dtype) -> torch.nn.Module:
    """The checkpoint's architecture freshly initialised from its run's seed (for 'at init' plots)."""
    torch.manual_seed(ctx.config.seed)
    return build_model(ctx.config.model).to(device=ctx.device, dtype=dtype)


def run_outstats(ctx: AnalysisContext, opts: OutstatsOptions, *, quiet: bool = True) -> OutstatsResult:
    """Everything `bnlab outstats` computes for the context's checkpoint; the model is unchanged."""
    ev = check_inputs(ctx, opts)
    snap = _snapshot(ctx.checkpoint.model)
    target = Target(opts.module, opts.channels)
    sg = stat_gradients(ctx.model, ctx.batch_list, stats=opts.stats, target=target, moments=opts.moments,
                        mode=ctx.bn_mode, quiet=quiet)
    summary, tensors = _gradient_summary(ctx, opts, sg, target)
    if target.is_logits and "mean" in sg.stats:
        summary["perturbation"] = perturbation_table(ctx.model, ctx.batch_list, sg.of("mean"), mode=ctx.bn_mode,
                                                     delta=opts.delta, seed=opts.seed, classes=sg.channels)
    basis_means, basis_all = _spans(sg, opts, summary, ctx.dtype)
    op = None
    if opts.project or (ev is None and opts.num_eigs > 0):  # the Hessian only when it is needed
        op = curvature_operator(ctx, "hessian", loss_scale=opts.loss_scale)
        op.quiet = quiet
    eig = _eigvecs(ev, op, opts, quiet)
    if eig is not None:
        mismatch = {} if ev is None else eval_set_mismatch(ev.settings, ctx.settings())
        summary["eigen"] = _eigen_overlaps(eig, basis_means, basis_all, mismatch)
    if opts.project:
        k = opts.project_k or (max(opts.num_eigs, 1) if eig is None else max(opts.num_eigs, eig[0].shape[0]))
        res = solve_with_progress(ProjectedOperator(op, basis_all), k, tol=opts.tol, seed=opts.seed, verify=False,
                                  desc="outstats: projected Hessian", quiet=quiet)
        summary["projected"] = {"k": k, "eigenvalues": res.eigenvalues.tolist(),
                                "converged": res.converged.tolist(), "hvps": res.hvp_count,
                                "span_dim": basis_all.shape[1], "loss_scale": opts.loss_scale}
    if opts.histograms:
        acts = _activations(ctx, opts)
        summary["channel_mean_share"] = {when: {n: layer["layer_mean_share"] for n, layer in a.items()}
                                         for when, a in acts.items()}
        tensors["activations"] = acts
    _check_unchanged(ctx.checkpoint.model, snap)
    return OutstatsResult(summary, tensors)


def _gradient_summary(ctx: AnalysisContext, opts: OutstatsOptions, sg: Any, target: Target
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The statistics, their gradients' norms and per-layer split: (summary, tensors) to start from."""
    flat = sg.flat()
    layers, sq = per_layer_sq_norms(flat, sg.param_names, sg.param_shapes)
    labels = sg.labels()
    settings = {k: v for k, v in vars(opts).items() if k != "eval"}
    summary: dict[str, Any] = {
        "settings": {**settings, **ctx.settings(), "stats": list(sg.stats),
                     "statistic_definition": _definition(opts.moments, target)},
        "channels": sg.channels,
        "values": {s: sg.values[i].tolist() for i, s in enumerate(sg.stats)},
        "grad_norms": {s: sg.grads[i].norm(dim=1).tolist() for i, s in enumerate(sg.stats)},
        "layers": layers,
        "layer_sq_norms": {lab: row.tolist() for lab, row in zip(labels, sq)},
        "layer_shares": {lab: (row / row.sum().clamp_min(1e-300)).tolist() for lab, row in zip(labels, sq)},
    }
    tensors: dict[str, Any] = {"grads": flat.float().cpu(), "labels": labels, "values": sg.values.cpu(),
                               "param_names": sg.param_names, "layer_sq_norms": sq.cpu()}
    return summary, tensors


def _spans(sg: Any, opts: OutstatsOptions, summary: dict[str, Any], model_dtype: torch.dtype
           ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Orthonormal bases of the means' span and of the full span; records their dimensions."""
    # Gradients carry the model dtype's rounding: a row whose remainder is below ~1000 eps of it is
    # dependent (e.g. the 10th centred-logit mean gradient, which sums with the others to zero).
    rtol = 1000 * torch.finfo(model_dtype).eps
    labels = sg.labels()
    basis_means = orthonormal_basis(sg.flat(["mean"]), rtol)[0] if "mean" in sg.stats else None
    basis_all, kept = orthonormal_basis(sg.flat(), rtol)
    summary["span"] = {"means_dim": None if basis_means is None else basis_means.shape[1],
                       "full_dim": basis_all.shape[1], "kept_rows": [labels[i] for i in kept], "rtol": rtol,
                       "random_overlap_full": random_overlaps(basis_all, 10, opts.seed).tolist(),
                       "random_overlap_expected": basis_all.shape[1] / basis_all.shape[0]}
    return basis_means, basis_all


def _eigen_overlaps(eig: tuple[torch.Tensor, torch.Tensor | None, str, dict], basis_means: torch.Tensor | None,
                    basis_all: torch.Tensor, mismatch: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Squared overlaps of each Hessian eigenvector with the spans (and where the vectors came from)."""
    vecs, vals, source, hsettings = eig
    if vecs.shape[1] != basis_all.shape[0]:
        raise BnlabError(f"eigenvectors have dimension {vecs.shape[1]}, this model {basis_all.shape[0]}: "
                         "were they computed for this checkpoint with all parameters?")
    out = {"source": source, "eigenvalues": None if vals is None else vals.tolist(),
           "hessian_settings": {k: hsettings.get(k) for k in ("bn_mode", "units", "num_samples", "batch_size",
                                                              "eval_seed", "data_subset", "loss_scale")},
           "eval_set_mismatch": mismatch,
           "overlap_full": overlaps(basis_all, vecs.T.to(basis_all.device)).tolist()}
    if basis_means is not None:
        out["overlap_means"] = overlaps(basis_means, vecs.T.to(basis_means.device)).tolist()
    return out


def _activations(ctx: AnalysisContext, opts: OutstatsOptions) -> dict[str, dict[str, Any]]:
    """Per-layer activation statistics of the checkpoint and of its architecture at initialisation."""
    model, mode = ctx.model, ctx.bn_mode
    hist_layers = list(opts.hist_layers) if opts.hist_layers else [*default_layers(model), "logits"]
    init = _init_model(ctx, next(model.parameters()).dtype)
    init_mode = resolve_bn_mode(init, None if mode == "none" else mode)
    return {"checkpoint": activation_stats(model, ctx.batch_list, hist_layers, mode=mode, seed=opts.seed),
            "init": activation_stats(init, ctx.batch_list, hist_layers, mode=init_mode, seed=opts.seed)}


def _eigvecs(ev: Eigvecs | None, op: Any, opts: OutstatsOptions, quiet: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None, str, dict] | None:
    if ev is not None:
        return ev.eigenvectors, ev.eigenvalues, str(opts.eigvecs), ev.settings
    if opts.num_eigs > 0:
        res = solve_with_progress(op, opts.num_eigs, tol=opts.tol, seed=opts.seed, verify=False,
                                  desc="outstats: Hessian eigenvectors", quiet=quiet)
        return (res.eigenvectors, res.eigenvalues, f"computed (top {opts.num_eigs}, LA, tol {opts.tol})",
                dict(op.settings))
    return None


def _definition(moments: str, target: Target) -> str:
    what = ("logits centred over classes" if target.module == "logits" else
            "raw logits" if target.module == "logits_raw" else f"output of module {target.module}")
    how = ("per fixed batch: mean / variance / third central moment over the batch's examples (and spatial "
           "positions), averaged over batches with weights n_b/N; gradients averaged the same way"
           if moments == "per-batch" else
           "pooled: central moments over all examples of the evaluation set, combined exactly from per-batch "
           "raw moments about the full-set mean")
    return f"{what}; {how}"
