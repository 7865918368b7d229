"""A sweep's summary: each point's final metrics and equilibrium statistics, grouped by lr·wd.

Points with equal lr·wd (and equal lr·wd/(1-momentum)) should reach equal angular steps; the
norms of scale-invariant layers should scale like (lr/wd)^(1/4). `summarise_sweep` writes
summary.csv and summary.json; `format_summary` prints the grouped table.
"""
from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import theory
from ..dynamics import analyse_run
from ..dynamics.analysis import MIN_RELAXATION_TIMES
from ..dynamics.report import write_columns
from ..errors import BnlabError
from ..io.jsonfile import write_json
from .grid import Grid, Point, read_grid_file
from .runner import DONE, GRID_FILE, point_dir, point_state

SUMMARY_COLUMNS = ("index", "name", "status", "lr", "weight_decay", "momentum", "nesterov", "lr_wd", "lr_wd_eff",
                   "epochs_done", "train_loss", "train_acc", "test_loss", "test_acc", "n_invariant", "angle",
                   "angle_pred", "angle_ratio", "rel_step", "rel_step_pred", "norm_gmean", "norm_min", "norm_max",
                   "relaxation_times")


def _last_metrics(run_dir: Path) -> dict[str, float]:
    try:
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)} if rows else {}


def summarise_point(out: Path, grid: Grid, point: Point) -> dict[str, Any]:
    """One summary row: final metrics (metrics.csv) and equilibrium stats (`bnlab.dynamics`) of a point."""
    config = grid.config(point)
    rd = point_dir(out, point)
    lr, wd, mu = config.lr, config.weight_decay, config.momentum
    row: dict[str, Any] = {"index": point.index, "name": point.name, "status": _status(rd), "lr": lr,
                           "weight_decay": wd, "momentum": mu, "nesterov": config.nesterov, "lr_wd": lr * wd,
                           "lr_wd_eff": lr * wd / (1 - mu)}
    m = _last_metrics(rd)
    row.update({"epochs_done": m.get("epoch"), **{k: m.get(k) for k in ("train_loss", "train_acc", "test_loss",
                                                                        "test_acc")}})
    row["layers"] = {}
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # short runs: NaN columns are reported
            warnings.simplefilter("ignore", RuntimeWarning)
            rep = analyse_run(rd, check_checkpoint=False)
    except BnlabError:
        return row
    inv = [r for r in rep.layers if r.scale_invariant]
    row["n_invariant"] = len(inv)
    row["relaxation_times"] = rep.relaxation_times
    row["compare_to"] = rep.compare_to
    row["layers"] = {r.param: {"w_norm": r.w_norm_final, "angle": r.angle, "angle_pred": r.angle_pred,
                               "ratio": r.ratio, "grad_scale": r.grad_scale, "scale_invariant": r.scale_invariant}
                     for r in rep.layers}
    if inv:
        norms = np.array([r.w_norm_final for r in inv])
        # the prediction the run is compared with: the equilibrium (const lr) or the lagged one (schedules)
        row.update({"angle": float(np.mean([r.angle for r in inv])), "angle_pred": inv[0].angle_ref,
                    "rel_step": float(np.mean([r.rel_step for r in inv])), "rel_step_pred": inv[0].rel_step_pred,
                    "norm_gmean": float(np.exp(np.mean(np.log(norms)))), "norm_min": float(norms.min()),
                    "norm_max": float(norms.max())})
        if row["angle_pred"]:
            row["angle_ratio"] = row["angle"] / row["angle_pred"]
    return row


def _status(rd: Path) -> str:
    if not rd.exists():
        return "missing"
    s = point_state(rd)
    return {"resumable": "incomplete", "new": "incomplete"}.get(s, s)


def _group_key(x: float) -> str:
    return format(float(f"{x:.6g}"), "g")


def angle_spread(angles: list[float]) -> float | None:
    """max/min of a group's angles: 1 when all are equal (all zero included: a run whose lr ended at 0),
    None when the ratio is undefined (fewer than two, a zero beside a nonzero angle, a non-finite one)."""
    if len(angles) < 2 or not all(math.isfinite(a) for a in angles):
        return None
    lo, hi = min(angles), max(angles)
    if lo == hi:
        return 1.0
    return float(hi / lo) if lo > 0 else None


def group_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Points with equal `key` (lr_wd or lr_wd_eff): how alike are their angles, norms and accuracies?"""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_group_key(r[key]), []).append(r)
    out = []
    for k, rs in sorted(groups.items(), key=lambda kv: float(kv[0])):
        ang = [r["angle"] for r in rs if r.get("angle") is not None]
        acc = [r["test_acc"] for r in rs if r.get("test_acc") is not None]
        nrm = [r["norm_gmean"] for r in rs if r.get("norm_gmean") is not None]
        out.append({key: float(k), "points": [r["name"] for r in rs], "n": len(rs),
                    "angle_mean": float(np.mean(ang)) if ang else None,
                    "angle_spread": angle_spread(ang),
                    "angle_pred": rs[0].get("angle_pred"),
                    "test_acc_min": min(acc) if acc else None, "test_acc_max": max(acc) if acc else None,
                    "norm_gmean_range": [min(nrm), max(nrm)] if nrm else None})
    return out


def norm_exponents(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per invariant layer, the slope of log ||w|| against log(lr/wd) across points (theory: 1/4).

    'raw' fits ||w|| itself; 'grad_scale_corrected' fits ||w|| / L^(1/4), removing the part of the
    norm change that comes from a different gradient scale L = ||g||^2 ||w||^2 at that point.
    Only points with the same momentum as the first are used (the theory's norm also has 1/(1-mu)).
    """
    done = [r for r in rows if r.get("layers") and r["status"] in DONE and r["weight_decay"] > 0]
    if done:
        done = [r for r in done if r["momentum"] == done[0]["momentum"]]
    x = np.log([r["lr"] / r["weight_decay"] for r in done]) if done else np.array([])
    if len(done) < 2 or np.ptp(x) == 0:
        return {}
    out = {}
    for name, info in done[0]["layers"].items():
        if not info["scale_invariant"]:
            continue
        w = np.array([r["layers"].get(name, {}).get("w_norm", np.nan) for r in done], dtype=float)
        L = np.array([r["layers"].get(name, {}).get("grad_scale", np.nan) for r in done], dtype=float)
        ok = np.isfinite(w) & np.isfinite(L) & (w > 0) & (L > 0)
        if ok.sum() < 2 or np.ptp(x[ok]) == 0:
            continue
        out[name] = {"raw": float(np.polyfit(x[ok], np.log(w[ok]), 1)[0]),
                     "grad_scale_corrected": float(np.polyfit(x[ok], np.log(w[ok] / L[ok] ** 0.25), 1)[0])}
    return out


def summarise_sweep(out: str | os.PathLike, grid: Grid | None = None) -> dict[str, Any]:
    """Summary of every point of the sweep in OUT; writes summary.csv and summary.json there."""
    out = Path(out)
    grid = grid or read_grid_file(out / GRID_FILE)
    rows = [summarise_point(out, grid, p) for p in grid.points()]
    summary = {"grid": grid.to_dict(), "theory": {"nesterov_factor_at_0.9": theory.nesterov_factor(0.9)},
               "points": rows, "groups_lr_wd": group_rows(rows, "lr_wd"),
               "groups_lr_wd_eff": group_rows(rows, "lr_wd_eff"), "norm_exponents": norm_exponents(rows)}
    write_columns(out / "summary.csv", {c: np.array([_cell(r.get(c)) for r in rows], dtype=object)
                                        for c in SUMMARY_COLUMNS})
    write_json(out / "summary.json", summary)
    return summary


def _cell(x: Any) -> Any:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return int(x) if isinstance(x, bool) else x


def format_summary(summary: dict[str, Any]) -> str:
    """Points grouped by lr*wd, then the lr*wd/(1-mu) groups and the norm exponents."""
    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    head = (f"{'lr*wd':>9s} {'point':40s} {'status':>9s} {'test_acc':>8s} {'train_loss':>10s} {'angle':>9s} "
            f"{'pred':>9s} {'ratio':>6s} {'|w| gmean':>9s}")
    lines = [head, "-" * len(head)]
    for g in summary["groups_lr_wd"]:
        for name in g["points"]:
            r = next(r for r in summary["points"] if r["name"] == name)
            lines.append(f"{g['lr_wd']:9.3g} {name:40s} {r['status']:>9s} {f(r.get('test_acc'), '.4f'):>8s} "
                         f"{f(r.get('train_loss'), '.4f'):>10s} {f(r.get('angle'), '.3e'):>9s} "
                         f"{f(r.get('angle_pred'), '.3e'):>9s} {f(r.get('angle_ratio'), '.3f'):>6s} "
                         f"{f(r.get('norm_gmean'), '.3g'):>9s}")
        if g["n"] > 1:
            lines.append(f"{'':9s} -> angle spread {f(g['angle_spread'], '.3f')}x within the lr*wd group")
    short = [r for r in summary["points"] if r.get("relaxation_times") is not None
             and r["relaxation_times"] < MIN_RELAXATION_TIMES]
    if short:
        times = [r["relaxation_times"] for r in short]
        lines.append(f"warning: {len(short)} point(s) ran fewer than {MIN_RELAXATION_TIMES:g} relaxation times "
                     f"((1 - momentum) / (4 lr wd) steps each; here {min(times):.1f}..{max(times):.1f}): their "
                     "norms are still relaxing, so their angle ratios are not equilibrium values; train longer")
    lines.append("")
    lines.append("groups by lr*wd/(1-momentum): " + "; ".join(
        f"{g['lr_wd_eff']:.3g}: n={g['n']}, angle {f(g['angle_mean'], '.3e')}"
        + (f" (spread {g['angle_spread']:.3f}x)" if g["angle_spread"] else "") for g in summary["groups_lr_wd_eff"]))
    ex = summary["norm_exponents"]
    if ex:
        raw = np.array([v["raw"] for v in ex.values()])
        cor = np.array([v["grad_scale_corrected"] for v in ex.values()])
        lines.append(f"||w|| ~ (lr/wd)^b over {len(ex)} invariant layers: b = {raw.mean():.3f} "
                     f"({raw.min():.3f}..{raw.max():.3f}); with L^(1/4) removed {cor.mean():.3f} (theory 0.25)")
    return "\n".join(lines)
