"""The trainer's per-step dynamics log against the first SGD step redone by hand.

Step 1 is reproducible outside the trainer: the model at initialisation (seeded), the first batch of
epoch 0, the loss gradient by plain autograd, and torch's SGD with weight decay and Nesterov written
out (the momentum buffer starts as the first decayed gradient d, so the step is lr (1 + mu) d). Every
logged column of step 1 (||w|| after, ||g|| without weight decay, ||dw||, rel_step, cos(w, g), angle)
must equal the value computed from those tensors, for every parameter and every output channel.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bnlab.config import make_config
from bnlab.data import load_data, train_batches
from bnlab.schedule import lr_at
from bnlab.train import init_model, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def rows_of(path: Path, step: int) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) == step]


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    # arccos is inaccurate at tiny angles; atan2 of sine and cosine is not
    a, b = a.double().flatten(), b.double().flatten()
    cross = torch.sqrt(torch.clamp((a @ a) * (b @ b) - (a @ b) ** 2, min=0))
    return float(torch.atan2(cross, a @ b))


@pytest.mark.parametrize("variant", ["bn", "no_bn"])
def test_first_logged_step_redone_by_hand(tmp_path: Path, variant: str) -> None:
    cfg = make_config(variant, width=2, dataset="synthetic", synthetic_train=128, synthetic_test=20, batch_size=32,
                      epochs=1, lr=0.4, weight_decay=5e-3, momentum=0.9, nesterov=True, log_channels=True)
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    data = load_data(cfg.data, "cpu", seed=cfg.seed)
    model = init_model(cfg, data, torch.device("cpu")).train()
    x, y = next(train_batches(data, cfg.data, cfg.batch_size, cfg.seed, 0))
    loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().double() for p in model.parameters()]
    grads = [g.double() for g in torch.autograd.grad(loss, list(model.parameters()))]
    lr = lr_at(cfg, 1 / (128 // 32))
    logged = {r["param"]: r for r in rows_of(tmp_path / "run" / "dynamics.csv", 1)}
    chans = rows_of(tmp_path / "run" / "dynamics_channels.csv", 1)
    assert list(logged) == names
    for name, w, g in zip(names, params, grads):
        d = g + cfg.weight_decay * w
        after = w - lr * (1 + cfg.momentum) * d
        r = logged[name]
        assert float(r["lr"]) == pytest.approx(lr, rel=1e-7)
        assert float(r["loss"]) == pytest.approx(loss.item(), rel=1e-5)
        assert int(r["numel"]) == w.numel()
        assert float(r["w_norm"]) == pytest.approx(after.norm().item(), rel=1e-5), name
        assert float(r["g_norm"]) == pytest.approx(g.norm().item(), rel=1e-4, abs=1e-9), name
        assert float(r["dw_norm"]) == pytest.approx((after - w).norm().item(), rel=1e-4, abs=1e-9), name
        if w.norm() > 0:
            assert float(r["rel_step"]) == pytest.approx(((after - w).norm() / w.norm()).item(), rel=1e-4), name
            assert float(r["angle"]) == pytest.approx(angle(w, after), rel=1e-3, abs=2e-6), name
        else:  # a zero tensor (BN bias at init) has no direction: NaN, not a huge number
            assert r["rel_step"] == "nan" and r["angle"] == "nan" and r["cos_wg"] == "nan"
        if w.norm() > 0 and g.norm() > 0:
            cos = float((w.flatten() @ g.flatten()) / (w.norm() * g.norm()))
            assert float(r["cos_wg"]) == pytest.approx(cos, rel=1e-3, abs=1e-6), name
        if w.dim() >= 2:  # per output channel, the same quantities
            mine = [c for c in chans if c["param"] == name]
            assert [int(c["channel"]) for c in mine] == list(range(w.shape[0]))
            for c in mine:
                k = int(c["channel"])
                assert float(c["w_norm"]) == pytest.approx(after[k].norm().item(), rel=1e-5)
                assert float(c["g_norm"]) == pytest.approx(g[k].norm().item(), rel=1e-4, abs=1e-9)
                assert float(c["dw_norm"]) == pytest.approx((after[k] - w[k]).norm().item(), rel=1e-4, abs=1e-9)
                # abs: float32 rounding of a channel that does not turn at all (zero gradient)
                assert float(c["angle"]) == pytest.approx(angle(w[k], after[k]), rel=1e-3, abs=2e-6)
