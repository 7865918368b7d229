"""analyses/*.py are thin wrappers over `bnlab reproduce`: each forwards its post's findings, its options,
and --quick as the smoke scale. (The findings themselves: tests/findings and tests/reproduce.)"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"


@pytest.mark.parametrize("script, part", [("weight_decay_post.py", "weight-decay"),
                                          ("batchnorm_post.py", "batch-norm")])
@pytest.mark.parametrize("extra, scale", [(["--quick"], ["--scale", "smoke"]),
                                          (["--scale", "cpu"], ["--scale", "cpu"])])
def test_wrapper_forwards_to_reproduce(monkeypatch: pytest.MonkeyPatch, script: str, part: str,
                                       extra: list[str], scale: list[str]) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr("bnlab.cli.main", lambda argv: calls.append(list(argv)))
    monkeypatch.setattr(sys, "argv", [script, "--out", "o", "--data-dir", "d", *extra])
    runpy.run_path(str(ANALYSES / script), run_name="__main__")
    assert calls == [["reproduce", part, "--out", "o", "--data-dir", "d", *scale]]
