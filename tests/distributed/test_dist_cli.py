"""`bnlab train` under torchrun's environment (2 gloo ranks on CPU): a one-process run resumes with two
processes; refusals are one line, exit code 2, before any process waits for another. (`bnlab hessian`
and `bnlab outstats` in a group: test_dist_numerics.py.)"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from dist_helpers import bnlab_cmd, e2e_config, launch

from bnlab import load_checkpoint
from bnlab.cli import main
from bnlab.distributed import AgreedError
from bnlab.train import train


def one_line_refusal(args: list[str], env: dict[str, str] | None = None) -> str:
    r = CliRunner().invoke(main, args, env=env)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:"), r.stderr
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--variant", "no_bn", "--sync-bn"], "--sync-bn needs a model with batch norm"),
    (["--variant", "frozen_bn", "--sync-bn"], "--sync-bn needs a model with batch norm"),
    (["--variant", "ghost_bn", "--sync-bn"], "--sync-bn needs a model with batch norm"),
    (["--batch-size", "33"], "must be divisible by the number of processes (2)"),
    (["--variant", "ghost_bn", "--ghost-splits", "3", "--batch-size", "48"], "splits must be divisible"),
])
def test_bad_distributed_input_is_one_line_before_joining(tmp_path: Path, args: list[str], needle: str) -> None:
    # WORLD_SIZE=2 without a second process: a refusal must come before the rendezvous (else it would hang)
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    line = one_line_refusal(["train", "--dataset", "synthetic", "--width", "2", *args, "--out", str(tmp_path / "r")],
                            env)
    assert needle in line
    assert not (tmp_path / "r").exists()


def test_other_ranks_leave_an_options_refusal_to_rank_0(tmp_path: Path) -> None:
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    r = CliRunner().invoke(main, ["train", "--variant", "no_bn", "--sync-bn", "--out", str(tmp_path / "r")], env=env)
    assert r.exit_code == 2 and r.stderr == "" and r.output == ""


def test_a_refusal_shared_by_all_ranks_is_printed_by_rank_0_only(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AgreedError("rank 0 said no", quiet=True)  # as a rank other than 0 receives it

    monkeypatch.setattr("bnlab.cli.common.load_for_analysis", refuse)
    r = CliRunner().invoke(main, ["hessian", str(tmp_path / "ck.pt"), "--out", str(tmp_path / "h")])
    assert r.exit_code == 2 and r.stderr == "" and r.output == ""


def _rows(path: Path, param: str = "prep.conv.weight") -> list[dict[str, str]]:
    with open(path) as f:
        return [row for row in csv.DictReader(f) if row["param"] == param]


def test_a_one_process_run_resumes_on_two(tmp_path: Path) -> None:
    """--sync-bn: the global batch's BN, the same function whatever the number of processes."""
    cfg = e2e_config("bn", sync_bn=True)
    run, ref = tmp_path / "run", tmp_path / "ref"
    train(cfg, run, device="cpu", quiet=True, stop_after_epoch=1)
    train(cfg, ref, device="cpu", quiet=True)
    procs = launch(bnlab_cmd("train", "--resume", str(run), "--device", "cpu", "-q"))
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r}:\n{p.stderr[-4000:]}"
    assert procs[0].stdout.startswith("finished:") and procs[1].stdout == ""
    assert json.loads((run / "config.json").read_text())["sync_bn"] is True
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    got, want = _rows(run / "dynamics.csv"), _rows(ref / "dynamics.csv")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [str(i) for i in range(1, 9)]
    assert got[:4] == want[:4]  # written by the one-process part
    # The first two-process step: the same weights and images give the same loss (global-batch BN);
    # its gradient is compared to 1e-10 in float64 in test_dist_numerics (in float32 on CPU the
    # one-process reference's own channels_last BN backward is off by up to ~1e-3 in small entries).
    for col in ("loss", "acc", "w_norm"):
        assert float(got[4][col]) == pytest.approx(float(want[4][col]), rel=1e-6), col
    assert float(got[4]["g_norm"]) == pytest.approx(float(want[4]["g_norm"]), rel=1e-2)
    a = load_checkpoint(run / "final.pt")
    assert a.meta["runtime"]["distributed"]["history"] == [{"from_epoch": 1, "world_size": 2}]
    assert a.meta["runtime"]["distributed"]["bn_statistics"] == "global batch (sync BN)"
    b = load_checkpoint(ref / "final.pt")
    assert {k: v for k, v in a.meta["metrics"][0].items() if not k.endswith(("_time", "_per_s"))} == \
        {k: v for k, v in b.meta["metrics"][0].items() if not k.endswith(("_time", "_per_s"))}
    assert a.meta["metrics"][1]["test_loss"] == pytest.approx(b.meta["metrics"][1]["test_loss"], rel=0.05)
