"""Findings of the batch-norm post (F5-F11): verdicts from the result files of `bnlab collapse`, the LR
stress runs, `bnlab hessian` and `bnlab outstats` of the three simple nets (BN, frozen BN, no BN).

Each function takes plain data (what the result files hold), so it can be tested on hand-made input.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .record import FindingRecord, decide, finite, fmt
from .spec import BY_ID

F5_LAYERS = (1, 2, 5, 10, 20, 50)
F5_TOL = 0.05
# The centred net's share, measured on its pre-activations before centring, is that of a ReLU of centred
# Gaussians from layer 2 on: 1/pi at every depth when nothing collapses (layer 1 sees the raw inputs).
F5_CENTRED_TARGET = 1 / np.pi
F5_CENTRED_TOL = 0.05
F5_CENTRED_FROM = 2
F6_RATIO = 10.0
F6_CHANCE = 0.15
F6_LEARNED = 0.3
F7_RATIO = 3.0
F7_BN_SHARE = 0.6
F7_FROZEN_SHARE = 0.3
F8_FLIP = 0.5
F8_SHIFT = 0.2
F9_RATIO = 5.0
F9_GAP = 1.8
F9_GAP_K = (8, 9, 10, 11)
F10_TOP = 9
F10_MEANS = 0.6
F10_FULL = 0.9
F10_RANDOM_FACTOR = 2.0
F11_FROZEN_CUT = 3.0
F11_BN_CUT = 1.3

MODELS = ("bn", "frozen", "no_bn")


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
    return decide(BY_ID["F5"], checks, measured, values, notes=notes, needs=needs)


def failure_point(metrics: Sequence[dict[str, Any]], status: dict[str, Any]) -> dict[str, Any]:
    """Where an LR stress run failed: a non-finite loss (the trainer's `diverged` record), or the first epoch
    whose training accuracy is back at chance (<= 0.15) after an earlier epoch exceeded 0.3. The lr is the
    divergence step's, or that epoch's last step's."""
    diverged = status.get("diverged") if status.get("status") == "diverged" else None
    learned = False
    collapse = None
    for row in metrics:
        acc = row.get("train_acc")
        if not finite(acc):
            continue
        if learned and acc <= F6_CHANCE and collapse is None:
            collapse = {"epoch": row["epoch"], "lr": row["lr"], "train_acc": acc}
        learned = learned or acc > F6_LEARNED
    nonfinite = None if diverged is None else {"epoch": diverged.get("epoch"), "lr": diverged.get("lr"),
                                               "step": diverged.get("step"), "reason": diverged.get("reason")}
    events = [e for e in (collapse, nonfinite) if e is not None]
    first = min(events, key=lambda e: e["epoch"]) if events else None
    last_lr = metrics[-1]["lr"] if metrics else None
    return {"failed": first is not None, "lr": None if first is None else first["lr"],
            "how": None if first is None else ("non-finite loss" if first is nonfinite else "accuracy collapse"),
            "nonfinite": nonfinite, "accuracy_collapse": collapse, "last_lr": last_lr,
            "epochs": len(metrics), "max_train_acc": max((r["train_acc"] for r in metrics
                                                          if finite(r.get("train_acc"))), default=None)}


def f6_lr_stress(bn: dict[str, Any], no_bn: dict[str, Any]) -> FindingRecord:
    """F6: `failure_point` of the BN and the no-BN stress runs."""
    ratio = bn["lr"] / no_bn["lr"] if bn["failed"] and no_bn["failed"] else None
    nf = (bn["nonfinite"]["lr"] / no_bn["nonfinite"]["lr"] if bn.get("nonfinite") and no_bn.get("nonfinite")
          else None)
    checks = [("no BN fails within the test", no_bn["failed"]),
              (f"BN never fails, or fails at >= {F6_RATIO:g}x no BN's lr",
               no_bn["failed"] and (not bn["failed"] or (ratio is not None and ratio >= F6_RATIO)))]

    def where(r: dict[str, Any]) -> str:
        return (f"fails at lr {fmt(r['lr'], '.3g')} ({r['how']})" if r["failed"]
                else f"never fails (last lr {fmt(r['last_lr'], '.3g')})")

    measured = f"BN {where(bn)}; no BN {where(no_bn)}" + (f"; ratio {ratio:.1f}x" if ratio else "")
    values = {"bn": bn, "no_bn": no_bn, "ratio": ratio, "ratio_nonfinite_only": nf}
    return decide(BY_ID["F6"], checks, measured, values)


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
    return decide(BY_ID["F7"], checks, measured, values)


def _perturbation(o: dict[str, Any]) -> dict[str, float]:
    rows = o["perturbation"]["rows"]
    return {"frac_before": float(np.mean([r["frac_before"] for r in rows])),
            "frac_grad": float(np.mean([r["frac_after_grad"] for r in rows])),
            "shift_grad": float(np.mean([abs(r["frac_after_grad"] - r["frac_before"]) for r in rows])),
            "shift_random": float(np.mean([abs(r["frac_after_random"] - r["frac_before"]) for r in rows])),
            "delta": o["perturbation"]["delta"]}


def f8_perturbation(outstats: dict[str, dict[str, Any]]) -> FindingRecord:
    """F8: fraction predicting c after a 1% step along ∇mean_c, and the shifts of BN's and random steps
    (means over the classes of outstats' perturbation table)."""
    p = {m: _perturbation(outstats[m]) for m in MODELS}
    rand = max(p[m]["shift_random"] for m in MODELS)
    checks = [(f"frozen predicts c: {p['frozen']['frac_grad']:.2f} >= {F8_FLIP:g}",
               p["frozen"]["frac_grad"] >= F8_FLIP),
              (f"no BN predicts c: {p['no_bn']['frac_grad']:.2f} >= {F8_FLIP:g}", p["no_bn"]["frac_grad"] >= F8_FLIP),
              (f"BN's shift {p['bn']['shift_grad']:.2f} < {F8_SHIFT:g}", p["bn"]["shift_grad"] < F8_SHIFT),
              (f"random steps' shift {rand:.2f} < {F8_SHIFT:g}", rand < F8_SHIFT)]
    measured = (f"fraction -> c after the step: frozen {p['frozen']['frac_grad']:.2f}, "
                f"no BN {p['no_bn']['frac_grad']:.2f}, "
                f"BN {p['bn']['frac_grad']:.2f} (shift {p['bn']['shift_grad']:.2f}); random shift <= {rand:.2f}")
    return decide(BY_ID["F8"], checks, measured, {"models": p, "random_shift_max": rand})


def f9_sharpness(eig: dict[str, Sequence[float]]) -> FindingRecord:
    """F9: top eigenvalues of BN (batch mode) and frozen BN on the same weights and evaluation set
    (`bnlab hessian`, same units); the frozen spectrum's largest gap lambda_k/lambda_(k+1), k in 8..11."""
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
              "gap": gap}
    return decide(BY_ID["F9"], checks, measured, values, needs=needs)


def f10_overlap(frozen: dict[str, Any]) -> FindingRecord:
    """F10: median squared overlap of the frozen net's top-9 eigenvectors with the means span and the full
    span (outstats.json with eigenvectors), and the random-vector control against dim/P."""
    e, span = frozen["eigen"], frozen["span"]
    means = e["overlap_means"][:F10_TOP]
    full = e["overlap_full"][:F10_TOP]
    med_m, med_f = float(np.median(means)), float(np.median(full))
    rnd = float(np.mean(span["random_overlap_full"]))
    expect = span["random_overlap_expected"]
    factor = max(rnd / expect, expect / rnd) if rnd > 0 and expect > 0 else float("inf")
    needs = [(f"{F10_TOP} eigenvectors (have {len(means)})", len(means) >= F10_TOP)]
    checks = [(f"median overlap, means span {med_m:.2f} >= {F10_MEANS:g}", med_m >= F10_MEANS),
              (f"full span {med_f:.2f} >= {F10_FULL:g}", med_f >= F10_FULL),
              (f"random overlap {rnd:.2g} within {F10_RANDOM_FACTOR:g}x of dim/P {expect:.2g}",
               factor <= F10_RANDOM_FACTOR)]
    measured = (f"frozen v1-v{len(means)} median overlap {med_m:.2f} (means, {span['means_dim']}-D), {med_f:.2f} "
                f"(full, {span['full_dim']}-D); random {rnd:.1e} vs dim/P {expect:.1e}")
    values = {"overlap_means": means, "overlap_full": full, "median_means": med_m, "median_full": med_f,
              "random_overlap": rnd, "random_expected": expect, "means_dim": span["means_dim"],
              "full_dim": span["full_dim"]}
    return decide(BY_ID["F10"], checks, measured, values, needs=needs)


def f11_projection(outstats: dict[str, dict[str, Any]]) -> FindingRecord:
    """F11: lambda1 before / after projecting the statistics' span out of the Hessian (outstats.json with
    eigenvectors and --project), frozen and BN (no BN reported)."""
    cut = {}
    for m in MODELS:
        o = outstats.get(m)
        if o and o.get("eigen", {}).get("eigenvalues") and o.get("projected"):
            cut[m] = {"before": o["eigen"]["eigenvalues"][0], "after": o["projected"]["eigenvalues"][0]}
            cut[m]["cut"] = cut[m]["before"] / cut[m]["after"] if cut[m]["after"] > 0 else float("inf")
    fr, bn = cut.get("frozen", {}).get("cut"), cut.get("bn", {}).get("cut")
    checks = [(f"frozen cut {fmt(fr, '.2f')}x >= {F11_FROZEN_CUT:g}x", finite(fr) and fr >= F11_FROZEN_CUT),
              (f"BN cut {fmt(bn, '.2f')}x <= {F11_BN_CUT:g}x", finite(bn) and bn <= F11_BN_CUT)]
    measured = "; ".join(f"{m} {c['before']:.4g} -> {c['after']:.4g} ({c['cut']:.2f}x)" for m, c in cut.items())
    return decide(BY_ID["F11"], checks, measured, {"models": cut})
