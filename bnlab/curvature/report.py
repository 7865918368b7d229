"""`analyse_checkpoint`: the whole `bnlab hessian` computation, as a function returning the record.

Writes nothing itself; `write_outputs` stores ``hessian.json`` and ``eigvecs.pt``.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..checkpoint import Checkpoint, load_checkpoint
from ..device import resolve_device
from ..errors import BnlabError
from ..progress import Progress
from .density import slq_density
from .lanczos import EigenResult, top_eigenpairs
from .source import hessian_operator_from_checkpoint
from .trace import hutchpp_trace


def load_warm_start(path: str | os.PathLike, param_names: list[str]) -> torch.Tensor:
    """Eigenvectors from an earlier ``eigvecs.pt`` (same parameter layout) for a warm start."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        V, names = d["eigenvectors"], d["param_names"]
    except Exception as e:
        raise BnlabError(f"{path} is not an eigvecs.pt written by bnlab hessian ({type(e).__name__})") from None
    if list(names) != list(param_names):
        raise BnlabError(f"{path} was computed over different parameters than this Hessian; cannot warm-start")
    return V.to(torch.float64)


def analyse_checkpoint(ckpt: str | os.PathLike | Checkpoint, *, top_k: int = 20, which: str = "LA",
                       tol: float = 1e-4, eigensolver: str = "lanczos", ncv: int | None = None,
                       max_hvps: int | None = None, verify: bool = True, density: bool = False,
                       density_probes: int = 10, density_steps: int = 64, trace: bool = False,
                       trace_matvecs: int = 60, seed: int = 0, warm_start: str | None = None,
                       quiet: bool = True, device: str | None = "auto", **op_options: Any
                       ) -> tuple[dict[str, Any], EigenResult | None, Any]:
    """Compute top-k eigenpairs (and optionally SLQ density and Hutch++ trace) of a checkpoint's Hessian.

    op_options go to `hessian_operator_from_checkpoint`. Returns (record, EigenResult, operator).
    """
    dev = resolve_device(device)
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt, dev)
    t0 = time.perf_counter()
    op = hessian_operator_from_checkpoint(ckpt, device=dev, **op_options)
    record: dict[str, Any] = {"bnlab_version": __version__, "torch_version": torch.__version__,
                              "settings": op.settings,
                              "checkpoint_meta": {k: v for k, v in ckpt.meta.items()
                                                  if isinstance(v, (int, float, str, bool)) or v is None}}
    result = None
    if top_k:
        v0 = load_warm_start(warm_start, op.param_names) if warm_start else None
        progress = Progress(None, "hessian: HVPs", quiet=quiet)

        def show(hvps: int, rel: Any) -> None:
            worst = max(rel) if len(rel) else 0.0
            done = int(sum(r <= tol for r in rel))
            progress.update(hvps - progress.n, postfix=f"converged {done}/{len(rel)}, max rel. residual {worst:.1e}")

        result = top_eigenpairs(op, top_k, which=which, tol=tol, v0=v0, method=eigensolver, ncv=ncv,
                                max_hvps=max_hvps, seed=seed, verify=verify, callback=show)
        progress.close(postfix=f"{result.hvp_count} HVPs, {int(result.converged.sum())}/{top_k} converged")
        lam = result.eigenvalues
        record["eigen"] = {
            "which": which, "tol": tol, "method": eigensolver, "k": top_k, "eigenvalues": lam.tolist(),
            "residuals": result.residuals.tolist(),
            "relative_residuals": (result.residuals / lam.abs().clamp_min(1e-300)).tolist(),
            "residuals_measured": result.verified, "converged": result.converged.tolist(),
            "all_converged": bool(result.converged.all()), "hvp_count": result.hvp_count,
            "verify_hvps": result.verify_hvps, "restarts": result.restarts, "wall_time": result.wall_time,
            "warm_start": str(warm_start) if warm_start else None, "seed": seed,
        }
    if density:
        d = slq_density(op, num_probes=density_probes, lanczos_steps=density_steps, seed=seed)
        record["density"] = d.to_dict()
    if trace:
        tr = hutchpp_trace(op, num_matvecs=trace_matvecs, seed=seed)
        record["trace"] = tr.to_dict()
        record["trace"]["dim"] = op.dim
    # Known only after the first product: whether the gradient graphs were cached.
    op.settings.update(cache_graphs=op.cache_graphs, graph_cache=dict(op.cache_info))
    record["hvp_count_total"] = op.hvp_count
    record["wall_time_total"] = time.perf_counter() - t0
    return record, result, op


def _clean(x: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_outputs(out_dir: Path, record: dict[str, Any], result: EigenResult | None, op: Any) -> None:
    (out_dir / "hessian.json").write_text(json.dumps(_clean(record), indent=1))
    if result is not None:
        # float32 halves the file; plenty for overlaps and warm starts (residual tol >> 1e-7).
        torch.save({"eigenvalues": result.eigenvalues, "eigenvectors": result.eigenvectors.to(torch.float32),
                    "param_names": op.param_names, "shapes": op.layout.shapes, "settings": op.settings},
                   out_dir / "eigvecs.pt")
