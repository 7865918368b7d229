"""Reading the stages' result files and handing them to the finding functions (`bnlab.findings`).

This module only loads files: every number a verdict uses is computed by the command that wrote the file
(`bnlab dynamics`, `bnlab sweep`, `bnlab outstats`, ...) or by the finding function itself.
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..findings import batch_norm as bnf
from ..findings import gauss_newton, stability, weight_decay
from ..findings.record import FindingRecord, not_run
from ..findings.spec import BY_ID
from ..io.eigvecs import read_eigvecs
from ..io.jsonfile import read_json
from ..io.torchfile import load_torch_file
from ..models import build_model
from .plan import FINDING_STAGES, Stage

Outs = dict[str, Path]  # stage name -> its `out` folder (finished stages only)


def bn_preceded_convs(config: dict[str, Any]) -> list[str]:
    """Names of the conv weights that a batch-statistics BN follows directly, in the run's model."""
    from ..norms import batch_norm_layers

    model = build_model(TrainConfig.from_dict(config).model)
    bn_modules = {id(m) for _, m in batch_norm_layers(model)}
    names = []
    for prefix, block in model.named_modules():
        conv, norm = getattr(block, "conv", None), getattr(block, "norm", None)
        if conv is not None and id(norm) in bn_modules:
            names.append(f"{prefix}.conv.weight")
    return names


def _channel_summary(path: Path, params: list[str]) -> tuple[list[str], list[float]]:
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["param"] in params]
    return [r["param"] for r in rows], [float(r["median_abs_cos"]) if r["median_abs_cos"] not in ("", "nan")
                                        else float("nan") for r in rows]


def _f1(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    config = read_json(outs["train_wd_main"] / "config.json")
    params = bn_preceded_convs(config)
    names, cos = _channel_summary(outs["dynamics_wd_main"] / "dynamics_channels_summary.csv", params)
    return weight_decay.f1_scale_invariance(names, cos, read_json(outs["exact_invariant"] / "exact.json")["pythagoras"])


def _dyn(outs: Outs) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    config = read_json(outs["train_wd_main"] / "config.json")
    return read_json(outs["dynamics_wd_main"] / "dynamics_summary.json"), bn_preceded_convs(config), config


def _f2(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    summary, params, config = _dyn(outs)
    return weight_decay.f2_equilibrium(summary, params, config["lr_schedule"])


def _f3(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    summary, params, _ = _dyn(outs)
    return weight_decay.f3_lars_like(summary, params)


def _f4(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return weight_decay.f4_only_product(read_json(outs["sweep_wd"] / "summary.json"))


def _f4b(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return weight_decay.f4b_exponential_lr(read_json(outs["exact_invariant"] / "exact.json")["exp_lr"])


def _f5(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    collapse = read_json(outs["collapse_fc"] / "collapse.json")
    shares = read_json(outs["init_shares"] / "init_shares.json")["shares"]
    return bnf.f5_collapse(collapse, shares)


def _stress(out: Path) -> dict[str, Any]:
    with open(out / "metrics.csv", newline="") as f:
        metrics = [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    return bnf.failure_point(metrics, read_json(out / "status.json"))


def _f6(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return bnf.f6_lr_stress(_stress(outs["train_stress_bn"]), _stress(outs["train_stress_no_bn"]))


def _outstats(outs: Outs) -> dict[str, dict[str, Any]]:
    return {m: read_json(outs[f"outstats_{m}"] / "outstats.json") for m in bnf.MODELS}


def _f7(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return bnf.f7_mean_gradients(_outstats(outs))


def _f8(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return bnf.f8_perturbation(_outstats(outs))


def _f9(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return bnf.f9_sharpness({m: read_json(outs[f"hessian_{m}"] / "hessian.json")["eigen"]["eigenvalues"]
                             for m in bnf.MODELS})


def _f10(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return bnf.f10_overlap(read_json(outs["outstats_frozen"] / "outstats.json"))


def _f11(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return bnf.f11_projection(_outstats(outs))


def _f12(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    return stability.f12_edge_of_stability(read_json(outs["series_eos"] / "hessian_series.json"))


def _f13(outs: Outs, plan: dict[str, Stage]) -> FindingRecord:

    from ..outstats.run import TENSORS_FILE
    from ..outstats.subspace import orthonormal_basis, overlaps

    models, vecs = {}, {}
    for m in bnf.MODELS:
        h, g = read_eigvecs(outs[f"hessian_{m}"]), read_eigvecs(outs[f"ggn_{m}"])
        k = min(gauss_newton.F13_CLASSES, h.eigenvectors.shape[0], g.eigenvectors.shape[0])
        ggn = read_json(outs[f"ggn_{m}"] / "hessian.json")
        models[m] = {"hessian": h.eigenvalues.tolist(), "ggn": g.eigenvalues.tolist(), "k": k,
                     "overlap": float(overlaps(h.eigenvectors[:k].T, g.eigenvectors[:k].T).mean()),
                     "residual": read_json(outs[f"residual_{m}"] / "hessian.json")["eigen"]["eigenvalues"],
                     "class_means": ggn.get("class_means", {}).get("eigenvalues", [])}
        vecs[m] = g.eigenvectors[:k]
    frozen = outs["outstats_frozen"]  # the F10 span: every output-statistic gradient, as outstats kept it
    grads = load_torch_file(frozen / TENSORS_FILE)["grads"]
    basis, _ = orthonormal_basis(grads, read_json(frozen / "outstats.json")["span"]["rtol"])
    return gauss_newton.f13_gauss_newton(models, overlaps(basis, vecs["frozen"].T).tolist())


EVALUATORS: dict[str, Callable[[Outs, dict[str, Stage]], FindingRecord]] = {
    "F1": _f1, "F2": _f2, "F3": _f3, "F4": _f4, "F4b": _f4b, "F5": _f5, "F6": _f6, "F7": _f7, "F8": _f8,
    "F9": _f9, "F10": _f10, "F11": _f11, "F12": _f12, "F13": _f13,
}


def evaluate(fid: str, outs: Outs, plan: dict[str, Stage]) -> FindingRecord:
    """The finding's record from the finished stages in `outs` (NOT RUN when one is missing)."""
    missing = [s for s in FINDING_STAGES[fid] if s not in outs]
    if missing:
        return not_run(BY_ID[fid], f"not requested, or its stages did not finish ({', '.join(missing)})")
    return EVALUATORS[fid](outs, plan)
