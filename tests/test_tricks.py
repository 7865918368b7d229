"""What each trick of the bag-of-tricks recipe computes, against ground truth written here: numpy's
eigendecomposition for the whitening filters, a hand-written EMA, two forwards for TTA, the SGD update
by hand for the bias groups, the block order written out, chunk statistics for ghost BN."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from bnlab.checkpoint import load_checkpoint
from bnlab.cli import main
from bnlab.config import TrainConfig
from bnlab.data import load_data
from bnlab.ema import WeightEMA
from bnlab.errors import BnlabError
from bnlab.models import ConvBlock, ModelSpec, build_model, count_parameters
from bnlab.norms import GhostBatchNorm
from bnlab.optim import param_groups
from bnlab.recipes import RECIPES, STEPS, recipe_config
from bnlab.train import evaluate, init_model, train
from bnlab.tta import tta_logits
from bnlab.whitening import PatchWhitening, whitening_filters

pytestmark = pytest.mark.usefixtures("one_thread")


def correlated_images(n: int = 12, size: int = 7, seed: int = 0) -> torch.Tensor:
    """Images whose channels and neighbouring pixels are correlated (a smoothed, mixed noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size + 2, size + 2, generator=g, dtype=torch.float64)
    x = F.avg_pool2d(x, 3, stride=1)  # neighbouring pixels correlate
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.3, 1.0, 0.4], [0.1, 0.6, 1.0]], dtype=torch.float64)
    return torch.einsum("dc,nchw->ndhw", mix, x) + 0.3


def numpy_patch_covariance(x: np.ndarray) -> np.ndarray:
    rows = [x[n, :, i:i + 3, j:j + 3].reshape(-1) for n in range(x.shape[0])
            for i in range(x.shape[2] - 2) for j in range(x.shape[3] - 2)]
    X = np.stack(rows)
    return X.T @ X / (len(X) - 1)


def test_whitening_filters_are_numpys_eigenvectors_over_sqrt_eigenvalue_plus_eps() -> None:
    x = correlated_images()
    eps = 1e-2
    lam, vec = np.linalg.eigh(numpy_patch_covariance(x.numpy()))
    lam, vec = lam[::-1], vec[:, ::-1]  # decreasing, as Page's filters
    want = (vec / np.sqrt(lam + eps)).T  # row i: v_i / sqrt(λ_i + eps)
    got = whitening_filters(x, eps).double().reshape(27, 27).numpy()
    signs = np.sign((got * want).sum(1))  # an eigenvector's sign is arbitrary
    assert np.all(signs != 0)
    np.testing.assert_allclose(got * signs[:, None], want, rtol=1e-4, atol=1e-5)
    # closed form: the whitened patches have covariance diag(λ / (λ + eps))
    C = got @ numpy_patch_covariance(x.numpy()) @ got.T
    np.testing.assert_allclose(C, np.diag(lam / (lam + eps)), atol=1e-4)


def test_the_whitening_layer_is_a_fixed_conv_with_padding_one() -> None:
    x = correlated_images(n=2)
    layer = PatchWhitening(3).double()
    layer.set_filters(whitening_filters(x).double())
    y = layer(x)
    assert y.shape == (2, 27, 7, 7)
    patch = x[1, :, 2:5, 3:6].reshape(-1)  # the patch centred at (3, 4)
    torch.testing.assert_close(y[1, :, 3, 4], layer.weight.reshape(27, 27) @ patch)
    assert not list(layer.parameters()) and "weight" in layer.state_dict()
    with pytest.raises(BnlabError, match="do not fit"):
        layer.set_filters(torch.zeros(27, 3, 2, 2))


def test_init_model_whitens_from_the_first_training_images() -> None:
    cfg = recipe_config("bag-of-tricks", width=2, dataset="synthetic", synthetic_train=200, synthetic_test=20,
                        batch_size=32)
    data = load_data(cfg.data, "cpu", seed=0)
    model = init_model(cfg, data, torch.device("cpu"))
    x = (data.train_x.float() - data.stats()[0]) / data.stats()[1]
    torch.testing.assert_close(model.prep.whiten.weight, whitening_filters(x))
    assert not any("whiten" in n for n, _ in model.named_parameters())
    assert model.prep.conv.kernel_size == (1, 1) and model.prep.conv.in_channels == 27


def test_ema_is_the_hand_update_every_k_steps_of_parameters_and_bn_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = WeightEMA(model, momentum=0.9, every=2)
    rho = 0.9 ** 2
    hand = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 6):
        with torch.no_grad():  # stand-ins for an optimizer step and BN's running statistics moving
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        updated = ema.update(model, step)
        assert updated == (step % 2 == 1)  # steps 1, 3, 5: the first step included
        if updated:
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    hand[k] = rho * hand[k] + (1 - rho) * v
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, hand[k])
    assert int(ema.state_dict()["1.num_batches_tracked"]) == 0  # integers are not averaged
    assert all(not p.requires_grad for p in ema.model.parameters())


def test_tta_is_the_mean_of_two_forwards_and_evaluate_reports_it() -> None:
    cfg = recipe_config("bag-of-tricks", width=2, dataset="synthetic", synthetic_train=100, synthetic_test=40,
                        batch_size=32)
    data = load_data(cfg.data, "cpu", seed=0)
    model = init_model(cfg, data, torch.device("cpu")).eval()
    x = (data.test_x.float() - data.stats()[0]) / data.stats()[1]
    with torch.no_grad():
        plain, mirrored = model(x), model(x[..., torch.arange(x.shape[-1] - 1, -1, -1)])
        both = tta_logits(model, x)
    torch.testing.assert_close(both, (plain + mirrored) / 2)
    loss, acc = evaluate(model, data, cfg, torch.device("cpu"))
    mean = (plain + mirrored) / 2
    assert acc == pytest.approx((mean.argmax(1) == data.test_y).float().mean().item())
    assert loss == pytest.approx(F.cross_entropy(mean, data.test_y, label_smoothing=0.2).item(), rel=1e-5)
    assert evaluate(model, data, cfg.replace(tta=False), torch.device("cpu"))[1] == pytest.approx(
        (plain.argmax(1) == data.test_y).float().mean().item())


def test_bias_groups_take_lr_times_k_and_wd_over_k_in_the_sgd_update() -> None:
    spec = ModelSpec(width=2, norm="ghost", ghost_splits=2, frozen_scales=True)
    model = build_model(spec)
    cfg = TrainConfig(model=spec, weight_decay=5e-4, bias_scale=64.0, momentum=0.0, nesterov=False)
    groups = param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    weights, biases = groups
    assert all(not names[id(p)].endswith("bias") for p in weights["params"])
    assert {names[id(p)] for p in biases["params"]} == {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert (weights["lr_scale"], weights["weight_decay"]) == (1.0, 5e-4)
    assert (biases["lr_scale"], biases["weight_decay"]) == (64.0, 5e-4 / 64)
    # one plain SGD step with the trainer's lr rule (lr x lr_scale) against w - lr·k·(g + wd/k·w)
    opt = torch.optim.SGD(groups, lr=0.0, momentum=0.0)
    for g in opt.param_groups:
        g["lr"] = 0.1 * g["lr_scale"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.5)
    opt.step()
    for n, p in model.named_parameters():
        k = 64.0 if n.endswith(".bias") else 1.0
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * k * (0.5 + 5e-4 / k * before[n]))
    assert len(param_groups(model, cfg.replace(bias_scale=1.0))) == 1


def test_pool_first_block_is_conv_pool_norm_act() -> None:
    torch.manual_seed(0)
    block = ConvBlock(3, 4, ModelSpec(width=4, norm="bn", act="celu", pool_first=True), pool=True).train()
    default = copy.deepcopy(block)
    default.pool_first = False
    x = torch.randn(6, 3, 8, 8)
    seen = []
    block.norm.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    want = F.celu(F.batch_norm(F.max_pool2d(block.conv(x), 2), None, None, block.norm.weight, block.norm.bias,
                               training=True), alpha=0.3)
    torch.testing.assert_close(block(x), want)
    assert seen[0][-2:] == (4, 4)  # BN sees the pooled map
    assert not torch.allclose(default(x), want)  # the published order computes something else


def test_ghost_bn_of_the_recipe_normalises_each_chunk_of_the_batch_on_its_own() -> None:
    cfg = recipe_config("bag-of-tricks", width=2)
    model = build_model(cfg.model).train()
    ghosts = [m for m in model.modules() if isinstance(m, GhostBatchNorm)]
    assert len(ghosts) == 8 and {m.splits for m in ghosts} == {16}
    m = ghosts[1]
    with torch.no_grad():
        m.bias.copy_(torch.arange(m.num_features, dtype=torch.float32))
    x = torch.randn(64, m.num_features, 3, 3) * 3 + 2
    y = m(x)
    for c in range(16):  # rows [4c, 4c + 4) are one ghost batch: zero mean, unit variance, then + β
        chunk = x[4 * c:4 * c + 4]
        mu = chunk.mean((0, 2, 3), keepdim=True)
        var = chunk.var((0, 2, 3), unbiased=False, keepdim=True)
        want = (chunk - mu) / torch.sqrt(var + m.eps) + m.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(y[4 * c:4 * c + 4], want)


def test_frozen_scales_stay_at_one_while_beta_moves_in_training(tmp_path) -> None:
    cfg = recipe_config("bag-of-tricks", width=2, dataset="synthetic", synthetic_train=128, synthetic_test=32,
                        batch_size=32, epochs=1, log_every=0)
    model = build_model(cfg.model)
    assert not any(n.endswith("norm.weight") for n, _ in model.named_parameters())
    plain = build_model(dataclasses.replace(cfg.model, frozen_scales=False))
    assert count_parameters(plain) - count_parameters(model) == sum(m.num_features for m in model.modules()
                                                                    if isinstance(m, GhostBatchNorm))
    train(cfg, tmp_path / "run", device="cpu", quiet=True)
    state = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["model"]
    start = init_model(cfg, load_data(cfg.data, "cpu", seed=0), torch.device("cpu")).state_dict()
    gammas = [k for k in state if k.endswith("norm.weight")]
    betas = [k for k in state if k.endswith("norm.bias")]
    assert len(gammas) == len(betas) == 8
    assert all(torch.equal(state[k], torch.ones_like(state[k])) for k in gammas)
    assert all(not torch.equal(state[k], start[k]) for k in betas)
    torch.testing.assert_close(state["prep.whiten.weight"], start["prep.whiten.weight"])  # never trained


def test_frozen_scales_need_a_learnable_scale() -> None:
    with pytest.raises(BnlabError, match="frozen-scales"):
        ModelSpec(norm="none", frozen_scales=True).validate()
    with pytest.raises(BnlabError, match="frozen-scales"):
        ModelSpec(norm="bn", affine=False, frozen_scales=True).validate()


def test_recipes_hold_the_posts_settings_and_stretch_with_epochs() -> None:
    b = recipe_config("bag-of-tricks")
    assert (b.epochs, b.lr, b.lr_knots, b.lr_mults) == (10, 1.0, (0.0, 2.0, 8.0), (0.0, 1.0, 0.1))
    m = b.model
    assert (m.pool_first, m.act, m.act_param, m.norm, m.ghost_splits, m.frozen_scales, m.whiten) == (
        True, "celu", 0.3, "ghost", 16, True, True)
    assert m.classifier_scale == pytest.approx(1 / 16)
    assert (b.label_smoothing, b.bias_scale, b.ema_momentum, b.ema_every, b.tta, b.data.cutout) == (
        0.2, 64.0, 0.99, 5, True, 0)
    assert b.recipe == "bag-of-tricks" and b.batch_size == 512 and b.weight_decay == 5e-4
    base = recipe_config("baseline")
    assert base == recipe_config("baseline", epochs=24) and base.replace(recipe=None) == TrainConfig.from_dict(
        {**base.to_dict(), "recipe": None})
    assert (base.epochs, base.lr, base.lr_knots, base.model.norm, base.data.cutout, base.tta) == (
        24, 0.4, (0.0, 5.0, 24.0), "bn", 8, False)
    short = recipe_config("bag-of-tricks", epochs=5, width=16)
    assert short.lr_knots == (0.0, 1.0, 4.0) and short.model.width == 16
    assert recipe_config("bag-of-tricks", lr_knots=(0, 1, 3)).lr_knots == (0.0, 1.0, 3.0)
    assert recipe_config("bag-of-tricks", variant="bn").model.norm == "bn"  # the variant replaces the norm
    assert [s.post_seconds for s in STEPS] == [70, 64, 59, 52, 46, 43, 36, 34, 26]
    assert RECIPES["bag-of-tricks"] is STEPS[-1]
    with pytest.raises(BnlabError, match="unknown recipe"):
        recipe_config("fast")


def test_ema_runs_resume_bit_identically(tmp_path) -> None:
    cfg = recipe_config("bag-of-tricks", width=2, dataset="synthetic", synthetic_train=96, synthetic_test=32,
                        batch_size=32, epochs=2, log_every=0, ema_every=2)
    whole = train(cfg, tmp_path / "a", device="cpu", quiet=True)
    assert train(cfg, tmp_path / "b", device="cpu", quiet=True, stop_after_epoch=1).status == "stopped"
    resumed = train(None, tmp_path / "b", device="cpu", quiet=True, resume=True)
    a, b = (torch.load(tmp_path / d / "final.pt", weights_only=True) for d in ("a", "b"))
    assert a["ema"].keys() == a["model"].keys()
    for key in ("model", "ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert whole.metrics["test_acc"] == resumed.metrics["test_acc"]
    # the reported accuracy is the EMA model's (with TTA)
    data = load_data(cfg.data, "cpu", seed=0)
    ema = load_checkpoint(tmp_path / "a" / "final.pt", weights="ema").model
    assert evaluate(ema, data, cfg, torch.device("cpu"))[1] == pytest.approx(whole.metrics["test_acc"])
    assert math.isfinite(whole.metrics["test_loss"])


def test_train_cli_recipe_with_overrides_and_info(tmp_path) -> None:
    def run(*args: object):  # noqa: ANN202
        return CliRunner().invoke(main, [str(a) for a in args])

    tiny = ["--width", "2", "--dataset", "synthetic", "--subset", "80", "--test-subset", "20", "--batch-size", "32",
            "--epochs", "1", "--log-every", "0", "-q", "--device", "cpu"]
    r = run("train", "--recipe", "bag-of-tricks", "--no-tta", "--ema", "0.9", *tiny, "--out", tmp_path / "r")
    assert r.exit_code == 0, r.output
    cfg = TrainConfig.from_dict(json.loads((tmp_path / "r" / "config.json").read_text()))
    assert cfg.recipe == "bag-of-tricks" and not cfg.tta and cfg.ema_momentum == 0.9  # the options win
    assert cfg.lr_knots == (0.0, 0.2, 0.8) and cfg.model.whiten and cfg.bias_scale == 64  # knots stretched to 1 epoch
    info = run("info", tmp_path / "r" / "final.pt")
    assert info.exit_code == 0 and "recipe bag-of-tricks" in info.output and "patch whitening" in info.output
    r = run("train", "--resume", tmp_path / "r", "--recipe", "baseline")
    assert r.exit_code == 2 and "own config" in r.output
    r = run("train", "--recipe", "bag-of-tricks", *tiny, "--batch-size", "40", "--out", tmp_path / "bad")
    assert r.exit_code == 2 and "divisible" in r.output and "Traceback" not in r.output
