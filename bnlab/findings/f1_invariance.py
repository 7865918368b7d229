"""F1, scale invariance and Pythagorean growth: per-channel |cos(w_c, g_c)| of a trained BN net's BN-preceded
convs (`bnlab dynamics --channels`), and the exact float64 plain-SGD check of `bnlab.dynamics.exact`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.jsonfile import read_json
from .base import FindingDef, Outs
from .common import bn_preceded_convs, read_csv_rows
from .record import Finding, FindingRecord, decide, finite, fmt, num

F1_COS_MAX = 1e-3
F1_PYTHAGORAS_REL = 1e-4

SPEC = Finding(
    "F1", "weight-decay", "scale invariance, Pythagorean growth",
    "A conv followed by train-mode BN is scale-invariant, so its gradient is orthogonal to it (<w,g> = 0); "
    "with lambda = 0 and plain SGD its norm therefore grows by Pythagoras and never shrinks.",
    "A (Euler's identity)", "exact identity (no number)",
    "trained BN net: per channel of the BN-preceded convs, median |cos(w_c, g_c)| over training; their "
    f"median over channels < {num(F1_COS_MAX)}; float64 plain SGD, lambda = 0: |‖w'‖² - ‖w‖² - eta²‖g‖²| <= "
    f"{num(F1_PYTHAGORAS_REL)} eta²‖g‖² at every step and ‖w‖ never decreases")


def f1_scale_invariance(channel_params: Sequence[str], channel_median_cos: Sequence[float],
                        pythagoras: dict[str, Any]) -> FindingRecord:
    """F1: per-channel |cos(w_c, g_c)| of a trained BN net's BN-preceded convs, and Pythagorean growth.

    channel_params/channel_median_cos: one entry per output channel of every BN-preceded conv, its median
    |cos| over the logged steps (NaN for a channel that never had a gradient: dead, excluded). The check is
    on the median over channels; the channels above 1e-3 (BN's eps not negligible against a channel's
    pre-BN variance, e.g. in a fading residual branch) are counted in the record. pythagoras:
    `bnlab.dynamics.exact.pythagoras_check` output (max relative residual, smallest norm increment).
    """
    cos = np.abs(np.asarray(channel_median_cos, dtype=float))
    ok = np.isfinite(cos)
    live = cos[ok]
    median = float(np.median(live)) if live.size else float("nan")
    worst = float(live.max()) if live.size else float("nan")
    worst_param = channel_params[int(np.flatnonzero(ok)[np.argmax(live)])] if live.size else None
    n_over = int((live >= F1_COS_MAX).sum())
    res = pythagoras.get("max_rel_residual")
    dmin = pythagoras.get("min_norm_increment")
    checks = [
        (f"median over {live.size} channels of their median |cos(w_c, g_c)| {fmt(median, '.1e')} < {F1_COS_MAX:g}",
         finite(median) and median < F1_COS_MAX),
        (f"Pythagorean residual {fmt(res, '.1e')} <= {F1_PYTHAGORAS_REL:g}", finite(res) and res <= F1_PYTHAGORAS_REL),
        ("‖w‖ never decreases under plain SGD", finite(dmin) and dmin >= 0),
    ]
    measured = (f"channel median |cos| {fmt(median, '.1e')} (max {fmt(worst, '.1e')}; {n_over}/{live.size} >= "
                f"{F1_COS_MAX:g}); Pythagoras residual {fmt(res, '.1e')}, min relative ‖w‖² increment "
                f"{fmt(dmin, '.1e')}")
    values = {"channels": int(cos.size), "dead_channels": int((~ok).sum()), "median_channel_abs_cos": median,
              "max_channel_abs_cos": worst, "worst_param": worst_param, "channels_over": n_over,
              "pythagoras": pythagoras}
    notes = [f"{n_over} channel(s) sit at or above {F1_COS_MAX:g} (worst {fmt(worst, '.1e')} in {worst_param}): BN's "
             "eps breaks invariance where a channel's pre-BN variance is small."] if n_over else []
    if (~ok).sum():
        notes.append(f"{int((~ok).sum())} channel(s) never had a gradient (dead) and are left out.")
    return decide(SPEC, checks, measured, values, notes=notes)


def load(outs: Outs) -> dict[str, Any]:
    params = bn_preceded_convs(read_json(outs["train_wd_main"] / "config.json"))
    rows = [r for r in read_csv_rows(outs["dynamics_wd_main"] / "dynamics_channels_summary.csv")
            if r["param"] in params]
    cos = [float(r["median_abs_cos"]) if r["median_abs_cos"] not in ("", "nan") else float("nan") for r in rows]
    return {"channel_params": [r["param"] for r in rows], "channel_median_cos": cos,
            "pythagoras": read_json(outs["exact_invariant"] / "exact.json")["pythagoras"]}


def figure(f: Any) -> Any:
    """Left: the channels' median |cos| against the threshold; right: the float64 Pythagorean residual."""
    import pandas as pd
    import seaborn as sns

    from ..plotting import panels, style

    ch = pd.read_csv(f.out("dynamics_wd_main") / "dynamics_channels_summary.csv")
    ch = ch[ch["param"].str.endswith(".conv.weight")].dropna(subset=["median_abs_cos"])
    ch = ch[ch["median_abs_cos"] > 0]
    fig, axes = panels.panel(f, 13, 4.4, 2)
    lo = np.log10(max(ch["median_abs_cos"].min(), 1e-12))
    bins = np.logspace(min(lo, -4), max(np.log10(ch["median_abs_cos"].max()), -2.5) + 0.1, 40)
    params = list(dict.fromkeys(ch["param"]))
    sns.histplot(ch, x="median_abs_cos", hue="param", hue_order=params, multiple="stack", bins=bins, ax=axes[0],
                 palette=style.color_map(params), legend=True)
    axes[0].axvline(F1_COS_MAX, color="black", ls="--", lw=1.2)
    axes[0].text(F1_COS_MAX, 0.97, f" threshold {num(F1_COS_MAX)}", transform=axes[0].get_xaxis_transform(),
                 va="top", fontsize=8)
    axes[0].set(xscale="log", xlabel="per-channel median |cos(w_c, g_c)| over training", ylabel="channels",
                title="Trained BN DavidNet: BN-preceded convs")
    sns.move_legend(axes[0], "upper left", bbox_to_anchor=(1.02, 1), frameon=False, fontsize=7, title="layer")
    p = f.values["pythagoras"]
    res = max(p["max_rel_residual"], 1e-18)
    axes[1].bar(["max Pythagorean\nresidual", "threshold"], [res, F1_PYTHAGORAS_REL], color=style.colors(1) + ["grey"])
    axes[1].bar_label(axes[1].containers[0], labels=[f"{res:.1e}", num(F1_PYTHAGORAS_REL)], fontsize=8)
    axes[1].set(yscale="log", title=f"float64 plain SGD, λ = 0, {p['steps']} steps: ‖w‖² grows by η²‖g‖²")
    return fig


FINDING = FindingDef(SPEC, ("train_wd_main", "dynamics_wd_main", "exact_invariant"), load, f1_scale_invariance,
                     figure)
