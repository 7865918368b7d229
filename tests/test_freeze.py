"""`bnlab freeze`: BN running statistics refreshed over one pass of the training data, checked against
statistics computed here with numpy from the activations each BN layer receives, then BN replaced
by the fixed affine map they define."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bnlab.freeze as freeze_module
from bnlab import load_checkpoint
from bnlab.checkpoint import Checkpoint, save_checkpoint
from bnlab.config import TrainConfig, make_config
from bnlab.data import CIFAR_MEAN, CIFAR_STD, load_data
from bnlab.errors import BnlabError
from bnlab.freeze import freeze_checkpoint, frozen_copy, refresh_bn_statistics
from bnlab.models import ModelSpec, build_model
from bnlab.norms import FrozenNorm, GhostBatchNorm, batch_norm_layers
from conftest import requires_cuda

N_TRAIN, BATCH = 300, 64  # 4 full batches (256 images); the last 44 images are not used


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def make_ckpt(path: Path, variant: str, ema_shift: float | None = None, **opts: object) -> Path:
    """An untrained checkpoint with arbitrary (non-default) BN buffers and affine parameters; with `ema_shift`,
    also "EMA" weights: every float tensor shifted by it."""
    cfg = make_config(variant, width=2, dataset="synthetic", synthetic_train=N_TRAIN, synthetic_test=60,
                      batch_size=BATCH, **opts)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for _, m in batch_norm_layers(model):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(2, 3)
            m.num_batches_tracked.fill_(11)
            if m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    state = model.state_dict()
    ema = {} if ema_shift is None else {"ema": {k: v + ema_shift if v.is_floating_point() else v
                                                for k, v in state.items()}}
    save_checkpoint(path, {"config": cfg.to_dict(), "model": state, "epoch": 3, "step": 12,
                           "metrics": [{"epoch": 3, "test_acc": 0.25}], **ema})
    return path


def numpy_stats(model: torch.nn.Module, images: np.ndarray, batch: int = BATCH
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per BN layer: the mean over batches (of `batch` images, in order) of each batch's per-channel mean and
    unbiased variance of the layer's input; ghost BN: of each chunk's, averaged over chunks."""
    x = (images.astype(np.float64) - np.array(CIFAR_MEAN)[None, :, None, None]) / np.array(CIFAR_STD)[None, :, None,
                                                                                                      None]
    net = copy.deepcopy(model).train()  # batch statistics, as during the refresh pass
    seen: dict[str, list[np.ndarray]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(i[0].detach().double()
                                                                                         .numpy()))
             for n, m in batch_norm_layers(net)]
    with torch.no_grad():
        for b in range(len(x) // batch):
            net(torch.from_numpy(x[b * batch:(b + 1) * batch]).float())
    for h in hooks:
        h.remove()
    out = {}
    for n, m in batch_norm_layers(net):
        splits = m.splits if isinstance(m, GhostBatchNorm) else 1
        means, vars_ = [], []
        for a in seen[n]:
            for chunk in np.split(a, splits):
                means.append(chunk.mean(axis=(0, 2, 3)))
                vars_.append(chunk.var(axis=(0, 2, 3), ddof=1))
        out[n] = (np.mean(means, 0), np.mean(vars_, 0))
    return out


@pytest.mark.parametrize("variant", ["bn", "ghost_bn"])
def test_refreshed_statistics_are_the_pass_averages(tmp_path: Path, variant: str) -> None:
    parent = make_ckpt(tmp_path / "ck.pt", variant, **({"ghost_splits": 4} if variant == "ghost_bn" else {}))
    before = load_checkpoint(parent)
    data = load_data(before.config.data, "cpu", seed=before.config.seed)
    expect = numpy_stats(before.model, data.train_x.numpy()[:4 * BATCH])
    summary = freeze_checkpoint(parent, tmp_path / "frozen.pt")
    assert summary["bn_refresh_batches"] == 4 and summary["bn_refresh_batch_size"] == BATCH
    frozen = load_checkpoint(tmp_path / "frozen.pt")
    state = frozen.model.state_dict()
    for name, (mean, var) in expect.items():
        np.testing.assert_allclose(state[f"{name}.running_mean"].double().numpy(), mean, rtol=2e-4, atol=1e-5)
        np.testing.assert_allclose(state[f"{name}.running_var"].double().numpy(), var, rtol=2e-4, atol=1e-5)
    assert sum(isinstance(m, FrozenNorm) for m in frozen.model.modules()) == len(expect) == 8
    assert frozen.config.variant == "frozen_bn" and frozen.config.model.norm == "frozen"
    assert frozen.config.model.affine is True and not frozen.has_batch_stats
    # the frozen net is the parent in eval mode with those statistics: same weights, same function
    ref = copy.deepcopy(before.model).eval()
    with torch.no_grad():
        for name, m in batch_norm_layers(ref):
            m.running_mean.copy_(torch.from_numpy(expect[name][0]))
            m.running_var.copy_(torch.from_numpy(expect[name][1]))
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(frozen.model(x), ref(x), rtol=1e-3, atol=1e-4)
        # one example alone or in a batch: the frozen model does not look at the batch
        torch.testing.assert_close(frozen.model(x[:1]), frozen.model(x)[:1], rtol=1e-5, atol=1e-6)
    # its test numbers, recomputed here from its logits on the normalised test images
    tx = (data.test_x.double() - torch.tensor(CIFAR_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / \
        torch.tensor(CIFAR_STD, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        z = frozen.model(tx.float())
    assert summary["test_acc"] == pytest.approx((z.argmax(1) == data.test_y).double().mean().item())
    assert summary["test_loss"] == pytest.approx(F.cross_entropy(z, data.test_y).item(), rel=1e-4)
    # provenance: the parent's hash, epoch/step/metrics carried over, the summary stored inside
    raw = torch.load(tmp_path / "frozen.pt", weights_only=True)
    assert raw["frozen"]["frozen_from_sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()
    assert raw["frozen"]["frozen_from"] == str(parent.resolve())
    assert (raw["epoch"], raw["step"], raw["metrics"]) == (3, 12, [{"epoch": 3, "test_acc": 0.25}])
    assert raw["status"] == "frozen" and json.dumps(raw["frozen"]) == json.dumps(summary)
    # the parent file is untouched
    again = load_checkpoint(parent).model.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in before.model.state_dict().items())


def test_refresh_in_place_restores_flags_and_momenta(tmp_path: Path) -> None:
    ck = load_checkpoint(make_ckpt(tmp_path / "ck.pt", "bn"))
    model = ck.model.eval()
    data = load_data(ck.config.data, "cpu", seed=0)
    expect = numpy_stats(model, data.train_x.numpy()[:2 * 128], 128)
    assert refresh_bn_statistics(model, data, 128) == 2  # 300 images: 2 full batches of 128
    assert not model.training and all(m.momentum == 0.1 for _, m in batch_norm_layers(model))
    for name, m in batch_norm_layers(model):
        np.testing.assert_allclose(m.running_mean.double().numpy(), expect[name][0], rtol=2e-4, atol=1e-5)
        assert int(m.num_batches_tracked) == 2
    # a batch larger than the training set: one batch of everything
    small = load_data(make_config("bn", dataset="synthetic", synthetic_train=40, synthetic_test=20).data, "cpu")
    assert refresh_bn_statistics(model, small, 64) == 1


@requires_cuda
def test_freeze_on_cuda_equals_cpu(tmp_path: Path) -> None:
    parent = make_ckpt(tmp_path / "ck.pt", "bn")
    on_cpu = freeze_checkpoint(parent, tmp_path / "cpu.pt")
    on_gpu = freeze_checkpoint(parent, tmp_path / "gpu.pt", device="cuda")
    assert on_gpu["test_acc"] == pytest.approx(on_cpu["test_acc"], abs=2 / 60)  # float32 convs differ a little
    a, b = (load_checkpoint(tmp_path / f).model.state_dict() for f in ("cpu.pt", "gpu.pt"))
    for k, v in a.items():
        torch.testing.assert_close(b[k].cpu(), v, rtol=1e-4, atol=1e-5, msg=k)


def test_the_frozen_copy_is_made_on_the_models_device(tmp_path: Path) -> None:
    # PyTorch's meta device stands in for a GPU: a copy built on the CPU and left there would show here
    ck = load_checkpoint(make_ckpt(tmp_path / "ck.pt", "bn"))
    frozen, config = frozen_copy(ck.model.to("meta"), ck)
    assert {t.device.type for t in frozen.state_dict().values()} == {"meta"}
    assert config.variant == "frozen_bn" and config.model.norm == "frozen" and not frozen.training


def test_the_named_device_reaches_the_checkpoint_the_data_and_the_evaluation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # on a CPU every device looks alike, so each step records the device it is handed (the CUDA twin above
    # checks the numbers)
    seen: dict[str, object] = {}

    def spy(name: str, fn: Callable[..., Any], position: int) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen[name] = kwargs["device"] if "device" in kwargs else args[position]
            return fn(*args, **kwargs)
        return wrapped

    for name, position in (("load_checkpoint", 1), ("load_data", 1), ("evaluate", 3)):
        monkeypatch.setattr(freeze_module, name, spy(name, getattr(freeze_module, name), position))
    freeze_checkpoint(make_ckpt(tmp_path / "ck.pt", "bn"), tmp_path / "f.pt", device="cpu")
    assert seen == {"load_checkpoint": "cpu", "load_data": "cpu", "evaluate": torch.device("cpu")}


def test_the_frozen_copy_takes_its_affine_from_the_model_not_the_config(tmp_path: Path) -> None:
    # a config made in a notebook leaves affine at None ("the norm's default"): frozen's default would add a
    # gamma and beta that the post's simple net (bn_fixed_affine) does not have
    spec = ModelSpec(model="simple", norm="bn_fixed_affine", width=2)
    torch.manual_seed(0)
    model = build_model(spec)
    ck = Checkpoint(model, TrainConfig(variant="bn", model=spec), {}, tmp_path / "none.pt")
    assert ck.config.model.affine is None
    frozen, config = frozen_copy(model, ck)
    assert config.model.affine is False and not any(m.affine for m in frozen.modules() if isinstance(m, FrozenNorm))
    state = frozen.state_dict()
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(state[k], v), k


def test_ema_weights_are_the_ones_frozen_and_recorded(tmp_path: Path) -> None:
    parent = make_ckpt(tmp_path / "ck.pt", "bn", ema_shift=0.25)
    payload = torch.load(parent, weights_only=True)
    ema = payload["ema"]
    raw = freeze_checkpoint(parent, tmp_path / "raw.pt")
    averaged = freeze_checkpoint(parent, tmp_path / "ema.pt", weights="ema")
    assert (raw["weights"], averaged["weights"]) == ("raw", "ema")
    convs = [k for k in ema if k.endswith("conv.weight")]
    assert convs
    for name, want in (("raw.pt", payload["model"]), ("ema.pt", ema)):
        state = load_checkpoint(tmp_path / name).model.state_dict()
        for k in convs:
            assert torch.equal(state[k], want[k]), (name, k)


def test_without_data_dir_the_recorded_folder_is_used(tmp_path: Path, cifar_folder: Path) -> None:
    cfg = make_config("bn", width=2, dataset="cifar10", data_dir=str(cifar_folder), batch_size=BATCH, subset=100)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck.pt", {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    summary = freeze_checkpoint(tmp_path / "ck.pt", tmp_path / "f.pt")
    assert summary["bn_refresh_batches"] == 100 // BATCH
    assert load_checkpoint(tmp_path / "f.pt").config.data.data_dir == str(cifar_folder)


def test_an_output_over_its_checkpoint_or_a_tiny_batch_is_refused_by_name(tmp_path: Path) -> None:
    parent = make_ckpt(tmp_path / "ck.pt", "bn")
    with pytest.raises(BnlabError, match=r"^the output \S+ is the checkpoint \S+, an input; "):
        freeze_checkpoint(parent, parent, force=True)
    with pytest.raises(BnlabError, match=r"^--batch-size must be at least 2, got 1$"):
        freeze_checkpoint(parent, tmp_path / "f.pt", batch_size=1)
    assert load_checkpoint(parent).config.variant == "bn" and not (tmp_path / "f.pt").exists()


def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # these machines run as root, who may write anywhere: emulate a read-only folder as another user sees it
    parent = make_ckpt(tmp_path / "ck.pt", "bn")
    real = os.access
    monkeypatch.setattr("bnlab.freeze.os.access", lambda p, mode: real(p, mode) and not mode & os.W_OK)
    with pytest.raises(BnlabError, match="not writable"):
        freeze_checkpoint(parent, tmp_path / "f.pt")
    assert not (tmp_path / "f.pt").exists()


def test_frozen_simple_net_without_affine_and_errors(tmp_path: Path) -> None:
    parent = make_ckpt(tmp_path / "ck.pt", "bn", model="simple", act="softplus")
    summary = freeze_checkpoint(parent, tmp_path / "f.pt", batch_size=32)
    assert summary["bn_refresh_batches"] == N_TRAIN // 32 and summary["bn_refresh_batch_size"] == 32
    frozen = load_checkpoint(tmp_path / "f.pt")
    assert frozen.config.model.affine is False and frozen.config.model.model == "simple"
    with pytest.raises(BnlabError, match="exists"):
        freeze_checkpoint(parent, tmp_path / "f.pt")
    freeze_checkpoint(parent, tmp_path / "f.pt", force=True, batch_size=32)
    with pytest.raises(BnlabError, match="does not exist"):
        freeze_checkpoint(parent, tmp_path / "nowhere" / "f.pt")
    with pytest.raises(BnlabError, match="nothing to freeze"):
        freeze_checkpoint(tmp_path / "f.pt", tmp_path / "g.pt")
    nobn = make_ckpt(tmp_path / "nobn.pt", "no_bn")
    with pytest.raises(BnlabError, match="no batch-norm layers"):
        freeze_checkpoint(nobn, tmp_path / "h.pt")


def test_data_dir_override_smallest_batch_and_kept_metadata(tmp_path: Path, cifar_folder: Path) -> None:
    """--data-dir replaces the folder the run was trained from (moved data); batches of 2 are allowed;
    the parent's epoch, step, metrics and seed travel with the frozen checkpoint."""
    cfg = make_config("bn", width=2, dataset="cifar10", data_dir=str(tmp_path / "moved"), batch_size=BATCH,
                      subset=100, seed=5)  # the subset drawn depends on the run's seed
    torch.manual_seed(0)
    model = build_model(cfg.model)
    save_checkpoint(tmp_path / "ck.pt", {"config": cfg.to_dict(), "model": model.state_dict(), "epoch": 3,
                                         "step": 12, "seed": 7, "metrics": [{"epoch": 3, "test_acc": 0.25}]})
    with pytest.raises(BnlabError):  # the recorded folder is gone
        freeze_checkpoint(tmp_path / "ck.pt", tmp_path / "a.pt")
    summary = freeze_checkpoint(tmp_path / "ck.pt", tmp_path / "a.pt", data_dir=str(cifar_folder), batch_size=2)
    data = load_data(dataclasses.replace(cfg.data, data_dir=str(cifar_folder)), "cpu", seed=5)
    assert summary["bn_refresh_batch_size"] == 2 and summary["bn_refresh_batches"] == len(data.train_y) // 2 == 50
    frozen = load_checkpoint(tmp_path / "a.pt")
    refreshed = copy.deepcopy(model)
    refresh_bn_statistics(refreshed, data, 2)  # on the run's own subset
    state = frozen.model.state_dict()
    for name, m in batch_norm_layers(refreshed):
        torch.testing.assert_close(state[f"{name}.running_mean"], m.running_mean)
        torch.testing.assert_close(state[f"{name}.running_var"], m.running_var)
    assert {k: frozen.meta.get(k) for k in ("epoch", "step", "seed")} == {"epoch": 3, "step": 12, "seed": 7}
    assert frozen.meta["metrics"] == [{"epoch": 3, "test_acc": 0.25}]
    with pytest.raises(BnlabError, match="batch-size"):
        freeze_checkpoint(tmp_path / "ck.pt", tmp_path / "b.pt", data_dir=str(cifar_folder), batch_size=1)
