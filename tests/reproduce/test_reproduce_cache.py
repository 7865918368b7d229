"""The reproduction folder: stage keys (a changed setting invalidates exactly what depends on it), refusals
before anything is written, resuming after a kill."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.errors import BnlabError
from bnlab.findings.registry import IDS
from bnlab.reproduce.cache import data_fingerprint, stage_keys
from bnlab.reproduce.plan import FINDING_STAGES, build_plan, needed_stages
from bnlab.reproduce.run import resolve_targets
from bnlab.reproduce.stages import check_stage
from conftest import write_cifar_folder

CTX = {"data": "synthetic", "device_type": "cpu"}


def _downstream(plan: dict, name: str) -> set[str]:
    out = {name}
    changed = True
    while changed:
        changed = False
        for n, st in plan.items():
            if n not in out and set(st.deps.values()) & out:
                out.add(n)
                changed = True
    return out


@pytest.mark.parametrize("stage", ["train_simple_bn", "train_wd_main", "hessian_frozen", "collapse_fc"])
def test_a_changed_setting_invalidates_exactly_its_downstream(stage: str) -> None:
    plan = build_plan("smoke")
    keys = stage_keys(plan, list(plan), CTX)
    st = plan[stage]
    changed = {**plan, stage: dataclasses.replace(st, settings={**st.settings, "seed": 1})}
    new = stage_keys(changed, list(changed), CTX)
    assert {n for n in plan if new[n] != keys[n]} == _downstream(plan, stage)
    assert stage_keys(plan, list(plan), CTX) == keys  # deterministic
    assert stage_keys(plan, list(plan), {**CTX, "device_type": "cuda"}) != keys


# Keys computed before the stage kinds became classes (bnlab 2026-12-02): reproduction folders made then must
# stay valid, so a refactoring may not change the key of a stage whose settings did not change. (The curvature
# stages whose eigenpair budgets changed since have new settings, hence new keys, and are not pinned; so are
# wd_main's run and what reads it, since it logs the gradients' autocorrelation for F2.)
PINNED_KEYS = {
    "smoke": {
        "exact_invariant": "e8cb7aa66e34",
        "collapse_fc": "b237f1fc3ca2", "init_shares": "207e9ce1fa84", "freeze_simple_bn": "0cc3c563ad38",
        "hessian_frozen": "fd714901273a", "hessian_no_bn": "192a9361f7dc",
    },
    "cpu": {
        "train_eos": "bc87d2ee616d", "sweep_wd": "5732a02547ad", "hessian_frozen": "4f6db3f63e9a",
        "hessian_bn": "fa71563c4f13",
    },
    "full": {
        "train_stress_no_bn": "bfd070e33851",
        "freeze_simple_bn": "90a6cf937447",
    },
}


@pytest.mark.parametrize("scale", sorted(PINNED_KEYS))
def test_stage_keys_of_unchanged_settings_are_pinned(scale: str) -> None:
    plan = build_plan(scale)
    keys = stage_keys(plan, list(plan), {"data": "synthetic", "device_type": "cpu", "threads": 1})
    assert {n: keys[n] for n in PINNED_KEYS[scale]} == PINNED_KEYS[scale]


@pytest.mark.parametrize("scale", ["smoke", "cpu", "full"])
def test_every_plan_is_a_valid_dag(scale: str) -> None:
    """Every scale, the full one included (which only a GPU runs), builds options its commands accept."""
    assert set(FINDING_STAGES) == set(IDS)
    plan = build_plan(scale)
    order = needed_stages(plan, IDS)
    assert set(order) == set(plan)  # nothing planned that no finding reads
    for i, n in enumerate(order):
        assert all(order.index(d) < i for d in plan[n].deps.values())
        check_stage(plan[n].kind, plan[n].settings)
    assert all(st.cost > 0 for st in plan.values())
    bad = dataclasses.replace(plan["train_wd_main"], settings={**plan["train_wd_main"].settings, "batch_size": 0})
    with pytest.raises(BnlabError):
        check_stage(bad.kind, bad.settings)


def test_targets() -> None:
    assert resolve_targets(("all",)) == IDS
    assert resolve_targets(("f4B", "F1")) == ("F1", "F4b")
    assert set(resolve_targets(("weight-decay", "batch-norm"))) == set(IDS)


def test_data_fingerprint_follows_the_images_not_the_path(tmp_path: Path) -> None:
    a = write_cifar_folder(tmp_path / "a", seed=0)
    b = write_cifar_folder(tmp_path / "b", seed=0)
    c = write_cifar_folder(tmp_path / "c", seed=1)
    assert data_fingerprint(a) == data_fingerprint(b) != data_fingerprint(c)


@pytest.mark.parametrize("args,message", [
    (["--scale", "huge"], "huge"),
    (["F99"], "unknown finding"),  # (F13 exists: the Gauss-Newton finding)
    (["--jobs", "0"], "--jobs"),
    (["--scale", "cpu", "--data-dir", "NOWHERE"], "NOWHERE"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["reproduce", *args, "--out", str(out)])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_foreign_folder_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, ["reproduce", "F4b", "--scale", "smoke", "--out", str(out)])
    assert r.exit_code == 2 and "not empty" in r.output
    assert sorted(p.name for p in out.iterdir() if p.name != ".bnlab.lock") == ["notes.txt"]


def test_killed_run_resumes(tmp_path: Path) -> None:
    """Kill -9 while stages run; the rerun reuses what finished and completes the rest."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bnlab", "reproduce", "F6", "F5", "--scale", "smoke", "--out", str(out), "-j", "1",
           "--no-figures"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((out / "stages").glob("*/stage.json")):
            time.sleep(0.2)
        assert list((out / "stages").glob("*/stage.json")), "no stage finished in time"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    done = {q.parent.name for q in (out / "stages").glob("*/stage.json")}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(done)} reused" in r.stderr
    rec = json.loads((out / "report.json").read_text())
    verdicts = {f["id"]: f["verdict"] for f in rec["findings"]}
    assert verdicts["F5"] != "NOT RUN" and verdicts["F6"] != "NOT RUN"
    assert {q.parent.name for q in (out / "stages").glob("*/stage.json")} >= done
