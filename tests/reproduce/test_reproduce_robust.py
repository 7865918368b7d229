"""Reproduction folders under stress (issue 24, items 6 and 10): a stage's result does not depend on -j
(every stage runs with the same fixed torch threads, recorded and part of its key); a damaged or newer
reproduce.json is one line; a stage whose outputs were deleted is redone instead of failing forever."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bnlab.checkpoint import read_checkpoint
from bnlab.cli import main
from bnlab.reproduce.cache import stage_keys
from bnlab.reproduce.plan import build_plan, needed_stages

F6 = ["reproduce", "F6", "--scale", "smoke", "--no-figures", "-q"]  # two independent training stages


def _stages(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "stages").glob("*/stage.json")}


def _weights(out: Path, stage: str) -> dict[str, torch.Tensor]:
    return read_checkpoint(out / "stages" / stage / "out" / "final.pt")["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def one_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repro") / "j1"
    r = CliRunner().invoke(main, [*F6, "-j", "1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_stage_results_do_not_depend_on_jobs(one_job: Path, tmp_path: Path) -> None:
    two = tmp_path / "j2"
    r = CliRunner().invoke(main, [*F6, "-j", "2", "--out", str(two)])
    assert r.exit_code == 0, r.output
    a, b = _stages(one_job), _stages(two)
    assert set(a) == set(b) and len(a) == 2  # the same stage keys...
    for name in a:  # ...holding bit-identical weights and losses, trained with the same recorded threads
        assert _same(_weights(one_job, name), _weights(two, name)), name
        ma, mb = a[name]["outputs"]["last_metrics"], b[name]["outputs"]["last_metrics"]
        assert (ma["train_loss"], ma["test_acc"]) == (mb["train_loss"], mb["test_acc"])
        assert a[name]["threads"] == b[name]["threads"] == 1
    assert json.loads((two / "reproduce.json").read_text())["runs"][-1]["threads"] == 1


def test_threads_are_part_of_the_key() -> None:
    plan = build_plan("smoke")
    names = needed_stages(plan, ("F6",))
    ctx = {"data": "synthetic", "device_type": "cpu"}
    one, two = (stage_keys(plan, names, {**ctx, "threads": t}) for t in (1, 2))
    assert all(one[n] != two[n] for n in names)


MANIFESTS = {
    "runs a string": {"format": "bnlab-reproduce", "version": 1, "runs": "x"},
    "runs null": {"format": "bnlab-reproduce", "version": 1, "runs": None},
    "runs missing": {"format": "bnlab-reproduce", "version": 1},
    "a run not an object": {"format": "bnlab-reproduce", "version": 1, "runs": [1]},
    "version 99": {"format": "bnlab-reproduce", "version": 99, "runs": []},
    "version a string": {"format": "bnlab-reproduce", "version": "1", "runs": []},
    "version missing": {"format": "bnlab-reproduce", "runs": []},
}


@pytest.mark.parametrize("case", list(MANIFESTS))
def test_hand_edited_manifest_is_one_line(tmp_path: Path, case: str) -> None:
    out = tmp_path / "r"
    out.mkdir()
    text = json.dumps(MANIFESTS[case])
    (out / "reproduce.json").write_text(text)
    r = CliRunner().invoke(main, ["reproduce", "F4b", "--scale", "smoke", "--no-figures", "--out", str(out)])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error: ") and "reproduce.json" in lines[0], r.stderr
    assert ("newer bnlab" in lines[0]) == (case == "version 99")
    assert sorted(p.name for p in out.iterdir() if p.name != ".bnlab.lock") == ["reproduce.json"]
    assert (out / "reproduce.json").read_text() == text  # untouched


def test_a_deleted_stage_output_is_redone(one_job: Path) -> None:
    before = _stages(one_job)
    name = sorted(before)[0]
    final = one_job / "stages" / name / "out" / "final.pt"
    weights = _weights(one_job, name)
    final.unlink()
    r = CliRunner().invoke(main, [*F6, "-j", "1", "--out", str(one_job)])
    assert r.exit_code == 0, r.output
    after = _stages(one_job)
    assert final.is_file() and after[name]["finished"] >= before[name]["finished"]
    assert _same(_weights(one_job, name), weights)  # redone (resumed from its last.pt): the same weights
    other = next(n for n in before if n != name)
    assert after[other]["finished"] == before[other]["finished"]  # the intact stage was reused
