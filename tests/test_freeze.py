import pytest
import torch

from bnlab import load_checkpoint
from bnlab.data import load_data
from bnlab.freeze import freeze_checkpoint
from bnlab.norms import FrozenNorm
from bnlab.train import train
from conftest import tiny_config


@pytest.mark.parametrize("variant", ["bn", "ghost_bn"])
def test_frozen_model_is_the_bn_model_in_eval_mode_with_refreshed_stats(tmp_path, variant):
    cfg = tiny_config(variant, epochs=1)
    train(cfg, tmp_path / "run", quiet=True)
    summary = freeze_checkpoint(tmp_path / "run" / "final.pt", tmp_path / "frozen.pt")
    parent = load_checkpoint(tmp_path / "run" / "final.pt")
    frozen = load_checkpoint(tmp_path / "frozen.pt")
    assert frozen.config.variant == "frozen_bn" and frozen.config.model.norm == "frozen"
    assert not frozen.has_batch_stats
    assert sum(isinstance(m, FrozenNorm) for m in frozen.model.modules()) == 8
    assert summary["bn_refresh_batches"] == 1024 // 128
    # Reference: refresh the parent's BN stats by hand (exact mean over the pass), eval mode.
    data = load_data(cfg.data, "cpu", seed=cfg.seed)
    from bnlab.freeze import refresh_bn_statistics
    refresh_bn_statistics(parent.model, data, 128)
    x = torch.randn(16, 3, 32, 32)
    torch.testing.assert_close(frozen.model(x), parent.model.eval()(x), rtol=1e-5, atol=1e-5)
    # batch independence: one example alone or in a batch gives the same logits
    torch.testing.assert_close(frozen.model(x[:1]), frozen.model(x)[:1], rtol=1e-5, atol=1e-6)
