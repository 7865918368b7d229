"""analyses/bn_curvature_tour.py runs the API end to end and its numbers are the files' numbers."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "analyses" / "bn_curvature_tour.py"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_tour_writes_what_it_reports(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("tour", SCRIPT)
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    found = tour.main(["--out", str(tmp_path), "--width", "2", "--epochs", "1", "--subset", "128",
                       "--num-samples", "40", "--top-k", "2", "--device", "cpu"])
    assert json.loads((tmp_path / "tour.json").read_text()) == found
    for name in ("bn", "frozen"):
        rec = json.loads((tmp_path / f"hessian_{name}" / "hessian.json").read_text())
        assert rec["eigen"]["eigenvalues"] == pytest.approx(found[name]["hessian"])
    ggn = json.loads((tmp_path / "ggn_frozen" / "hessian.json").read_text())
    assert ggn["eigen"]["eigenvalues"] == pytest.approx(found["frozen"]["ggn"])
    assert 0.0 <= found["frozen"]["overlap_h_g"] <= 1.0 + 1e-9
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in found["frozen"]["overlap_full_span"])
    # G is positive semi-definite, and the means span lies inside the full span
    assert min(found["frozen"]["ggn"]) >= -1e-6 * max(abs(v) for v in found["frozen"]["ggn"])
    assert all(m <= f + 1e-9 for m, f in zip(found["frozen"]["overlap_means_span"],
                                            found["frozen"]["overlap_full_span"]))
    assert found["sharpness_ratio"] == pytest.approx(found["frozen"]["hessian"][0] / found["bn"]["hessian"][0])
