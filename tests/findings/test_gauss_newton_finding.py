"""F13 on hand-made records at the thresholds' edges, and its evaluator on spectra of known structure."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from bnlab.findings.f13_gauss_newton import F13_GAP, F13_OVERLAP, F13_RESIDUAL, f13_gauss_newton
from bnlab.findings.registry import BY_ID
from bnlab.io.eigvecs import write_eigvecs
from bnlab.io.jsonfile import write_json


def _spectrum(top: float, gap: float, n: int = 12) -> list[float]:
    """Eigenvalues descending: 10 from `top` down slowly, then a drop by `gap` at k = 10."""
    head = [top * 0.97 ** i for i in range(10)]
    return head + [head[-1] / gap * 0.98 ** i for i in range(n - 10)]


def _models(overlap: float = 0.95, residual: float = 0.1, bn_gap: float = 1.2) -> dict:
    sharp = {"hessian": _spectrum(100.0, 3.0), "ggn": _spectrum(99.0, 3.0), "k": 10, "overlap": overlap,
             "residual": [residual * 100.0, 1.0], "class_means": [80.0, 60.0]}
    bn = {"hessian": [10.0 * bn_gap ** -(i // 9) * 0.99 ** i for i in range(12)], "ggn": [9.0] * 12, "k": 10,
          "overlap": 0.3, "residual": [5.0], "class_means": [2.0]}
    return {"bn": bn, "frozen": copy.deepcopy(sharp), "no_bn": copy.deepcopy(sharp)}


@pytest.mark.parametrize("overlap,residual,bn_gap,verdict", [
    (0.95, 0.1, 1.2, "PASS"), (F13_OVERLAP, F13_RESIDUAL, 1.2, "PASS"), (0.899, 0.1, 1.2, "FAIL"),
    (0.95, 0.201, 1.2, "FAIL"), (0.95, 0.1, 1.9, "FAIL")])
def test_f13_threshold_edges(overlap: float, residual: float, bn_gap: float, verdict: str) -> None:
    rec = f13_gauss_newton(_models(overlap, residual, bn_gap), [0.9, 0.8])
    assert rec.verdict == verdict, rec.reason
    assert rec.values["span_overlap_median"] == pytest.approx(0.85)
    assert rec.values["models"]["frozen"]["residual_ratio"] == pytest.approx(residual)


def test_f13_one_sharp_model_failing_fails_and_says_which() -> None:
    m = _models()
    m["no_bn"]["overlap"] = 0.5
    rec = f13_gauss_newton(m)
    assert rec.verdict == "FAIL" and "no_bn: top-10 overlap" in rec.reason and "frozen" not in rec.reason
    m = _models()
    m["bn"]["hessian"] = m["bn"]["hessian"][:9]  # too few to see a gap: not decidable, so not a PASS
    assert f13_gauss_newton(m).verdict == "FAIL"
    m = _models()
    m["frozen"]["residual"] = []
    assert f13_gauss_newton(m).verdict == "FAIL"
    gaps = f13_gauss_newton(_models(bn_gap=F13_GAP)).values["models"]["bn"]["gaps"]
    assert max(gaps.values()) == pytest.approx(F13_GAP / 0.99, rel=1e-12) and set(gaps) == {8, 9, 10, 11}


def test_f13_evaluator_measures_overlaps_from_the_stage_files(tmp_path) -> None:
    """H and G of known top spaces: G's top-2 space tilted by angle t from H's gives overlap cos² t; the frozen
    span holds G's first vector, so its span overlaps are (1, 0)."""
    dim, t = 6, 0.3
    e = torch.eye(dim, dtype=torch.float64)
    H = e[:2]
    G = torch.stack([e[0], math.cos(t) * e[1] + math.sin(t) * e[2]])
    outs = {}
    for name in BY_ID["F13"].stages:
        out = tmp_path / name
        out.mkdir()
        outs[name] = out
        kind, m = name.split("_", 1)
        if kind == "outstats":
            torch.save({"grads": e[:1].float() * 3}, out / "outstats.pt")
            write_json(out / "outstats.json", {"span": {"rtol": 1e-4}})
            continue
        vecs = H if kind == "hessian" else G
        lam = torch.tensor([10.0, 5.0], dtype=torch.float64) * (1 if kind != "residual" else 0.1)
        write_eigvecs(out / "eigvecs.pt", lam, vecs, ["w"], [[dim]], {})
        write_json(out / "hessian.json", {"eigen": {"eigenvalues": lam.tolist()},
                                          **({"class_means": {"eigenvalues": [7.0]}} if kind == "ggn" else {})})
    rec = BY_ID["F13"].evaluate(outs)
    frozen = rec.values["models"]["frozen"]
    assert frozen["overlap"] == pytest.approx((1 + math.cos(t) ** 2) / 2, rel=1e-6)  # eigvecs.pt: float32
    assert frozen["k"] == 2 and frozen["class_means"] == [7.0] and frozen["residual_ratio"] == pytest.approx(0.1)
    assert rec.values["span_overlap"] == pytest.approx([1.0, 0.0], abs=1e-6)
    assert rec.verdict == "FAIL"  # overlap 0.95 passes, but BN's top-12 is not known here
    assert "BN: top-12 of H known" in rec.reason
