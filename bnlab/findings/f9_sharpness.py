"""F9, frozen BN is far sharper: top Hessian eigenvalues of BN (batch mode) and frozen BN on the same weights
and batches (`bnlab hessian`, batch-summed units), and the frozen spectrum's gap after about C outliers."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io.jsonfile import read_json
from .base import FindingDef, Outs
from .common import MODELS, P7, read_csv_rows
from .posts import PostNumber
from .record import Finding, FindingRecord, decide, finite, fmt, num

F9_RATIO = 5.0
F9_GAP = 1.8
F9_GAP_K = (8, 9, 10, 11)

SPEC = Finding(
    "F9", "batch-norm", "frozen BN is far sharper; outliers + gap",
    "Freezing BN makes the loss far sharper on the same weights; its spectrum has about C outliers, "
    "then a gap.",
    P7, "top eigenvalue (batch-summed) BN 127.9, frozen 2246, no BN 3486; frozen: 9 outliers then ~435",
    f"lambda1(frozen) / lambda1(BN) >= {num(F9_RATIO)}; frozen lambda_k / lambda_(k+1) >= {num(F9_GAP)} at some k in "
    f"{min(F9_GAP_K)}..{max(F9_GAP_K)}")


def outliers(eigenvalues: Sequence[float]) -> int:
    """The outlier count of a spectrum: the k of its largest lambda_k / lambda_(k+1) when that reaches F9's gap,
    else 0 (no separated top, as the post says of BN)."""
    ev = [float(v) for v in eigenvalues]
    gaps = {k: ev[k - 1] / ev[k] for k in range(1, len(ev)) if ev[k] > 0}
    k = max(gaps, key=gaps.get) if gaps else 0
    return k if k and gaps[k] >= F9_GAP else 0


def _sample_check(halves: dict[str, dict[str, Any]]) -> str:
    """lambda1 frozen/BN on each half of the sample, and how far each model's lambda1 moves between them."""
    bn, fr = halves["bn"]["lambda1"], halves["frozen"]["lambda1"]
    ratios = [f / b if b > 0 else float("nan") for f, b in zip(fr, bn)]
    spread = {m: fmt(100 * (halves[m]["spread"] or 0), ".0f") for m in ("bn", "frozen")}
    return (f"two halves of the sample ({'+'.join(map(str, halves['bn']['num_samples']))} images): lambda1 frozen/BN "
            f"{fmt(ratios[0], '.1f')}x and {fmt(ratios[1], '.1f')}x; lambda1 spread BN {spread['bn']}%, frozen "
            f"{spread['frozen']}%")


def f9_sharpness(eig: dict[str, Sequence[float]], halves: dict[str, dict[str, Any]] | None = None,
                 accuracy: dict[str, dict[str, float]] | None = None) -> FindingRecord:
    """F9: top eigenvalues of BN (batch mode) and frozen BN on the same weights and evaluation set
    (`bnlab hessian`, same units); the frozen spectrum's largest gap lambda_k/lambda_(k+1), k in 8..11.

    Reported beside it, no threshold: each model's outlier count, its accuracy (train/test of the last epoch,
    the frozen net's test accuracy after its BN refresh), and `halves` (lambda1 on two disjoint halves of a
    sample smaller than the post's: `bnlab.curvature.halves`)."""
    bn, fr = list(eig["bn"]), list(eig["frozen"])
    ratio = fr[0] / bn[0] if bn and fr and bn[0] > 0 else float("nan")
    gaps = {k: fr[k - 1] / fr[k] for k in F9_GAP_K if k < len(fr) and fr[k] > 0}
    k_best = max(gaps, key=gaps.get) if gaps else None
    gap = gaps.get(k_best, float("nan")) if k_best else float("nan")
    needs = [(f"frozen top-{max(F9_GAP_K) + 1} eigenvalues (have {len(fr)})", len(fr) > max(F9_GAP_K))]
    checks = [(f"lambda1 frozen/BN {fmt(ratio, '.1f')} >= {F9_RATIO:g}", finite(ratio) and ratio >= F9_RATIO),
              (f"frozen gap {fmt(gap, '.2f') if finite(gap) else '(not measured)'} >= {F9_GAP:g} at some k in 8..11",
               finite(gap) and gap >= F9_GAP)]
    extra = f", no BN {eig['no_bn'][0]:.4g}" if eig.get("no_bn") else ""
    gap_text = (f"frozen largest gap lambda{k_best}/lambda{k_best + 1} = {fmt(gap, '.2f')}" if k_best else
                f"frozen gap at k in {min(F9_GAP_K)}..{max(F9_GAP_K)}: not measured (top-{len(fr)} only)")
    measured = (f"lambda1 BN {fmt(bn[0] if bn else None, '.4g')}, frozen {fmt(fr[0] if fr else None, '.4g')}{extra} "
                f"({fmt(ratio, '.1f')}x); {gap_text}")
    values = {"eigenvalues": {m: list(v) for m, v in eig.items()}, "ratio": ratio, "gaps": gaps, "gap_k": k_best,
              "gap": gap, "outliers": {m: outliers(v) for m, v in eig.items()}, "accuracy": accuracy,
              "halves": halves}
    sample = _sample_check(halves) if halves else None
    return decide(SPEC, checks, measured, values, needs=needs, sample=sample)


def _accuracy(outs: Outs) -> dict[str, dict[str, float]]:
    acc = {}
    for m, stage in (("bn", "train_simple_bn"), ("no_bn", "train_simple_no_bn")):
        if stage in outs:
            last = read_csv_rows(outs[stage] / "metrics.csv")[-1]
            acc[m] = {"train": float(last["train_acc"]), "test": float(last["test_acc"])}
    if "freeze_simple_bn" in outs:  # the frozen net's test accuracy, from its stage record
        acc["frozen"] = {"test": read_json(outs["freeze_simple_bn"].parent / "stage.json")["outputs"]["test_acc"]}
    return acc


def load(outs: Outs) -> dict[str, Any]:
    halves = {m: read_json(outs[f"halves_{m}"] / "halves.json") for m in ("bn", "frozen") if f"halves_{m}" in outs}
    return {"eig": {m: read_json(outs[f"hessian_{m}"] / "hessian.json")["eigen"]["eigenvalues"] for m in MODELS},
            "halves": halves if len(halves) == 2 else None, "accuracy": _accuracy(outs)}


def figure(f: Any) -> Any:
    """The top eigenvalues of the three models by rank, and where the frozen gap is."""
    from ..plotting import panels, style

    fig, (ax,) = panels.panel(f, 10, 4.6)
    names = panels.model_names(f, lambda m: f"hessian_{m}", "hessian.json")
    colors = style.color_map(names.values())
    k_max = 1
    for m, ev in f.values["eigenvalues"].items():
        k_max = max(k_max, len(ev))
        ax.plot(np.arange(1, len(ev) + 1), ev, "o-", color=colors[names.get(m, m)], label=names.get(m, m))
    k = f.values.get("gap_k")
    if k:
        ax.axvline(k + 0.5, color="black", ls="--", lw=1.2, label=f"largest frozen gap (after λ{k})")
    ax.set(xlabel="rank", ylabel="eigenvalue (loss summed over a batch)", title="Top Hessian eigenvalues",
           xlim=(0.5, k_max + 0.5))
    style.integer_ticks(ax)
    style.log_axis(ax)
    style.legend_outside(ax, title="model")
    return fig


_LAMBDA1 = "lambda1, loss summed over a batch (of 256 in the post)"
POSTS = (
    PostNumber("training accuracy", "BN", 0.858, "85.8%", lambda v: v["accuracy"]["bn"]["train"]),
    PostNumber("test accuracy", "BN", 0.807, "80.7%", lambda v: v["accuracy"]["bn"]["test"]),
    PostNumber("training accuracy", "no BN", 0.833, "83.3%", lambda v: v["accuracy"]["no_bn"]["train"]),
    PostNumber("test accuracy", "no BN", 0.839, "83.9%", lambda v: v["accuracy"]["no_bn"]["test"]),
    PostNumber(_LAMBDA1, "BN", 127.9, "127.9", lambda v: v["eigenvalues"]["bn"][0]),
    PostNumber(_LAMBDA1, "frozen BN", 2246, "2246", lambda v: v["eigenvalues"]["frozen"][0]),
    PostNumber(_LAMBDA1, "no BN", 3486, "3486", lambda v: v["eigenvalues"]["no_bn"][0]),
    PostNumber("outlier count (eigenvalues before the largest gap)", "BN", 0, "none", lambda v: v["outliers"]["bn"]),
    PostNumber("outlier count (eigenvalues before the largest gap)", "frozen BN", 9, "9",
               lambda v: v["outliers"]["frozen"]),
    PostNumber("outlier count (eigenvalues before the largest gap)", "no BN", 11, "11",
               lambda v: v["outliers"]["no_bn"]),
)

FINDING = FindingDef(SPEC, tuple(f"hessian_{m}" for m in MODELS), load, f9_sharpness, figure,
                     optional=("halves_bn", "halves_frozen", "train_simple_bn", "train_simple_no_bn",
                               "freeze_simple_bn"), posts=POSTS)
