"""F7, output-mean gradients: ‖∇mean‖² of the three simple nets against BN's, and the classifier's share of
it (their outstats.json)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import FindingDef
from .common import MODELS, P7, three_outstats
from .posts import PostNumber
from .record import Finding, FindingRecord, decide, num

F7_RATIO = 3.0
F7_BN_SHARE = 0.6
F7_FROZEN_SHARE = 0.3

SPEC = Finding(
    "F7", "batch-norm", "output-mean gradients",
    "The gradients of the logits' per-class batch means are large without BN and with frozen BN, small "
    "with BN, whose gradient mass sits in the classifier.",
    P7, "‖∇mean‖² BN 2.76 / frozen 19.3 / no BN 38.2; classifier share 83.6% / 11.9% / 16.9%",
    f"‖∇mean‖² frozen/BN >= {num(F7_RATIO)} and no BN/BN >= {num(F7_RATIO)}; classifier share BN >= "
    f"{num(F7_BN_SHARE)} and frozen <= {num(F7_FROZEN_SHARE)}")


def _mean_sq_norm(o: dict[str, Any]) -> float:
    """Mean over classes of ‖∇mean_c‖² (the post reports class 0's)."""
    return float(np.mean(np.square(o["grad_norms"]["mean"])))


def _classifier_share(o: dict[str, Any]) -> float:
    """Mean over classes of the classifier's share of ‖∇mean_c‖²."""
    i = o["layers"].index("classifier")
    return float(np.mean([v[i] for k, v in o["layer_shares"].items() if k.startswith("mean[")]))


def f7_mean_gradients(outstats: dict[str, dict[str, Any]]) -> FindingRecord:
    """F7: ‖∇mean‖² ratios to BN and the classifier's share (outstats.json of bn, frozen, no_bn)."""
    sq = {m: _mean_sq_norm(outstats[m]) for m in MODELS}
    share = {m: _classifier_share(outstats[m]) for m in MODELS}
    r_frozen, r_nobn = sq["frozen"] / sq["bn"], sq["no_bn"] / sq["bn"]
    checks = [(f"‖∇mean‖² frozen/BN {r_frozen:.1f} >= {F7_RATIO:g}", r_frozen >= F7_RATIO),
              (f"no BN/BN {r_nobn:.1f} >= {F7_RATIO:g}", r_nobn >= F7_RATIO),
              (f"classifier share BN {share['bn']:.2f} >= {F7_BN_SHARE:g}", share["bn"] >= F7_BN_SHARE),
              (f"frozen {share['frozen']:.2f} <= {F7_FROZEN_SHARE:g}", share["frozen"] <= F7_FROZEN_SHARE)]
    measured = (f"‖∇mean‖² BN {sq['bn']:.3g} / frozen {sq['frozen']:.3g} / no BN {sq['no_bn']:.3g} "
                f"({r_frozen:.1f}x, {r_nobn:.1f}x); classifier share {share['bn']:.2f} / {share['frozen']:.2f} / "
                f"{share['no_bn']:.2f}")
    values = {"sq_norm": sq, "ratio_frozen": r_frozen, "ratio_no_bn": r_nobn, "classifier_share": share,
              "class0_layer_sq_norms": {m: dict(zip(outstats[m]["layers"], outstats[m]["layer_sq_norms"]["mean[0]"]))
                                        for m in MODELS}}
    return decide(SPEC, checks, measured, values)


def figure(f: Any) -> Any:
    """Class 0's ‖∇mean‖² per layer of each model."""
    import pandas as pd
    import seaborn as sns

    from ..plotting import panels, style

    runs, names = panels.named_outstats(f)
    rows = [{"model": names[m], "layer": lay, "sq_norm": v} for m, s in runs.items()
            for lay, v in zip(s["layers"], s["layer_sq_norms"]["mean[0]"])]
    fig, (ax,) = panels.panel(f, 11, 4.6)
    sns.barplot(pd.DataFrame(rows), x="layer", y="sq_norm", hue="model", palette=style.color_map(names.values()),
                ax=ax)
    ax.set(yscale="log", ylabel="‖∇ mean logit 0‖² in the layer", xlabel="layer")
    style.plain_log_ticks(ax)
    style.rotate_xticks(ax)
    style.legend_outside(ax, title="model")
    return fig


def _class0(v: dict[str, Any], m: str) -> float:
    """‖∇mean_0‖², class 0's (the post's), summed over the layers."""
    return float(sum(v["class0_layer_sq_norms"][m].values()))


def _class0_share(v: dict[str, Any], m: str) -> float:
    return v["class0_layer_sq_norms"][m]["classifier"] / _class0(v, m)


_NAMES = {"bn": "BN", "frozen": "frozen BN", "no_bn": "no BN"}
POSTS = (*(PostNumber("‖∇ mean logit 0‖², loss of a batch of 256", _NAMES[m], src, txt,
                      lambda v, m=m: _class0(v, m))
           for m, src, txt in (("bn", 2.76, "2.76"), ("frozen", 19.3, "19.3"), ("no_bn", 38.2, "38.2"))),
         *(PostNumber("classifier's share of ‖∇ mean logit 0‖²", _NAMES[m], src, txt,
                      lambda v, m=m: _class0_share(v, m))
           for m, src, txt in (("bn", 0.836, "83.6%"), ("frozen", 0.119, "11.9%"), ("no_bn", 0.169, "16.9%"))))

FINDING = FindingDef(SPEC, tuple(f"outstats_{m}" for m in MODELS), lambda outs: {"outstats": three_outstats(outs)},
                     f7_mean_gradients, figure, posts=POSTS)
