"""F5-F12 finding functions on cases with known answers: the arc-cosine recursion, synthetic spectra, stress-run
metrics and hand-made records at the thresholds' edges."""
from __future__ import annotations

import copy
import math

import pytest

from bnlab.findings.f5_collapse import f5_collapse
from bnlab.findings.f6_lr_stress import f6_lr_stress, failure_point
from bnlab.findings.f7_mean_gradients import f7_mean_gradients
from bnlab.findings.f8_perturbation import f8_perturbation
from bnlab.findings.f9_sharpness import f9_sharpness
from bnlab.findings.f10_overlap import f10_overlap
from bnlab.findings.f11_projection import f11_projection
from bnlab.findings.f12_edge_of_stability import f12_edge_of_stability
from bnlab.outstats.collapse import CollapseOptions, run_collapse
from bnlab.outstats.fcnet import arccos_recursion


def _collapse(plain_offset: float = 0.0, centred: float = 1 / math.pi, layer1: float = 0.0) -> dict:
    theory = [c + (1 - c) / 1000 for c in arccos_recursion(50)]
    return {"depth": 50, "theory_share": theory, "share_plain": [t + plain_offset for t in theory],
            "share_centred": [layer1] + [centred] * 49}


def test_arccos_recursion_is_the_findings_curve() -> None:
    c = arccos_recursion(50)
    assert [round(c[n - 1], 2) for n in (1, 2, 5, 10, 20, 50)] == [0.0, 0.32, 0.68, 0.85, 0.94, 0.99]


@pytest.mark.parametrize("offset,centred,verdict", [
    (0.0, 1 / math.pi, "PASS"), (0.0499, 1 / math.pi, "PASS"), (0.0501, 1 / math.pi, "FAIL"),
    (0.0, 1 / math.pi + 0.0499, "PASS"), (0.0, 1 / math.pi - 0.0499, "PASS"),
    (0.0, 1 / math.pi + 0.0501, "FAIL"), (0.0, 1 / math.pi - 0.0501, "FAIL"),
    (0.0, 0.01, "FAIL"),  # the share after centring (0 by construction) is not the quantity measured
])
def test_f5_threshold_edges(offset: float, centred: float, verdict: str) -> None:
    assert f5_collapse(_collapse(offset, centred)).verdict == verdict


def test_f5_centred_clause_starts_at_layer_2() -> None:
    # layer 1 sees the raw Gaussian inputs (share ~0); only the growth from layer 2 on would be a collapse
    assert f5_collapse(_collapse(layer1=0.0)).verdict == "PASS"
    f = f5_collapse(_collapse(layer1=0.9))
    assert f.verdict == "PASS" and f.values["centred_worst_deviation"] == pytest.approx(0.0, abs=1e-12)
    rec = _collapse()
    rec["share_centred"][29] = 0.6  # a collapse at layer 30
    f = f5_collapse(rec)
    assert f.verdict == "FAIL" and "at layer 30" in f.reason


def test_f5_undecided_when_the_net_is_shallower_than_the_layers_checked() -> None:
    c = _collapse()
    c = {k: v[:10] if isinstance(v, list) else v for k, v in c.items()} | {"depth": 10}
    rec = f5_collapse(c)
    assert rec.verdict == "UNDECIDED" and "depth >= 50" in rec.reason and "(holds)" in rec.reason


def test_f5_on_bnlab_collapse() -> None:
    rec = run_collapse(CollapseOptions(depth=50, width=1024, n_inputs=300)).record
    f = f5_collapse(rec, {"bn": {"logits": 0.8}, "no_bn": {"logits": 0.9}})
    assert max(f.values["deviation"].values()) < 0.05  # the plain net follows the recursion
    centred = rec["share_centred"]
    # flat at ~1/pi over the first 25 layers after the first: the correlation collapse is prevented ...
    assert all(abs(c - 1 / math.pi) < 0.05 for c in centred[1:25])
    # ... but at width 1024 the inputs' norms spread apart and the share falls in the deepest layers (measured:
    # below 0.1 at layer 50, norm max/median > 10), which the note names
    assert centred[-1] < 0.15 and rec["norm_spread_centred"][-1] > 10 > rec["norm_spread_centred"][1]
    assert f.verdict == "FAIL" and f.values["centred_worst_deviation"] == pytest.approx(
        max(abs(c - 1 / math.pi) for c in centred[1:]))
    assert "leaves the band from layer" in f.notes[1]
    assert "logits 0.90 vs 0.80" in f.notes[-1]


def _metrics(accs: list[float], lr0: float = 0.01) -> list[dict]:
    return [{"epoch": i + 1, "lr": lr0 * 2 ** ((i + 1) / 2), "train_acc": a} for i, a in enumerate(accs)]


def test_failure_point() -> None:
    m = _metrics([0.2, 0.35, 0.5, 0.12, 0.1])
    fp = failure_point(m, {"status": "finished"})
    assert fp["failed"] and fp["how"] == "accuracy collapse" and fp["lr"] == m[3]["lr"]
    never_learned = failure_point(_metrics([0.1, 0.12, 0.11]), {"status": "finished"})
    assert not never_learned["failed"]  # at chance throughout is not a collapse
    div = failure_point(m[:2], {"status": "diverged", "diverged": {"epoch": 2.5, "lr": 0.3, "step": 9}})
    assert div["failed"] and div["how"] == "non-finite loss" and div["lr"] == 0.3
    # whichever comes first decides
    both = failure_point(m, {"status": "diverged", "diverged": {"epoch": 4.5, "lr": 9.0, "step": 40}})
    assert both["how"] == "accuracy collapse"


def _fp(lr: float | None) -> dict:
    return {"failed": lr is not None, "lr": lr, "how": "non-finite loss" if lr else None,
            "nonfinite": {"lr": lr} if lr else None, "last_lr": 30.0}


@pytest.mark.parametrize("bn,no_bn,verdict", [(None, 0.3, "PASS"), (3.0, 0.3, "PASS"), (2.99, 0.3, "FAIL"),
                                              (None, None, "FAIL"), (3.0, None, "FAIL")])
def test_f6_threshold_edges(bn: float | None, no_bn: float | None, verdict: str) -> None:
    assert f6_lr_stress(_fp(bn), _fp(no_bn)).verdict == verdict


def _outstats(sq: float, classifier_share: float, frac_grad: float, frac_random: float,
              overlaps: tuple[float, float] = (0.7, 0.95), cut: float = 4.0) -> dict:
    layers = ["prep", "layer1", "classifier"]
    rest = (1 - classifier_share) / 2
    shares = [rest, rest, classifier_share]
    return {
        "layers": layers,
        "grad_norms": {"mean": [sq ** 0.5] * 10},
        "layer_sq_norms": {"mean[0]": [sq * s for s in shares]},
        "layer_shares": {f"mean[{c}]": shares for c in range(10)},
        "perturbation": {"delta": 0.01, "rows": [{"class": c, "frac_before": 0.1, "frac_after_grad": frac_grad,
                                                  "frac_after_random": frac_random} for c in range(10)]},
        "eigen": {"eigenvalues": [100.0] * 9, "overlap_means": [overlaps[0]] * 9, "overlap_full": [overlaps[1]] * 9},
        "span": {"means_dim": 9, "full_dim": 29, "random_overlap_full": [1e-4] * 10, "random_overlap_expected": 1e-4},
        "projected": {"eigenvalues": [100.0 / cut]},
    }


@pytest.fixture
def three() -> dict:
    return {"bn": _outstats(1.0, 0.8, 0.15, 0.1, cut=1.1), "frozen": _outstats(3.5, 0.2, 0.7, 0.1),
            "no_bn": _outstats(10.0, 0.25, 0.6, 0.1)}


def test_f7_ratios_and_shares(three: dict) -> None:
    rec = f7_mean_gradients(three)
    assert rec.verdict == "PASS", rec.reason
    assert rec.values["ratio_frozen"] == pytest.approx(3.5)
    assert rec.values["classifier_share"]["bn"] == pytest.approx(0.8)
    t = copy.deepcopy(three)
    t["frozen"] = _outstats(2.9, 0.2, 0.7, 0.1)
    assert f7_mean_gradients(t).verdict == "FAIL"
    t = copy.deepcopy(three)
    t["frozen"] = _outstats(3.5, 0.31, 0.7, 0.1)
    assert f7_mean_gradients(t).verdict == "FAIL"
    t["frozen"], t["bn"] = _outstats(3.5, 0.29, 0.7, 0.1), _outstats(1.0, 0.59, 0.15, 0.1)
    assert "classifier share BN" in f7_mean_gradients(t).reason


def test_f8_flips_and_shifts(three: dict) -> None:
    rec = f8_perturbation(three)
    assert rec.verdict == "PASS", rec.reason
    assert rec.values["models"]["bn"]["shift_grad"] == pytest.approx(0.05)
    t = copy.deepcopy(three)
    t["no_bn"] = _outstats(10.0, 0.25, 0.49, 0.1)
    assert f8_perturbation(t).verdict == "FAIL"
    t = copy.deepcopy(three)
    t["frozen"] = _outstats(3.5, 0.2, 0.7, 0.31)  # a random step that moves predictions by 0.21
    assert f8_perturbation(t).verdict == "FAIL"


def _spectrum(outliers: int, top: float = 1000.0, gap: float = 2.0, n: int = 14) -> list[float]:
    out = [top * 0.9 ** i for i in range(outliers)]
    bulk = out[-1] / gap
    return out + [bulk * 0.97 ** i for i in range(n - outliers)]


def test_f9_gap_on_synthetic_spectra() -> None:
    bn = [100.0 * 0.97 ** i for i in range(14)]
    rec = f9_sharpness({"bn": bn, "frozen": _spectrum(9), "no_bn": _spectrum(11)})
    assert rec.verdict == "PASS" and rec.values["gap_k"] == 9 and rec.values["gap"] == pytest.approx(2.0)
    assert f9_sharpness({"bn": bn, "frozen": _spectrum(5)}).verdict == "FAIL"  # gap outside k = 8..11
    assert f9_sharpness({"bn": bn, "frozen": _spectrum(11, gap=1.8001)}).verdict == "PASS"
    assert f9_sharpness({"bn": bn, "frozen": _spectrum(11, gap=1.79)}).verdict == "FAIL"
    assert f9_sharpness({"bn": bn, "frozen": _spectrum(9, top=499.0)}).verdict == "FAIL"  # ratio < 5
    rec = f9_sharpness({"bn": bn, "frozen": _spectrum(9, n=9)})  # lambda_10.. unknown: gap k = 10, 11 untested
    assert rec.verdict == "UNDECIDED" and "frozen top-12 eigenvalues (have 9)" in rec.reason
    rec = f9_sharpness({"bn": bn, "frozen": _spectrum(3, n=5)})  # no k in 8..11 measurable at all
    assert rec.verdict == "UNDECIDED" and rec.values["gap_k"] is None and "gap (not measured)" in rec.reason
    assert "None" not in rec.measured and rec.measured.endswith("frozen gap at k in 8..11: not measured (top-5 only)")


def test_f10_overlaps() -> None:
    few = _outstats(1, 0.2, 0.7, 0.1, overlaps=(0.6, 0.9))
    few["eigen"] = {k: v[:5] if isinstance(v, list) else v for k, v in few["eigen"].items()}
    rec = f10_overlap(few)
    assert rec.verdict == "UNDECIDED" and "9 eigenvectors (have 5)" in rec.reason
    assert f10_overlap(_outstats(1, 0.2, 0.7, 0.1, overlaps=(0.6, 0.9))).verdict == "PASS"
    assert f10_overlap(_outstats(1, 0.2, 0.7, 0.1, overlaps=(0.59, 0.9))).verdict == "FAIL"
    assert f10_overlap(_outstats(1, 0.2, 0.7, 0.1, overlaps=(0.6, 0.89))).verdict == "FAIL"
    o = _outstats(1, 0.2, 0.7, 0.1)
    o["span"]["random_overlap_full"] = [3e-4] * 10  # 3x dim/P: the span or its random control is wrong
    assert f10_overlap(o).verdict == "FAIL"


def test_f11_cuts(three: dict) -> None:
    assert f11_projection(three).verdict == "PASS"
    t = copy.deepcopy(three)
    t["bn"] = _outstats(1.0, 0.8, 0.15, 0.1, cut=1.31)
    assert f11_projection(t).verdict == "FAIL"
    t["bn"], t["frozen"] = _outstats(1.0, 0.8, 0.15, 0.1, cut=1.29), _outstats(3.5, 0.2, 0.7, 0.1, cut=2.99)
    assert f11_projection(t).verdict == "FAIL"


def _series(ratios: list[float], lrs: list[float] | None = None, converged: bool = True) -> dict:
    """A hessian_series.json record (bnlab.curvature.series schema) with given eta*lambda1/threshold."""
    threshold = 2 * 1.9 / 2.8
    lrs = lrs or [0.1] * len(ratios)
    cps = [{"path": f"ckpt_epoch_{i + 1:03d}.pt", "epoch": i + 1, "step": 100 * (i + 1), "lr": lr,
            "eigenvalues": [r * threshold / lr, 0.5 * r * threshold / lr], "converged": [converged, True],
            "hvps": 20, "warm_started": i > 0, "hvps_cold": None, "eta_lambda1": r * threshold,
            "ratio_to_threshold": r, "overlap_with_previous": None if i == 0 else [[0.9, 0.1], [0.1, 0.9]],
            "wall_time": 1.0} for i, (r, lr) in enumerate(zip(ratios, lrs))]
    return {"format": "bnlab-hessian-series", "version": 1, "run_dir": "run", "momentum": 0.9, "nesterov": True,
            "threshold": threshold, "settings": {}, "checkpoints": cps, "hvps_total": 20 * len(cps)}


def test_f12_edge_of_stability() -> None:
    assert f12_edge_of_stability(_series([0.1, 0.7, 1.0, 1.2, 1.5])).verdict == "PASS"  # first quarter left out
    assert f12_edge_of_stability(_series([0.1, 0.7, 1.0, 2.1, 1.5])).verdict == "FAIL"
    assert f12_edge_of_stability(_series([0.5, 0.5, 2.0, 2.0])).verdict == "PASS"
    assert f12_edge_of_stability(_series([0.5, 0.49, 1.0, 1.0])).verdict == "FAIL"
    assert f12_edge_of_stability(_series([1.0] * 4, converged=False)).verdict == "FAIL"
    # warm-up then a constant phase: only the constant phase counts (the warm-up checkpoint at 0.05 is left out)
    rec = f12_edge_of_stability(_series([0.05, 0.9, 1.0, 1.1, 1.0], lrs=[0.05, 0.1, 0.1, 0.1, 0.1]))
    assert rec.verdict == "PASS" and len(rec.values["phase_ratios"]) >= 2
    rec = f12_edge_of_stability(_series([1.0]))  # one checkpoint: no phase to compare
    assert rec.verdict == "UNDECIDED" and "(have 1)" in rec.reason
    with pytest.raises(ValueError):
        f12_edge_of_stability({"format": "something else"})
