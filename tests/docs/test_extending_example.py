"""docs/extending.md's worked example runs as written: the finding module it shows decides both sides of
its threshold from stage files, is NOT RUN without them, reads stages the plan has, and draws its figure."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from bnlab.findings.record import FindingRecord
from bnlab.io.jsonfile import write_json
from bnlab.plotting.panels import FindingView
from bnlab.reproduce.plan import build_plan

PAGE = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    blocks = re.findall(r"^```python extending-example\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)
    assert len(blocks) == 1
    path = tmp_path_factory.mktemp("example") / "f14_flatter.py"
    path.write_text(blocks[0])
    spec = importlib.util.spec_from_file_location("f14_flatter", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outs(tmp_path: Path, bn: float, no_bn: float) -> dict[str, Path]:
    outs = {}
    for m, top in (("bn", bn), ("no_bn", no_bn)):
        outs[f"hessian_{m}"] = tmp_path / m
        outs[f"hessian_{m}"].mkdir()
        write_json(outs[f"hessian_{m}"] / "hessian.json", {"eigen": {"eigenvalues": [top, top / 2]}})
    return outs


@pytest.mark.parametrize("bn, no_bn, verdict", [(100.0, 3486.0, "PASS"), (100.0, 499.0, "FAIL")])
def test_the_example_decides_from_stage_files(example, tmp_path: Path, bn: float, no_bn: float,  # noqa: ANN001
                                              verdict: str) -> None:
    rec = example.FINDING.evaluate(_outs(tmp_path, bn, no_bn))
    assert isinstance(rec, FindingRecord) and rec.verdict == verdict and rec.id == "F14"
    assert rec.threshold == "lambda1(no BN) / lambda1(BN) >= 5"
    assert example.FINDING.evaluate({}).verdict == "NOT RUN"
    assert set(example.FINDING.stages) <= set(build_plan("smoke"))


def test_the_example_draws_its_panel(example, tmp_path: Path) -> None:  # noqa: ANN001
    rec = example.FINDING.evaluate(_outs(tmp_path, 100.0, 3486.0)).to_dict()
    fig = example.FINDING.figure(FindingView(tmp_path, rec))
    assert fig.axes[0].patches[0].get_height() == pytest.approx(34.86)
    assert fig.get_suptitle() == "F14 (PASS): BN flattens the loss"
