"""analyses/batchnorm_post.py: the post's claims as numbers on hand-made rows, and the pipeline at smoke size."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "batchnorm_post.py"


def load_script():
    spec = importlib.util.spec_from_file_location("batchnorm_post", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rows(**changes: dict) -> dict:
    """Rows that satisfy every claim with some margin; `changes` override per model."""
    base = {
        "bn": {"grad_norm_mean": 1.0, "classifier_share": 0.8, "frac_grad": 0.1, "frac_random": 0.1,
               "overlap_full": [0.1, 0.2, 0.3], "top_eigs": [100.0], "projected": 90.0},
        "frozen": {"grad_norm_mean": 4.0, "classifier_share": 0.1, "frac_grad": 0.5, "frac_random": 0.1,
                   "overlap_full": [0.9, 0.6, 0.95], "top_eigs": [2000.0], "projected": 400.0},
        "no_bn": {"grad_norm_mean": 5.0, "classifier_share": 0.2, "frac_grad": 0.4, "frac_random": 0.12,
                  "overlap_full": [0.8], "top_eigs": [3000.0], "projected": 1000.0},
    }
    for m, d in changes.items():
        base[m] = {**base[m], **d}
    return base


def test_claims_pass_and_each_threshold_fails() -> None:
    bp = load_script()
    assert [ok for _, _, ok in bp.claims(rows())] == [True] * 5
    # one violation at a time flips exactly the claim it belongs to
    cases = [({"frozen": {"grad_norm_mean": 2.9}}, 0), ({"bn": {"classifier_share": 0.49}}, 1),
             ({"no_bn": {"classifier_share": 0.5}}, 1), ({"no_bn": {"frac_grad": 0.29}}, 2),
             ({"bn": {"frac_grad": 0.2}}, 2), ({"bn": {"frac_random": 0.15}}, 2),
             ({"frozen": {"overlap_full": [0.49, 0.4, 0.9]}}, 3), ({"frozen": {"projected": 700.0}}, 4)]
    for change, which in cases:
        verdict = [ok for _, _, ok in bp.claims(rows(**change))]
        assert verdict == [i != which for i in range(5)], (change, verdict)
    text = bp.claims(rows())[4][1]
    assert text == "5.0x"  # 2000 / 400


def test_smoke_run_writes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bp = load_script()
    threads = torch.get_num_threads()
    out = tmp_path / "o"
    monkeypatch.setattr(sys, "argv", ["batchnorm_post.py", "--smoke", "--out", str(out), "--threads", "1"])
    try:
        bp.main()
        summary = json.loads((out / "summary.json").read_text())
        assert set(summary["rows"]) == {"bn", "frozen", "no_bn"} and len(summary["checks"]) == 5
        for r in summary["rows"].values():
            assert len(r["top_eigs"]) == 2 and len(r["overlap_full"]) == 2 and r["projected"] <= r["top_eigs"][0]
            assert 0 <= r["classifier_share"] <= 1
        table = (out / "table.md").read_text()
        assert "| top Hessian eigenvalue |" in table and "2246" in table and table.count("[PASS]") + \
            table.count("[FAIL]") == 5
        # finished steps are reused: a rerun recomputes nothing
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".pt", ".json") and
                  p.parent != out}
        bp.main()
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    finally:
        torch.set_num_threads(threads)


def test_data_dir_required_without_smoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    bp = load_script()
    monkeypatch.setattr(sys, "argv", ["batchnorm_post.py", "--out", "x"])
    with pytest.raises(SystemExit) as e:
        bp.main()
    assert e.value.code == 2 and "--data-dir is required" in capsys.readouterr().err
