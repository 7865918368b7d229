"""Every JSON file bnlab writes is strict JSON (no NaN/Infinity), even for runs that produce NaNs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.io.jsonfile import read_json, write_json
from bnlab.train import train
from conftest import tiny_config


def _strict(text: str) -> object:
    def refuse(name: str) -> object:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_writer_maps_non_finite_to_null(tmp_path: Path) -> None:
    obj = {"a": float("nan"), "b": [1.0, float("inf"), -float("inf")], "c": np.float32(2.5), "d": np.arange(3),
           "e": (1, 2), "f": Path("x/y")}
    write_json(tmp_path / "x.json", obj)
    got = _strict((tmp_path / "x.json").read_text())
    assert got == {"a": None, "b": [1.0, None, None], "c": 2.5, "d": [0, 1, 2], "e": [1, 2], "f": "x/y"}
    assert read_json(tmp_path / "x.json") == got
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_json_of_a_diverged_run_and_its_analyses(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(lr=1e6, epochs=1), run, quiet=True)  # diverges: NaN losses in the records
    r = CliRunner().invoke(main, ["dynamics", str(run), "--out", str(tmp_path / "dyn"), "-q"])
    assert r.exit_code in (0, 2), r.output
    files = list(tmp_path.rglob("*.json"))
    assert files
    for f in files:
        data = _strict(f.read_text())
        assert data is not None
    status = _strict((run / "status.json").read_text())
    assert status["status"] == "diverged" and not math.isnan(status["diverged"]["lr"])
