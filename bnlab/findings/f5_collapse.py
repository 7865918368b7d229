"""F5, collapse at initialisation: `bnlab collapse`'s ReLU MLP at init against the arc-cosine prediction, its
centred net (as BN centres), and DavidNet at init with and without BN (`bnlab.outstats.init_shares`, reported)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..io.jsonfile import read_json
from .base import FindingDef, Outs
from .common import P7
from .record import Finding, FindingRecord, decide, fmt, num

F5_LAYERS = (1, 2, 5, 10, 20, 50)
F5_TOL = 0.05
# The centred net's share, measured on its pre-activations before centring, is that of a ReLU of centred
# Gaussians from layer 2 on: 1/pi at every depth when nothing collapses (layer 1 sees the raw inputs).
F5_CENTRED_TARGET = 1 / np.pi
F5_CENTRED_TOL = 0.05
F5_CENTRED_FROM = 2

SPEC = Finding(
    "F5", "batch-norm", "collapse at initialisation",
    "Without normalisation, deep ReLU nets at init output nearly the same value for every input: the "
    "channel-mean share of each channel's second moment grows with depth; centring prevents it.",
    f"{P7}; L (Cho & Saul 2009), A",
    "per-channel output histograms (no number); DavidNet width 8: layer3 0.76 no BN vs 0.55 BN, "
    "logits 0.91 vs 0.89",
    f"FC ReLU net (depth {max(F5_LAYERS)}): share at layers {', '.join(map(str, F5_LAYERS))} within "
    f"+-{num(F5_TOL)} of the arc-cosine recursion (0, .32, .68, .85, .94, .99); centred net (pre-activations "
    f"centred, as by BN; share measured before centring) flat at 1/pi +-{num(F5_CENTRED_TOL)} at every layer >= "
    f"{F5_CENTRED_FROM}. DavidNet at init: shares reported side by side, no threshold")


def f5_collapse(collapse: dict[str, Any], init_shares: dict[str, dict[str, float]] | None = None) -> FindingRecord:
    """F5: `bnlab collapse`'s ReLU MLP at init against the arc-cosine prediction at layers 1, 2, 5, 10, 20, 50,
    and its centred net (pre-activations centred over the inputs, as BN does) at every layer; DavidNet at
    init is reported beside them (no threshold).

    collapse: collapse.json (depth, share_plain, theory_share, share_centred).
    init_shares: {"bn": {layer: share}, "no_bn": {...}} of DavidNet at init.
    """
    depth = int(collapse["depth"])
    layers = [n for n in F5_LAYERS if n <= depth]
    plain = {n: collapse["share_plain"][n - 1] for n in layers}
    theory = {n: collapse["theory_share"][n - 1] for n in layers}
    dev = {n: abs(plain[n] - theory[n]) for n in layers}
    worst = max(dev.values(), default=float("nan"))
    centred = list(collapse["share_centred"])
    flat = centred[F5_CENTRED_FROM - 1:]
    centred_dev = [abs(c - F5_CENTRED_TARGET) for c in flat]
    centred_worst = max(centred_dev, default=float("nan"))
    worst_layer = centred_dev.index(centred_worst) + F5_CENTRED_FROM if flat else None
    centred_max = max(centred, default=float("nan"))
    needs = [(f"a net of depth >= {max(F5_LAYERS)} (layers {', '.join(map(str, F5_LAYERS))}; ran depth {depth})",
              layers == list(F5_LAYERS))]
    checks = [(f"plain share within +-{F5_TOL:g} of the arc-cosine prediction (worst {fmt(worst, '.3f')})",
               bool(layers) and worst <= F5_TOL),
              (f"centred share flat at 1/pi +-{F5_CENTRED_TOL:g} at every layer >= {F5_CENTRED_FROM} (worst "
               f"{fmt(centred_worst, '.3f')} off, at layer {worst_layer})",
               bool(flat) and centred_worst <= F5_CENTRED_TOL)]
    measured = ("plain " + ", ".join(f"{plain[n]:.2f}" for n in layers) + " vs theory "
                + ", ".join(f"{theory[n]:.2f}" for n in layers) + f" (worst {fmt(worst, '.3f')}); centred "
                + ", ".join(f"{centred[n - 1]:.2f}" for n in layers))
    notes = ["The centred net's share is measured where the plain net's is, on the pre-activations before "
             "centring: from layer 2 on it is the share of a ReLU of centred inputs, 1/pi ~ 0.318, at every "
             "depth when nothing collapses (the share after centring is 0 by construction)."]
    out_of_band = [n for n, d in enumerate(centred_dev, start=F5_CENTRED_FROM) if d > F5_CENTRED_TOL]
    spread = collapse.get("norm_spread_centred")
    if out_of_band and spread:
        first = out_of_band[0]
        notes.append(f"The centred share leaves the band from layer {first} on ({centred[first - 1]:.3f} there, "
                     f"{centred[-1]:.3f} at layer {depth}). The inputs' pre-activation norms spread apart with depth "
                     f"(max/median {spread[F5_CENTRED_FROM - 1]:.2f} at layer {F5_CENTRED_FROM}, "
                     f"{spread[first - 1]:.1f} at layer {first}, {spread[-1]:.1f} at layer {depth}): centring keeps "
                     "the inputs decorrelated but does not normalise their scale, so a few inputs come to dominate "
                     "every channel. A finite-width effect: it sets in earlier at smaller width.")
    if init_shares:
        common = [k for k in init_shares.get("no_bn", {}) if k in init_shares.get("bn", {})]
        notes.append("DavidNet at init, channel-mean share no BN vs BN (no threshold): " + ", ".join(
            f"{k} {init_shares['no_bn'][k]:.2f} vs {init_shares['bn'][k]:.2f}" for k in common))
    values = {"layers": layers, "plain": plain, "theory": theory, "deviation": dev, "centred": centred,
              "centred_max": centred_max, "centred_worst_deviation": centred_worst, "davidnet_init": init_shares}
    return decide(SPEC, checks, measured, values, notes=notes, needs=needs)


def load(outs: Outs) -> dict[str, Any]:
    return {"collapse": read_json(outs["collapse_fc"] / "collapse.json"),
            "init_shares": read_json(outs["init_shares"] / "init_shares.json")["shares"]}


def figure(f: Any) -> Any:
    """Left: the FC net's share per layer, plain and centred, against the prediction and the band; right:
    DavidNet at init per layer, with and without BN."""
    import pandas as pd
    import seaborn as sns

    from ..plotting import panels, style

    c = f.json("collapse_fc", "collapse.json")
    layers = np.arange(1, c["depth"] + 1)
    fig, axes = panels.panel(f, 14, 4.6, 2)
    c1, c2 = style.colors(2)
    axes[0].plot(layers, c["share_plain"], color=c1, label="ReLU MLP")
    axes[0].plot(layers, c["theory_share"], "k--", label="arc-cosine prediction")
    axes[0].plot(layers, c["share_centred"], color=c2, label="pre-activations centred (as BN)")
    lo, hi = F5_CENTRED_TARGET - F5_CENTRED_TOL, F5_CENTRED_TARGET + F5_CENTRED_TOL
    axes[0].fill_between(layers[F5_CENTRED_FROM - 1:], lo, hi, color=c2, alpha=0.15, lw=0,
                         label=f"1/π ± {num(F5_CENTRED_TOL)} (F5's band, centred, layers ≥ {F5_CENTRED_FROM})")
    axes[0].set(xlabel="layer", ylabel="channel-mean share", ylim=(0, 1.02),
                title=f"FC net at init: width {c['width']}, {c['n_inputs']} inputs")
    style.integer_ticks(axes[0])
    axes[0].legend(fontsize=8, loc="center right")
    init = f.json("init_shares", "init_shares.json")
    rows = [{"net": panels.MODEL_LABELS.get(m, m), "layer": k, "share": v} for m, d in init["shares"].items()
            for k, v in d.items()]
    nets = list(dict.fromkeys(r["net"] for r in rows))
    sns.barplot(pd.DataFrame(rows), x="layer", y="share", hue="net", palette=style.color_map(nets), ax=axes[1])
    axes[1].set(ylim=(0, 1), title=f"DavidNet width {init['width']} at init (reported, no threshold)")
    style.rotate_xticks(axes[1])
    style.legend_outside(axes[1], title="DavidNet")
    return fig


FINDING = FindingDef(SPEC, ("collapse_fc", "init_shares"), load, f5_collapse, figure)
