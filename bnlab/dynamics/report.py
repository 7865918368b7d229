"""Writing a dynamics `Report` to disk (JSON + CSV) and as a text table."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..io.jsonfile import write_json
from ..io.result import write_files
from ..io.textfile import write_csv
from .analysis import LAGGED, Report

LAYER_COLUMNS = ("param", "numel", "scale_invariant", "invariance", "median_abs_cos", "checkpoint_abs_cos",
                 "w_norm_init", "w_norm_final", "norm_lagged_pred", "norm_ratio", "angle", "angle_pred", "ratio",
                 "angle_lagged_pred", "ratio_lagged", "rel_step", "rel_step_pred", "rel_step_ratio", "radial_cos",
                 "pythagoras_residual", "steps_to_equilibrium", "steps_to_settle", "relaxation_steps", "angle_ref",
                 "corr_factor", "ratio_corr", "norm_corr_factor", "norm_ratio_corr")


def write_columns(path: Path, cols: dict[str, np.ndarray]) -> None:
    """Column dict -> CSV, atomically (readers never see half a file)."""
    write_csv(path, list(cols), zip(*(np.asarray(v).tolist() for v in cols.values())))


def write_report(report: Report, out: Path) -> dict[str, Path]:
    """dynamics_summary.json, dynamics_layers.csv, dynamics_series.csv (+ dynamics_channels_summary.csv)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "dynamics_summary.json", "layers": out / "dynamics_layers.csv",
             "series": out / "dynamics_series.csv"}
    rows = [asdict(r) for r in report.layers]
    tables = {"layers": {c: np.array([_csv(r[c]) for r in rows], dtype=object) for c in LAYER_COLUMNS},
              "series": report.series}
    if report.channels is not None:
        paths["channels"] = out / "dynamics_channels_summary.csv"
        tables["channels"] = report.channels

    def table(name: str) -> Path:
        write_columns(paths[name], tables[name])
        return paths[name]

    # The summary (the record) last: a write that fails half-way leaves no result that looks complete.
    write_files([*(lambda n=n: table(n) for n in tables), lambda: write_json(paths["summary"], report.summary())])
    return paths


def _csv(x: object) -> object:
    if isinstance(x, bool):
        return int(x)
    return "" if x is None else x


def _f(x: float | None, fmt: str = ".4g") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


_INV = {"exact": "yes", "approximate": "~", "no": "no"}


def _theory_line(report: Report) -> str:
    th, h = report.theory, report.hyper
    hyper = f"wd {h.wd:g}, momentum {h.momentum:g}, nesterov {h.nesterov}"
    if report.compare_to == LAGGED:
        head = (f"theory: lagged prediction under the {report.lr_schedule} lr schedule (pred, ratio, t_eq: the "
                "norms trail the moving equilibrium by about a relaxation time)")
        if th["lr_final"] > 0:
            return (f"{head}; at the final lr {th['lr_final']:g} the equilibrium would be "
                    f"{_f(th['angle_eq_final_lr'], '.4e')} rad/step ({hyper})")
        return f"{head}; the schedule ends at lr 0, where there is no equilibrium ({hyper})"
    return (f"theory: angle_eq {_f(th['angle_eq_final_lr'], '.4e')} rad/step at lr {th['lr_final']:g} "
            f"({hyper}); relaxation {_f(th['relaxation_steps_final_lr'], '.0f')} steps")


def format_table(report: Report) -> str:
    """The per-layer table a person reads: invariance, norms, measured vs predicted angle."""
    head = (f"{'param':28s} {'inv':>3s} {'|cos|med':>8s} {'|w|0':>7s} {'|w|end':>7s} {'|w|pred':>7s} "
            f"{'angle':>8s} {'pred':>8s} {'ratio':>6s} {'rel_step':>8s} {'pred':>8s} {'t_eq':>6s}")
    lines = [head, "-" * len(head)]
    for r in report.layers:
        lines.append(f"{r.param:28s} {_INV[r.invariance]:>3s} {_f(r.median_abs_cos, '.1e'):>8s} "
                     f"{_f(r.w_norm_init, '.3g'):>7s} {_f(r.w_norm_final, '.3g'):>7s} "
                     f"{_f(r.norm_lagged_pred, '.3g'):>7s} {_f(r.angle, '.3e'):>8s} {_f(r.angle_ref, '.3e'):>8s} "
                     f"{_f(r.ratio, '.3f'):>6s} {_f(r.rel_step, '.3e'):>8s} {_f(r.rel_step_pred, '.3e'):>8s} "
                     f"{_f(r.steps_to_equilibrium, 'd') if r.steps_to_equilibrium is not None else '-':>6s}")
    a = report.aggregate
    lines.append("")
    lines.append(_theory_line(report))
    if "ratio_mean" in a:
        lines.append(f"scale-invariant layers: {len(a['scale_invariant'])}, measured/predicted angle "
                     f"{a['ratio_min']:.3f}..{a['ratio_max']:.3f} (mean {a['ratio_mean']:.3f}), angle CV "
                     f"{_f(a['angle_cv'], '.3f')}, norms {a['norm_min']:.3g}..{a['norm_max']:.3g} "
                     f"({_f(a['norm_spread'], '.2f')}x)")
    approx = a.get("approximately_invariant") or {}
    if approx:
        lines.append("approximately invariant (~; radial gradient < 10% of the step, e.g. BN eps at small "
                     "activations), measured/predicted: " + ", ".join(f"{k} {_f(v, '.3f')}" for k, v in approx.items()))
    lines.append(f"not scale-invariant: {', '.join(n for n in a['not_scale_invariant'] if n not in approx) or 'none'}")
    if report.live:
        lines.append("(run still being written: numbers are as of its last logged step)")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
