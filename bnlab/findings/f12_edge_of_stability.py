"""F12, the edge of stability along training: eta lambda1 against the momentum-SGD threshold, from the
``hessian_series.json`` that ``bnlab hessian RUN_DIR`` writes (top-k eigenpairs of every saved checkpoint).

The threshold (`bnlab.theory.stability_threshold`: 2(1 + mu)/(1 + 2 mu) for torch's Nesterov, 2(1 + mu) for
heavy ball) and eta lambda1 (mean-loss units) are the series file's own: nothing is recomputed here.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..io.jsonfile import read_json
from .base import FindingDef
from .record import Finding, FindingRecord, decide, finite, fmt, num

SERIES_FORMAT = "bnlab-hessian-series"
F12_LOW, F12_HIGH = 0.5, 2.0
F12_SKIP = 0.25  # first fraction of the constant-lr phase left out (progressive sharpening)
LR_RTOL = 1e-6

SPEC = Finding(
    "F12", "weight-decay", "edge of stability along training",
    "Nets trained at the largest stable lr sit at the edge of stability: eta lambda1 approaches the "
    "momentum-SGD threshold 2(1 + mu)/(1 + 2 mu) (1.357 at mu = 0.9, Nesterov).",
    "L (Cohen et al. 2021), A", "GD: lambda1 -> 2/eta (momentum: 2(1 + mu)/((1 + 2 mu) eta))",
    f"over the constant-lr phase (its first quarter left out: sharpening time), eta lambda1 of the "
    f"training loss (BN batch mode) within {num(F12_LOW)}-{num(F12_HIGH)}x of the threshold at every checkpoint")


def constant_phase(checkpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoints taken at the run's largest lr (its constant-lr phase), in step order; the first
    `F12_SKIP` of that phase (by steps) left out."""
    cps = sorted((c for c in checkpoints if finite(c.get("lr")) and c.get("eigenvalues")), key=lambda c: c["step"])
    if not cps:
        return []
    top = max(c["lr"] for c in cps)
    phase = [c for c in cps if abs(c["lr"] - top) <= LR_RTOL * top]
    # The phase starts where the lr reached its top (step 0 for a constant schedule).
    before = [c["step"] for c in cps if c["step"] < phase[0]["step"] and abs(c["lr"] - top) > LR_RTOL * top]
    start = max(before) if before else 0
    end = phase[-1]["step"]
    return [c for c in phase if c["step"] - start >= F12_SKIP * (end - start)]


def f12_edge_of_stability(series: dict[str, Any]) -> FindingRecord:
    """F12: eta lambda1 / threshold at every checkpoint of the constant-lr phase within 0.5-2x."""
    if series.get("format") != SERIES_FORMAT:
        raise ValueError(f"not a {SERIES_FORMAT} record")
    mu = float(series["momentum"])
    threshold = float(series["threshold"])
    phase = constant_phase(series["checkpoints"])
    ratios = [c["ratio_to_threshold"] for c in phase]
    all_ratios = [{"epoch": c["epoch"], "step": c["step"], "lr": c["lr"], "lambda1": c["eigenvalues"][0],
                   "eta_lambda1": c["eta_lambda1"], "ratio": c["ratio_to_threshold"],
                   "converged": bool(c.get("converged", [True])[0])}
                  for c in sorted(series["checkpoints"], key=lambda c: c["step"]) if c.get("eigenvalues")]
    unconverged = [c["epoch"] for c in phase if not bool(c.get("converged", [True])[0])]
    lo, hi = (min(ratios), max(ratios)) if ratios else (float("nan"), float("nan"))
    needs = [(f"2 or more checkpoints in the constant-lr phase (have {len(ratios)})", len(ratios) >= 2)]
    checks = [("lambda1 converged at each of them", not unconverged),
              (f"eta lambda1 / threshold {fmt(lo, '.2f')}..{fmt(hi, '.2f')} within {F12_LOW:g}-{F12_HIGH:g}",
               bool(ratios) and lo >= F12_LOW and hi <= F12_HIGH)]
    measured = (f"eta lambda1 = {fmt(lo * threshold, '.3g')}..{fmt(hi * threshold, '.3g')} at {len(ratios)} "
                "checkpoints "
                f"(threshold {threshold:.3f}: {fmt(lo, '.2f')}..{fmt(hi, '.2f')}x, median "
                f"{fmt(float(np.median(ratios)) if ratios else None, '.2f')}x)")
    values = {"threshold": threshold, "momentum": mu, "nesterov": series.get("nesterov"),
              "phase_ratios": ratios, "ratio_min": lo, "ratio_max": hi, "checkpoints": all_ratios,
              "unconverged_epochs": unconverged, "hvps_total": series.get("hvps_total")}
    return decide(SPEC, checks, measured, values, needs=needs)


def figure(f: Any) -> Any:
    """lambda1 against threshold / eta, the ratio with F12's band, the eigenvectors' persistence."""
    from ..plotting.series import figure as series_figure

    return series_figure(f.json("series_eos", "hessian_series.json"), title=f.title())


FINDING = FindingDef(SPEC, ("series_eos",),
                     lambda outs: {"series": read_json(outs["series_eos"] / "hessian_series.json")},
                     f12_edge_of_stability, figure)
