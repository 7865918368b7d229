"""torch.distributed, 2 gloo ranks on CPU, against one process (float64): a training step with sync BN
and with per-rank BN (= ghost BN with one split per rank), sharded HVPs, eigenpairs and output-statistic
gradients, a whole training run, `bnlab hessian` / `bnlab outstats` inside the group, and a refusal on
one rank reaching both. All of it comes from one start of two rank processes (dist_worker.py)."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from dist_helpers import (
    HESSIAN_ARGS,
    OUTSTATS_ARGS,
    WORKER,
    e2e_config,
    hessian_products,
    launch,
    one_step,
    step_config,
    tiny_batches,
    tiny_net,
    write_checkpoint,
)

from bnlab import load_checkpoint
from bnlab.cli import main
from bnlab.train import train


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("dist")
    write_checkpoint(out / "ck.pt")
    (out / "not_empty").mkdir()
    (out / "not_empty" / "keep.txt").write_text("someone else's file")
    procs = launch([sys.executable, str(WORKER), str(out)], world=2)
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{p.stderr[-4000:]}"
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    """|a - b| <= rel * max|b| elementwise (a tensor's scale sets what 'relative' means)."""
    return bool((a - b).abs().max() <= rel * max(b.abs().max().item(), 1e-30))


def assert_same_step(got: dict, ref: dict, rel: float = 1e-10) -> None:
    assert got["grads"].keys() == ref["grads"].keys()
    for k in ref["grads"]:
        assert close(got["grads"][k], ref["grads"][k], rel), k
    for k, v in ref["state"].items():
        if v.is_floating_point():
            assert close(got["state"][k], v, rel), k
        else:
            assert torch.equal(got["state"][k], v), k


def test_the_group_is_gloo_with_two_ranks(ranks: tuple[Path, list[dict]]) -> None:
    _, res = ranks
    assert [r["world"] for r in res] == [2, 2] and res[0]["backend"] == "gloo"


def test_sync_bn_step_equals_one_process(ranks: tuple[Path, list[dict]]) -> None:
    ref = one_step(step_config("bn", sync_bn=True))
    for r in ranks[1]:
        assert_same_step(r["step_sync"], ref)


def test_per_rank_bn_step_equals_ghost_bn_with_one_split_per_rank(ranks: tuple[Path, list[dict]]) -> None:
    ref = one_step(step_config("ghost", ghost_splits=2))
    for r in ranks[1]:
        assert_same_step(r["step_per_rank"], ref)
    # ... and not plain BN over the global batch: the split is a different function
    plain = one_step(step_config("bn"))["grads"]["prep.conv.weight"]
    assert not close(ranks[1][0]["step_per_rank"]["grads"]["prep.conv.weight"], plain, 1e-6)


def test_ghost_bn_model_keeps_its_splits(ranks: tuple[Path, list[dict]]) -> None:
    ref = one_step(step_config("ghost", ghost_splits=4))
    for r in ranks[1]:
        assert_same_step(r["step_ghost4"], ref)


@pytest.fixture(scope="module")
def single_hessian() -> dict:
    return hessian_products(tiny_net(), tiny_batches())


def test_sharded_products_equal_one_process(ranks: tuple[Path, list[dict]], single_hessian: dict) -> None:
    for r in ranks[1]:
        h = r["hessian"]
        for key in ("hv_cacheTrue", "hv_cacheFalse"):
            rel = (h[key] - single_hessian[key]).norm(dim=1) / single_hessian[key].norm(dim=1)
            assert rel.max() <= 1e-12, (key, rel)
        assert (h["grad"] - single_hessian["grad"]).norm() <= 1e-12 * single_hessian["grad"].norm()
        assert h["loss"] == pytest.approx(single_hessian["loss"], rel=1e-12)
        d = h["describe"]["distributed"]
        assert d["world_size"] == 2 and d["batches_per_rank"] == [2, 3]  # 16 and 19 examples: unequal


def test_sharded_eigenpairs_equal_one_process(ranks: tuple[Path, list[dict]], single_hessian: dict) -> None:
    lam, vec = single_hessian["eigenvalues"], single_hessian["eigenvectors"]
    for r in ranks[1]:
        h = r["hessian"]
        assert bool(h["converged"].all())
        assert close(h["eigenvalues"], lam, 1e-10)
        overlap = (h["eigenvectors"] * vec).sum(1).abs()
        assert (1 - overlap).abs().max() <= 1e-10
    # every rank ran the same solver on the same products
    assert torch.equal(ranks[1][0]["hessian"]["eigenvalues"], ranks[1][1]["hessian"]["eigenvalues"])


def test_sharded_stat_gradients_equal_one_process(ranks: tuple[Path, list[dict]], single_hessian: dict) -> None:
    for r in ranks[1]:
        for moments in ("per-batch", "pooled"):
            (v, g), (v0, g0) = r["hessian"][f"stats_{moments}"], single_hessian[f"stats_{moments}"]
            assert close(v, v0, 1e-12) and close(g, g0, 1e-12), moments


def test_model_unchanged_on_every_rank(ranks: tuple[Path, list[dict]]) -> None:
    assert all(r["hessian"]["unchanged"] for r in ranks[1])


def test_a_refusal_on_rank_0_reaches_every_rank(ranks: tuple[Path, list[dict]]) -> None:
    r0, r1 = (r["refusal"] for r in ranks[1])
    assert r0["raised"] and r1["raised"]
    assert "not empty" in r0["message"] and r0["message"] == r1["message"]
    assert (r0["quiet"], r1["quiet"]) == (False, True)  # the CLI prints the line once, on rank 0
    assert (ranks[0] / "not_empty" / "keep.txt").read_text() == "someone else's file"


def _dynamics(path: Path, param: str = "prep.conv.weight") -> list[dict[str, str]]:
    with open(path) as f:
        return [row for row in csv.DictReader(f) if row["param"] == param]


def test_two_rank_run_equals_a_one_process_ghost_bn_run(ranks: tuple[Path, list[dict]], tmp_path: Path) -> None:
    """The trainer's glue: data sharding, DDP, reduced divergence check and metrics, averaged BN buffers,
    sharded evaluation, rank 0's files. float32 with max-pooling drifts chaotically after a few steps
    (a pooling window's winner flips on rounding), so steps are compared while both runs are still
    close: the first epoch and the first step of the second."""
    out, res = ranks
    run, ref_dir = out / "run", tmp_path / "ref"
    ref = train(e2e_config("ghost"), ref_dir, device="cpu", quiet=True)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert res[0]["train"][key] == res[1]["train"][key]  # every rank returns the same metrics
        assert res[0]["train"][key] == pytest.approx(ref.metrics[key], rel=0.05), key
    got, want = _dynamics(run / "dynamics.csv"), _dynamics(ref_dir / "dynamics.csv")
    assert len(got) == len(want) == 8
    for g, w in zip(got[:5], want[:5]):  # 4 steps per epoch
        for col in ("loss", "acc", "w_norm", "g_norm", "dw_norm"):
            assert float(g[col]) == pytest.approx(float(w[col]), rel=2e-5, abs=1e-7), (g["step"], col)
    epoch1 = load_checkpoint(run / "final.pt").meta["metrics"][0]
    ref1 = load_checkpoint(ref_dir / "final.pt").meta["metrics"][0]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):  # test set: averaged BN buffers
        assert epoch1[key] == pytest.approx(ref1[key], rel=1e-5), key
    config = json.loads((run / "config.json").read_text())
    assert config["sync_bn"] is False and config["model"]["norm"] == "bn"  # the world size is not config
    record = load_checkpoint(run / "final.pt").meta["runtime"]["distributed"]
    assert record["world_size"] == 2 and record["per_rank_batch"] == 16 and "ghost" in record["bn_statistics"]
    assert record["history"] == [{"from_epoch": 0, "world_size": 2}]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref_dir.iterdir())


def test_one_ranks_non_finite_loss_stops_every_rank(ranks: tuple[Path, list[dict]]) -> None:
    out, res = ranks
    for r in res:  # rank 0's own loss was finite: it stops because the flag is reduced over the ranks
        assert r["diverge"]["status"] == "diverged"
        assert r["diverge"]["diverged"]["step"] == 2 and r["diverge"]["diverged"]["reason"] == "non-finite loss"
    final = load_checkpoint(out / "diverged" / "final.pt")
    assert final.meta["status"] == "diverged" and final.meta["step"] == 1
    assert all(torch.isfinite(v).all() for v in final.model.state_dict().values() if v.is_floating_point())
    assert json.loads((out / "diverged" / "status.json").read_text())["status"] == "diverged"


def _one_process(command: str, args: list[str], out: Path) -> Path:
    r = CliRunner().invoke(main, [command, str(out.parent / "ck.pt"), *args, "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def _ran(res: list[dict], key: str) -> None:
    assert [r[key]["code"] for r in res] == [0, 0], [r[key] for r in res]
    assert res[0][key]["stdout"].strip() and res[1][key]["stdout"] == ""  # rank 0 reports, rank 1 is silent


def test_hessian_command_in_the_group_equals_one_process(ranks: tuple[Path, list[dict]], tmp_path: Path) -> None:
    out, res = ranks
    _ran(res, "cli_hessian")
    (tmp_path / "ck.pt").symlink_to(out / "ck.pt")
    one = _one_process("hessian", HESSIAN_ARGS, tmp_path / "one")
    a, b = (json.loads((d / "hessian.json").read_text()) for d in (one, out / "hessian"))
    assert b["eigen"]["eigenvalues"] == pytest.approx(a["eigen"]["eigenvalues"], rel=1e-10)
    assert b["eigen"]["hvp_count"] == a["eigen"]["hvp_count"]
    assert b["settings"]["distributed"] == {"world_size": 2, "backend": "gloo", "batches_per_rank": [1, 2]}
    assert "distributed" not in a["settings"]  # one process writes what it always wrote
    va, vb = (torch.load(d / "eigvecs.pt", weights_only=True)["eigenvectors"] for d in (one, out / "hessian"))
    assert ((va.double() * vb.double()).sum(1).abs() - 1).abs().max() <= 1e-6  # stored as float32


def test_outstats_command_in_the_group_equals_one_process(ranks: tuple[Path, list[dict]], tmp_path: Path) -> None:
    out, res = ranks
    _ran(res, "cli_outstats")
    (tmp_path / "ck.pt").symlink_to(out / "ck.pt")
    one = _one_process("outstats", OUTSTATS_ARGS, tmp_path / "one")
    a, b = (json.loads((d / "outstats.json").read_text()) for d in (one, out / "outstats"))
    for stat in ("mean", "var"):
        assert b["grad_norms"][stat] == pytest.approx(a["grad_norms"][stat], rel=1e-10)
        assert b["values"][stat] == pytest.approx(a["values"][stat], rel=1e-10, abs=1e-14)
    assert b["eigen"]["eigenvalues"] == pytest.approx(a["eigen"]["eigenvalues"], rel=1e-10)
    assert b["eigen"]["overlap_full"] == pytest.approx(a["eigen"]["overlap_full"], rel=1e-8, abs=1e-12)
