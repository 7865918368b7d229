"""Helpers of the distributed tests: start W ranks the way torchrun does (env://, gloo on CPU), and
the pieces both a rank and the single-process reference compute (tiny float64 nets and batches)."""
from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bnlab import ddp
from bnlab.checkpoint import save_checkpoint
from bnlab.config import TrainConfig, make_config
from bnlab.curvature import GGNOperator, HessianOperator, ResidualOperator, top_eigenpairs
from bnlab.data import load_data, train_batches
from bnlab.models import ModelSpec, build_model
from bnlab.outstats.gradients import stat_gradients

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")
LOSS = functools.partial(F.cross_entropy, label_smoothing=0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], world: int = 2, timeout: float = 240.0) -> list[subprocess.CompletedProcess]:
    """Run `cmd` as `world` ranks with torchrun's environment; every rank's (returncode, stdout, stderr)."""
    port = free_port()
    procs = []
    for r in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
               "WORLD_SIZE": str(world), "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(world),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + timeout
    out = []
    try:
        for p in procs:
            so, se = p.communicate(timeout=max(1.0, deadline - time.time()))
            out.append(subprocess.CompletedProcess(cmd, p.returncode, so, se))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def bnlab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnlab", *args]


# ----------------------------------------------------------------------------- one float64 training step
def step_config(norm: str, sync_bn: bool = False, ghost_splits: int = 2) -> TrainConfig:
    """A width-2 DavidNet, 16 synthetic images in one global batch of 16, constant lr."""
    variant = {"bn": "bn", "ghost": "ghost_bn"}[norm]
    return make_config(variant, width=2, dataset="synthetic", synthetic_train=16, synthetic_test=10, batch_size=16,
                       epochs=1, lr=0.3, lr_schedule="const", weight_decay=5e-3, ghost_splits=ghost_splits,
                       sync_bn=sync_bn, log_every=0)


def one_step(config: TrainConfig, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """The trainer's first SGD step (its model preparation, DDP, sharded batch) in float64.

    Returns the gradient (averaged over ranks by DDP) and the state after the step (running
    statistics averaged over ranks, as the trainer does before it evaluates or saves).
    """
    data = load_data(config.data, "cpu", seed=config.seed)
    torch.manual_seed(config.seed)
    model = ddp.for_ranks(build_model(config.model).double(), config, world).to(memory_format=torch.channels_last)
    forward = ddp.wrap(model, torch.device("cpu")) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                          weight_decay=config.weight_decay)
    x, y = next(train_batches(data, config.data, config.batch_size, config.seed, 0, shard=(rank, world)))
    model.train()
    loss = F.cross_entropy(forward(x.double().contiguous(memory_format=torch.channels_last)), y)
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    ddp.average_running_stats(model, config)
    return {"grads": grads, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def e2e_config(norm: str = "bn", **options: Any) -> TrainConfig:
    """A whole (tiny, float32) run: width 4, 128 synthetic images, global batch 32, 2 epochs, peak lr 0.05."""
    variant = {"bn": "bn", "ghost": "ghost_bn"}[norm]
    base = dict(width=4, dataset="synthetic", synthetic_train=128, synthetic_test=64, batch_size=32, epochs=2,
                lr=0.05, ghost_splits=2, act="celu")
    return make_config(variant, **{**base, **options})


# ----------------------------------------------------------------------------- curvature fixtures
# The commands' checkpoint: a width-1 DavidNet (BN, softplus). 20 examples in batches of 8 make 3
# batches (8, 8, 4): 1 on rank 0, 2 on rank 1.
EVAL_ARGS = ["--num-samples", "20", "--batch-size", "8", "--dtype", "float64", "-q"]
HESSIAN_ARGS = ["--top-k", "2", *EVAL_ARGS]
OUTSTATS_ARGS = ["--stats", "mean,var", "--num-eigs", "1", "--no-histograms", *EVAL_ARGS]


def write_checkpoint(path: Path) -> Path:
    cfg = make_config("bn", width=1, dataset="synthetic", synthetic_train=200, synthetic_test=50, act="softplus")
    torch.manual_seed(0)
    save_checkpoint(path, {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    return path


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model(ModelSpec(width=2, norm="bn", act="softplus")).double()
    return net.eval()


def tiny_batches(sizes: tuple[int, ...] = (8, 8, 8, 8, 3)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Unequal fixed batches of 8x8 images (the last one small: weights n_b/N must stay right)."""
    g = torch.Generator().manual_seed(1)
    n = sum(sizes)
    x = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=g)
    out, i = [], 0
    for s in sizes:
        out.append((x[i:i + s], y[i:i + s]))
        i += s
    return out


def probe_vectors(dim: int, m: int = 3) -> torch.Tensor:
    return torch.randn(m, dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def hessian_products(net: torch.nn.Module, batches: list) -> dict:
    """What a rank and the one-process reference both compute on the tiny net: products (graphs cached and
    streamed, weight decay on), gradient, loss, top-3 eigenpairs, output-statistic gradients."""
    out: dict = {}
    for cache in (True, False):
        op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", cache_graphs=cache, weight_decay=1e-3)
        out[f"hv_cache{cache}"] = op.matmat(probe_vectors(op.dim))
    op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch")
    out["grad"], out["loss"] = op.gradient(), op.loss()
    res = top_eigenpairs(op, 3, tol=1e-6)
    out["eigenvalues"], out["eigenvectors"], out["converged"] = res.eigenvalues, res.eigenvectors, res.converged
    out["describe"] = op.describe()
    for moments in ("per-batch", "pooled"):
        sg = stat_gradients(net, batches, stats=("mean", "var"), moments=moments, mode="batch")
        out[f"stats_{moments}"] = (sg.values, sg.grads)
    return out


# ----------------------------------------------------------------------------- sub-groups (test_subgroups.py)
def group_products(group: object, sizes: tuple[int, ...] = (8, 8, 8, 8, 3)) -> dict:
    """Products, gradient, loss and output-statistic gradients of the tiny net over batches of `sizes`,
    sharded over `group` (None: this process alone, the reference)."""
    net, batches = tiny_net(), tiny_batches(sizes)
    out: dict = {}
    for cache in (True, False, "auto"):
        op = HessianOperator(net, batches, loss_fn=LOSS, bn_mode="batch", cache_graphs=cache, weight_decay=1e-3,
                             process_group=group)
        out[f"hv_{cache}"] = op.matmat(probe_vectors(op.dim))
        out[f"graph_cache_{cache}"] = op.describe()["graph_cache"]
        out[f"cache_graphs_{cache}"] = op.cache_graphs
    out["distributed"] = op.describe().get("distributed")
    out["grad"], out["loss"] = op.gradient(), op.loss()
    # the Gauss-Newton matrix, the residual and the class-means term over the same shards
    ggn = GGNOperator(net, batches, loss_fn=LOSS, bn_mode="batch", weight_decay=1e-3, process_group=group)
    out["ggn"] = ggn.matmat(probe_vectors(ggn.dim))
    out["class_means"] = ggn.class_means().factor
    out["cross_class_means"] = ggn.cross_class_means().factor
    res = ResidualOperator(net, batches, loss_fn=LOSS, bn_mode="batch", weight_decay=1e-3, process_group=group)
    out["residual"] = res.matmat(probe_vectors(res.dim))
    return out | group_stats(group, sizes)


def group_stats(group: object, sizes: tuple[int, ...]) -> dict:
    """The output-statistic gradients of the tiny net over batches of `sizes` (per-batch and pooled), sharded over
    `group`, and how many collectives they made."""
    from bnlab import distributed

    net, batches = tiny_net(), tiny_batches(sizes)
    out: dict = {}
    calls = distributed.COMM.calls
    for moments in ("per-batch", "pooled"):
        sg = stat_gradients(net, batches, stats=("mean", "var"), moments=moments, mode="batch", process_group=group)
        out[f"stats_{moments}"] = (sg.values, sg.grads)
    out["stat_collectives"] = distributed.COMM.calls - calls
    return out


def subgroup_sequence(group: object) -> dict:
    """What ranks 1 and 2 compute on their sub-group: 5 batches over 2 ranks, then 1 batch (rank 2 has none), then
    the statistics of 2 batches (as many as the sub-group's ranks, fewer than the world's: still sharded)."""
    return {"five": group_products(group), "one": group_products(group, (8,)), "two": group_stats(group, (8, 3))}


def world_sequence(group: object) -> dict:
    """What all 3 ranks compute together: 3 batches, one per rank."""
    return group_products(group, (8, 8, 3))
