"""Sharding over a process *sub-group*, against one process (float64): Hessian, Gauss-Newton, residual,
class-means and cross-class products, gradient, loss and output-statistic gradients.

A world of 3 gloo ranks with the sub-group {1, 2}: the pytest process is rank 1, whose rank in the
sub-group (0) differs from its world rank, and whose sub-group is smaller than the world. So an
operator that shards by the world instead of its group, or reduces over the world, gets different
numbers (or waits for rank 0, which never joins, and times out). Also: a rank with no batches (1 batch
over 2 ranks), and exactly as many batches as ranks (still sharded). The calls are in-process on
rank 1, so they count for mutation testing (tests/MUTATION.md).
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_helpers import REPO, group_products, group_stats, subgroup_sequence, world_sequence

WORKER = Path(__file__).with_name("subgroup_worker.py")
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.fixture(scope="module")
def rank1(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    init = f"file://{tmp_path_factory.mktemp('subgroups') / 'store'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(WORKER), init, str(r)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=init, rank=1, world_size=3, timeout=timedelta(seconds=60))
        try:
            sub = dist.new_group([1, 2])
            out = {"sub": subgroup_sequence(sub), "world": world_sequence(dist.group.WORLD)}
            dist.barrier()
        finally:
            dist.destroy_process_group()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-3000:]
    finally:
        torch.set_num_threads(threads)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


@pytest.fixture(scope="module")
def reference() -> dict:
    return {"five": group_products(None), "one": group_products(None, (8,)),
            "three": group_products(None, (8, 8, 3)), "two": group_stats(None, (8, 3))}


def assert_same(got: dict, want: dict) -> None:
    for key in ("hv_True", "hv_False", "hv_auto", "grad", "ggn", "residual", "class_means",
                "cross_class_means"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-12, msg=key)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-13)  # the partial losses are summed in float64
    assert_same_stats(got, want)


def assert_same_stats(got: dict, want: dict) -> None:
    for moments in ("per-batch", "pooled"):
        for g, w in zip(got[f"stats_{moments}"], want[f"stats_{moments}"]):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=moments)


# One test, not three: mutation testing maps a function to the tests that call it, and the calls
# happen once, in the fixture, on behalf of whichever test asks first.
def test_sharding_over_a_sub_group_and_over_the_world(rank1: dict, reference: dict) -> None:
    got = rank1["sub"]["five"]
    assert_same(got, reference["five"])
    assert got["stat_collectives"] > 0  # sharded: 5 batches over the 2 ranks of the sub-group
    assert got["distributed"] == {"world_size": 2, "backend": "gloo", "batches_per_rank": [2, 3]}
    assert reference["five"]["distributed"] is None

    got = rank1["sub"]["one"]  # 1 batch over 2 ranks: group rank 0 (world rank 1, here) holds none
    assert_same(got, reference["one"])
    # nothing to measure or cache here; the decision is recorded as such
    assert got["graph_cache_auto"] == {"mode": "auto", "cached": False, "estimated_bytes": 0, "budget_bytes": 0}
    assert got["cache_graphs_auto"] is False
    assert got["stat_collectives"] == 0  # fewer batches than ranks: every rank computes all of them itself

    got = rank1["sub"]["two"]  # 2 batches over the sub-group's 2 ranks (fewer than the world's 3): still sharded
    assert_same_stats(got, reference["two"])
    assert got["stat_collectives"] > 0

    got = rank1["world"]  # 3 batches over the 3 ranks of the world: still sharded
    assert_same(got, reference["three"])
    assert got["stat_collectives"] > 0
