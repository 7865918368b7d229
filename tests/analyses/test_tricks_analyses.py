"""The analyses on bag-of-tricks nets: the whitening layer and the frozen BN scales are fixed (no
parameters of the Hessian), ghost BN runs in batch mode, and --weights picks the trained weights or
their EMA (`bnlab hessian / outstats / freeze / dynamics`)."""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.func import functional_call, grad, jacfwd
from torch.nn.modules.batchnorm import _BatchNorm

from bnlab.checkpoint import load_checkpoint
from bnlab.cli import main
from bnlab.context import EvalSpec, build_context
from bnlab.curvature.operator import HessianOperator
from bnlab.data import load_data
from bnlab.freeze import refresh_bn_statistics
from bnlab.models import build_model
from bnlab.recipes import recipe_config
from bnlab.train import train
from bnlab.whitening import whitening_filters

pytestmark = pytest.mark.usefixtures("one_thread")
EVAL = ["--num-samples", "80", "--batch-size", "80"]  # ghost BN: batches divisible by 16


def run(*args: object):  # noqa: ANN201
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def tricks_run(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    cfg = recipe_config("bag-of-tricks", width=2, dataset="synthetic", synthetic_train=96, synthetic_test=32,
                        batch_size=32, epochs=2, save_every=1, ema_every=1)
    out = tmp_path_factory.mktemp("tricks") / "run"
    train(cfg, out, device="cpu", quiet=True)
    return out


def test_hessian_of_a_bag_of_tricks_net_is_the_dense_one_over_its_trainable_parameters() -> None:
    spec = dataclasses.replace(recipe_config("bag-of-tricks", width=1).model, ghost_splits=2)
    torch.manual_seed(0)
    net = build_model(spec).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 3, 8, 8, generator=g, dtype=torch.float64)
    net.prep.whiten.set_filters(whitening_filters(x).double())
    y = torch.arange(10) % 10
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]
    names = [n for n, _ in net.named_parameters()]
    assert not [n for n in names if "whiten" in n or n.endswith("norm.weight")]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def total(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (c.reshape(s) for c, s in zip(torch.split(flat, [math.prod(s) for s in shapes]),
                                                                 shapes))))
        return sum(F.cross_entropy(functional_call(net, params, (xb,)), yb, reduction="sum", label_smoothing=0.2)
                   for xb, yb in batches) / 10

    bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    net.train()
    for m in bns:
        m.track_running_stats = False  # ghost batch statistics, buffers untouched
    H = jacfwd(grad(total))(theta)
    for m in bns:
        m.track_running_stats = True
    net.eval()
    op = HessianOperator(net, batches, loss_fn=functools.partial(F.cross_entropy, label_smoothing=0.2),
                         bn_mode="batch")
    assert op.dim == theta.numel()
    V = torch.randn(2, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(op.matmat(V), V @ H, rtol=1e-8, atol=1e-10 * float(H.abs().max()))


def test_weights_ema_gives_the_analyses_the_averaged_model(tricks_run) -> None:
    payload = torch.load(tricks_run / "final.pt", weights_only=True)
    ctx = build_context(str(tricks_run / "final.pt"), EvalSpec(num_samples=80, batch_size=80, weights="ema"),
                        device="cpu")
    assert ctx.bn_mode == "batch" and ctx.settings()["weights"] == "ema"
    state = ctx.model.state_dict()
    assert all(torch.equal(state[k], payload["ema"][k]) for k in state)
    assert not torch.equal(state["classifier.weight"], payload["model"]["classifier.weight"])
    raw = build_context(ctx.checkpoint, EvalSpec(num_samples=80, batch_size=80), device="cpu")  # reloads raw
    assert torch.equal(raw.model.state_dict()["classifier.weight"], payload["model"]["classifier.weight"])


def test_hessian_and_outstats_cli_on_a_bag_of_tricks_checkpoint(tmp_path, tricks_run) -> None:
    ck = tricks_run / "final.pt"
    recs = {}
    for w in ("raw", "ema"):
        r = run("hessian", ck, "--top-k", 1, "--tol", 1e-2, "--no-verify", *EVAL, "--weights", w,
                "--out", tmp_path / w, "-q")
        assert r.exit_code == 0, r.output
        recs[w] = json.loads((tmp_path / w / "hessian.json").read_text())
    dim = sum(p.numel() for p in load_checkpoint(ck).model.parameters())
    for w, rec in recs.items():
        s = rec["settings"]
        assert (s["weights"], s["dim"], s["bn_mode"]) == (w, dim, "batch")
    assert recs["raw"]["eigen"]["eigenvalues"] != recs["ema"]["eigen"]["eigenvalues"]
    r = run("outstats", ck, *EVAL, "--weights", "ema", "--no-histograms", "--stats", "mean",
            "--out", tmp_path / "os", "-q")
    assert r.exit_code == 0, r.output
    # dynamics: the trainable tensors only (no whitening filters, no frozen scales)
    r = run("dynamics", tricks_run, "--out", tmp_path / "dyn", "-q")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "dyn" / "dynamics_layers.csv", newline="") as f:
        params = {row["param"] for row in csv.DictReader(f)}
    assert params == {n for n, _ in load_checkpoint(ck).model.named_parameters()}


def test_freeze_of_the_ema_weights_is_their_eval_affine_map(tmp_path, tricks_run) -> None:
    ck = tricks_run / "final.pt"
    out = tmp_path / "frozen.pt"
    r = run("freeze", ck, "-o", out, "--weights", "ema", "--device", "cpu")
    assert r.exit_code == 0, r.output
    frozen = load_checkpoint(out)
    assert frozen.meta["frozen"]["weights"] == "ema" and not frozen.has_batch_stats
    ema = load_checkpoint(ck, weights="ema")
    data = load_data(ema.config.data, "cpu", seed=ema.config.seed)
    refresh_bn_statistics(ema.model, data, ema.config.batch_size)
    x = (data.test_x.float() - data.stats()[0]) / data.stats()[1]
    with torch.no_grad():
        torch.testing.assert_close(frozen.model(x), ema.model.eval()(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(frozen.model.state_dict()["prep.whiten.weight"], ema.model.state_dict()["prep.whiten.weight"])


def test_weights_ema_without_an_ema_is_one_line_exit_2(tmp_path, tricks_run) -> None:
    frozen = tmp_path / "f.pt"
    assert run("freeze", tricks_run / "final.pt", "-o", frozen, "--device", "cpu").exit_code == 0
    r = run("hessian", frozen, "--top-k", 1, *EVAL, "--weights", "ema", "--out", tmp_path / "h", "-q")
    assert r.exit_code == 2 and "holds no EMA weights" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "h").exists()
