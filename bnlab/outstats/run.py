"""`bnlab outstats` as a function: everything the command computes for one checkpoint.

The evaluation set, BN mode and Hessian come from the curvature engine's checkpoint builder,
so `bnlab hessian` and `bnlab outstats` with the same options read identical batches.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..bnmode import resolve_bn_mode
from ..checkpoint import Checkpoint, load_checkpoint
from ..curvature import DEFAULT_BATCH_SIZE, DEFAULT_NUM_SAMPLES, hessian_operator_from_checkpoint, top_eigenpairs
from ..errors import BnlabError
from ..models import build_model
from .activations import activation_stats, default_layers
from .gradients import stat_gradients
from .layers import per_layer_sq_norms
from .perturb import perturbation_table
from .subspace import ProjectedOperator, orthonormal_basis, overlaps, random_overlaps
from .target import Target


@dataclass
class OutstatsOptions:
    stats: tuple[str, ...] = ("mean", "var", "skew")
    module: str = "logits"
    channels: tuple[int, ...] | None = None
    moments: str = "per-batch"
    delta: float = 0.01
    eigvecs: str | None = None  # a `bnlab hessian` output dir
    num_eigs: int = 0  # compute this many top eigenvectors on the fly (if no --eigvecs)
    project: bool = False
    num_samples: int | None = DEFAULT_NUM_SAMPLES
    batch_size: int = DEFAULT_BATCH_SIZE
    bn_mode: str | None = None
    loss_scale: str = "mean"
    tol: float = 1e-3
    data_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    histograms: bool = True
    hist_layers: tuple[str, ...] | None = None
    quiet: bool = True


def read_eigvecs(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """(eigenvectors (k, dim), eigenvalues (k,) or None, settings) from a `bnlab hessian` output dir."""
    folder = Path(folder)
    path = folder / "eigvecs.pt"
    if not path.is_file():
        raise BnlabError(f"no eigvecs.pt in {folder}; run `bnlab hessian CKPT --out {folder}` first")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BnlabError(f"{path} is not readable ({type(e).__name__})") from None
    values = None
    if isinstance(payload, dict):
        vecs = payload.get("eigenvectors", payload.get("eigvecs"))
        values = payload.get("eigenvalues")
    else:
        vecs = payload
    if not isinstance(vecs, torch.Tensor) or vecs.dim() != 2:
        raise BnlabError(f"{path} holds no (k, dim) eigenvector tensor")
    settings: dict[str, Any] = dict(payload.get("settings") or {}) if isinstance(payload, dict) else {}
    if isinstance(payload, dict) and "param_names" in payload:
        settings["param_names"] = list(payload["param_names"])
    meta = folder / "hessian.json"
    if meta.is_file():
        try:
            record = json.loads(meta.read_text())
        except ValueError:
            raise BnlabError(f"{meta} is not valid JSON") from None
        settings = {**record.get("settings", {}), **settings}
        if values is None:
            listed = record.get("eigen", {}).get("eigenvalues", record.get("eigenvalues"))
            if listed is not None:
                values = torch.tensor(listed, dtype=torch.float64)
    return vecs.double(), (values.double() if isinstance(values, torch.Tensor) else values), settings


def check_eigvecs_match(settings: dict[str, Any], op: Any, source: str) -> None:
    """Eigenvectors from `bnlab hessian` must belong to this checkpoint and parameter layout."""
    theirs, ours = settings.get("checkpoint_sha256"), getattr(op, "settings", {}).get("checkpoint_sha256")
    if theirs and ours and theirs != ours:
        raise BnlabError(f"the eigenvectors in {source} were computed for another checkpoint "
                         f"({settings.get('checkpoint', '?')}); rerun `bnlab hessian` on this one")
    names = settings.get("param_names")
    if names is not None and list(names) != list(op.param_names):
        raise BnlabError(f"the eigenvectors in {source} are over other parameters than this model's "
                         f"(hessian --params {settings.get('params')}); overlaps need all trainable parameters")


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_unchanged(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    changed = [k for k, v in snap.items() if not torch.equal(v, now[k])]
    if changed:  # a bug in bnlab, never a user error: say so loudly
        raise BnlabError(f"internal error: outstats changed the model ({', '.join(changed[:3])}); please report")


def _init_model(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The checkpoint's architecture freshly initialised from its run's seed (for 'at init' plots)."""
    torch.manual_seed(ckpt.config.seed)
    return build_model(ckpt.config.model).to(device=device, dtype=dtype)


def compute_outstats(ckpt_path: str | Path, opts: OutstatsOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary for outstats.json, tensors for outstats.pt) of one checkpoint; the model is unchanged."""
    from ..device import resolve_device

    dev = resolve_device(opts.device)
    ckpt = load_checkpoint(ckpt_path, dev)
    snap = _snapshot(ckpt.model)
    op = hessian_operator_from_checkpoint(ckpt, num_samples=opts.num_samples, batch_size=opts.batch_size,
                                          bn_mode=opts.bn_mode, data_dir=opts.data_dir, device=dev,
                                          loss_scale=opts.loss_scale, eval_seed=opts.seed)
    model, mode = op.model, op.bn_mode
    batches = list(op.batches())
    target = Target(opts.module, opts.channels)
    sg = stat_gradients(model, batches, stats=opts.stats, target=target, moments=opts.moments, mode=mode,
                        quiet=opts.quiet)
    flat = sg.flat()
    layers, sq = per_layer_sq_norms(flat, sg.param_names, sg.param_shapes)
    labels = sg.labels()
    summary: dict[str, Any] = {
        "settings": {**{k: v for k, v in vars(opts).items() if k != "quiet"}, "bn_mode": mode,
                     "stats": list(sg.stats), "hessian": op.settings,
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
    if target.is_logits and "mean" in sg.stats:
        summary["perturbation"] = perturbation_table(model, batches, sg.of("mean"), mode=mode, delta=opts.delta,
                                                     seed=opts.seed, classes=sg.channels)
    # Gradients carry the model dtype's rounding: a row whose remainder is below ~1000 eps of it is
    # dependent (e.g. the 10th centred-logit mean gradient, which sums with the others to zero).
    rtol = 1000 * torch.finfo(next(model.parameters()).dtype).eps
    basis_means = orthonormal_basis(sg.flat(["mean"]), rtol)[0] if "mean" in sg.stats else None
    basis_all, kept = orthonormal_basis(flat, rtol)
    summary["span"] = {"means_dim": None if basis_means is None else basis_means.shape[1],
                       "full_dim": basis_all.shape[1], "kept_rows": [labels[i] for i in kept], "rtol": rtol,
                       "random_overlap_full": random_overlaps(basis_all, 10, opts.seed).tolist(),
                       "random_overlap_expected": basis_all.shape[1] / basis_all.shape[0]}
    eig = _eigvecs(op, opts)
    if eig is not None:
        vecs, vals, source, hsettings = eig
        if vecs.shape[1] != basis_all.shape[0]:
            raise BnlabError(f"eigenvectors have dimension {vecs.shape[1]}, this model {basis_all.shape[0]}: "
                             "were they computed for this checkpoint with all parameters?")
        summary["eigen"] = {"source": source, "eigenvalues": None if vals is None else vals.tolist(),
                            "hessian_settings": {k: hsettings.get(k) for k in ("bn_mode", "units", "num_samples",
                                                                               "batch_size", "loss_scale")},
                            "overlap_full": overlaps(basis_all, vecs.T.to(basis_all.device)).tolist()}
        if basis_means is not None:
            summary["eigen"]["overlap_means"] = overlaps(basis_means, vecs.T.to(basis_means.device)).tolist()
    if opts.project:
        k = max(opts.num_eigs, 1) if eig is None else max(opts.num_eigs, eig[0].shape[0])
        res = top_eigenpairs(ProjectedOperator(op, basis_all), k, which="LA", tol=opts.tol, seed=opts.seed)
        summary["projected"] = {"k": k, "eigenvalues": res.eigenvalues.tolist(),
                                "converged": res.converged.tolist(), "hvps": res.hvp_count,
                                "span_dim": basis_all.shape[1], "loss_scale": opts.loss_scale}
    if opts.histograms:
        hist_layers = list(opts.hist_layers) if opts.hist_layers else [*default_layers(model), "logits"]
        dtype = next(model.parameters()).dtype
        init = _init_model(ckpt, dev, dtype)
        init_mode = resolve_bn_mode(init, None if mode == "none" else mode)
        acts = {"checkpoint": activation_stats(model, batches, hist_layers, mode=mode, seed=opts.seed),
                "init": activation_stats(init, batches, hist_layers, mode=init_mode, seed=opts.seed)}
        summary["channel_mean_share"] = {when: {n: a[n]["layer_mean_share"] for n in hist_layers}
                                         for when, a in acts.items()}
        tensors["activations"] = acts
    _check_unchanged(ckpt.model, snap)
    return summary, tensors


def _eigvecs(op: Any, opts: OutstatsOptions) -> tuple[torch.Tensor, torch.Tensor | None, str, dict] | None:
    if opts.eigvecs:
        vecs, vals, settings = read_eigvecs(opts.eigvecs)
        check_eigvecs_match(settings, op, str(opts.eigvecs))
        return vecs, vals, str(opts.eigvecs), settings
    if opts.num_eigs > 0:
        res = top_eigenpairs(op, opts.num_eigs, which="LA", tol=opts.tol, seed=opts.seed)
        return (res.eigenvectors, res.eigenvalues, f"computed (top {opts.num_eigs}, LA, tol {opts.tol})",
                dict(op.settings) if hasattr(op, "settings") else {})
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
