"""benchmarks/hessian_vs_peers.py: its error measures on known numbers, bnlab's rows on a known spectrum, and the
cost table at smoke size (the peer rows need `pip install pyhessian hessian-eigenthings`, not a bnlab dependency)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hessian_vs_peers.py"


def load_script():
    spec = importlib.util.spec_from_file_location("hessian_vs_peers", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Diag:
    """diag(spectrum) as an operator."""

    def __init__(self, spectrum: np.ndarray) -> None:
        self.d = torch.tensor(spectrum, dtype=torch.float64)
        self.dim = len(spectrum)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * v


def test_error_measures() -> None:
    b = load_script()
    ref = np.array([10.0, 5.0, 2.0])
    assert b.rel_err(np.array([2.0, 10.0, 5.0]), ref) == 0.0  # order does not matter
    assert b.rel_err(np.array([10.0, 5.5, 2.0, 1.0]), ref) == pytest.approx(0.1)
    assert b.rel_err(np.array([10.0]), ref) == math.inf  # too few eigenvalues
    lm = np.array([-12.0, 10.0])
    assert b.rel_err_lm(np.array([10.0, -12.0, 1.0]), lm) == 0.0
    assert b.rel_err_lm(np.array([10.0, -13.2]), lm) == pytest.approx(0.1)


def test_bnlab_rows_reach_the_target_on_a_known_spectrum() -> None:
    b = load_script()
    spectrum = np.concatenate([[50.0, 40.0, 30.0], np.linspace(-1, 1, 197)])
    op = Diag(spectrum)
    for run in (b.run_bnlab, b.run_arpack):
        row = run(op, 3, np.array([50.0, 40.0, 30.0]), 1e-6)
        assert row["max_rel_err"] <= 1e-6 and row["hvps"] > 0 and row["setting"].startswith("tol=")


def test_cost_table_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = load_script()
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["hessian_vs_peers.py", "--cost-only", "--width", "2", "--num-samples", "20",
                                      "--batch-size", "10", "--cost-repeats", "1", "--threads", "1",
                                      "--synthetic-images", "1024", "--out", str(out)])
    try:
        b.main()
    finally:
        torch.set_num_threads(threads)
    rec = json.loads(out.read_text())
    assert rec["settings"]["num_samples"] == 20 and rec["settings"]["bn_mode"] == "running"
    cost = rec["cost"]
    assert cost["gradient_seconds"] > 0
    for key in ("double_backward / gradient", "func / gradient", "double_backward+cached_graph / gradient"):
        assert 0 < cost[key] < 1000, key
    assert rec["graph_cache"] == {"mode": "auto"} and rec["rows"] == []  # no product of the operator itself
