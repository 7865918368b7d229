"""Curvature along training: the top-k Hessian eigenpairs of every saved checkpoint of a run.

`bnlab hessian RUN_DIR` runs `run_hessian` on each ckpt_epoch_NNN.pt of the run (train with
--save-every), in order, each warm-started from the previous checkpoint's eigenvectors (the top
eigenspace moves slowly, so Lanczos converges in fewer products), and records per checkpoint:
the step, the lr of its last step, λ1..λk, η·λ1 against the momentum-SGD stability threshold
(`bnlab.theory.stability_threshold`: the "edge of stability"), the products used, and the squared
overlaps of its top-k eigenvectors with the previous checkpoint's (which directions persist, which
rotate). `compare_cold=True` also solves each checkpoint from a random start, to measure what the
warm starts save.

Files: OUT/hessian_series.json and, per checkpoint, OUT/epoch_NNN/{hessian.json, eigvecs.pt}.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import theory
from ..checkpoint import Checkpoint, load_checkpoint
from ..context import build_context
from ..device import resolve_device
from ..errors import BnlabError
from ..io.folder import result_folder
from ..io.jsonfile import write_json
from ..progress import Progress
from ..schedule import lr_at
from .hessian import HessianOptions, HessianResult, run_hessian

FORMAT = "bnlab-hessian-series"
VERSION = 1
RECORD_FILE = "hessian_series.json"
_CKPT = re.compile(r"ckpt_epoch_(\d+)\.pt$")


def series_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's saved checkpoints in training order (ckpt_epoch_NNN.pt, then final.pt if later)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BnlabError(f"run directory {run_dir} does not exist")
    found = sorted((int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CKPT.match(p.name)))
    paths = [p for _, p in found]
    if not paths:
        raise BnlabError(f"{run_dir} holds no saved checkpoints (ckpt_epoch_NNN.pt); train with --save-every N "
                         "to follow curvature along training, or pass one checkpoint file")
    return paths


def squared_overlaps(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """(k_prev, k) matrix of |<u_i, v_j>|² for orthonormal rows u_i (previous) and v_j (current)."""
    return (previous.double() @ current.double().T) ** 2


@dataclass
class SeriesResult:
    record: dict[str, Any]  # what hessian_series.json holds
    results: list[HessianResult]  # per checkpoint, in order

    def write(self, out: str | Path) -> list[Path]:
        out = result_folder(out)
        paths = []
        for entry, res in zip(self.record["checkpoints"], self.results):
            paths += res.write(out / f"epoch_{entry['epoch']:03d}")
        paths.append(write_json(out / RECORD_FILE, self.record, indent=1))
        return paths


def _checkpoint_lr(ckpt: Checkpoint) -> float:
    """The lr of the last step before the checkpoint (its epoch's last row, else the schedule)."""
    metrics = ckpt.meta.get("metrics") or []
    epoch = int(ckpt.meta.get("epoch") or 0)
    row = next((m for m in metrics if m.get("epoch") == epoch), None)
    return float(row["lr"]) if row is not None and "lr" in row else lr_at(ckpt.config, float(epoch))


def run_hessian_series(run_dir: str | Path, opts: HessianOptions, *, device: str | torch.device = "auto",
                       quiet: bool = True, compare_cold: bool = False) -> SeriesResult:
    """Top-k eigenpairs of every saved checkpoint of `run_dir`, warm-started along the series."""
    opts.validate()
    if opts.top_k < 1:
        raise BnlabError("a curvature series needs --top-k >= 1")
    if opts.warm_start is not None:
        raise BnlabError("--warm-start is automatic along a series (each checkpoint starts from the previous one)")
    paths = series_checkpoints(run_dir)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    first = load_checkpoint(paths[0], dev)
    config = first.config
    mu, nesterov = config.momentum, config.nesterov
    threshold = theory.stability_threshold(mu, nesterov)
    data = None
    entries: list[dict[str, Any]] = []
    results: list[HessianResult] = []
    previous: torch.Tensor | None = None
    bar = Progress(len(paths), "hessian series: checkpoints", quiet=quiet, unit="ckpt")
    t_all = time.perf_counter()
    for i, path in enumerate(paths):
        ckpt = first if i == 0 else load_checkpoint(path, dev)
        ctx = build_context(ckpt, opts.eval, device=dev, data=data)
        data = ctx.data  # loaded once for the whole series
        t0 = time.perf_counter()
        res = run_hessian(ctx, opts, quiet=quiet, v0=previous)
        cold = None
        if compare_cold and previous is not None:
            cold = run_hessian(ctx, dataclasses.replace(opts, verify=False), quiet=True).eigen.hvp_count
        eig = res.eigen
        lam = eig.eigenvalues
        scale = float(res.record["settings"].get("scale_factor", 1.0))
        lr = _checkpoint_lr(ckpt)
        lam1_mean = float(lam[0]) / scale  # η·λ1 is about the mean loss SGD descends
        entries.append({
            "path": str(path), "epoch": int(ckpt.meta.get("epoch") or 0), "step": int(ckpt.meta.get("step") or 0),
            "lr": lr, "eigenvalues": lam.tolist(), "converged": eig.converged.tolist(), "hvps": eig.hvp_count,
            "warm_started": previous is not None, "hvps_cold": cold, "eta_lambda1": lr * lam1_mean,
            "ratio_to_threshold": lr * lam1_mean / threshold,
            "overlap_with_previous": (None if previous is None
                                      else squared_overlaps(previous, eig.eigenvectors).tolist()),
            "wall_time": time.perf_counter() - t0,
        })
        results.append(res)
        previous = eig.eigenvectors
        bar.update(1, f"epoch {entries[-1]['epoch']}: λ1 {float(lam[0]):.4g}, η·λ1/threshold "
                      f"{entries[-1]['ratio_to_threshold']:.3g}")
    bar.close()
    settings = {k: v for k, v in results[0].record["settings"].items() if k not in ("checkpoint", "checkpoint_sha256")}
    record = {"format": FORMAT, "version": VERSION, "run_dir": str(run_dir), "momentum": mu, "nesterov": nesterov,
              "threshold": threshold, "settings": settings, "options": dataclasses.asdict(opts),
              "checkpoints": entries, "hvps_total": sum(e["hvps"] for e in entries),
              "warm_vs_cold": ({"hvps_warm": sum(e["hvps"] for e in entries[1:]),
                                "hvps_cold": sum(e["hvps_cold"] for e in entries[1:])}
                               if compare_cold and len(entries) > 1 else None),
              "wall_time_total": time.perf_counter() - t_all}
    return SeriesResult(record, results)
