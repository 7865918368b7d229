import math

import pytest
import torch
from torch import nn

from bnlab.errors import BnlabError
from bnlab.models import ModelSpec, build_model, count_parameters, davidnet, simple_net
from bnlab.norms import FrozenNorm, GhostBatchNorm


def test_davidnet_parameter_count_matches_the_published_net():
    # Page's net: ~6.57M (docs/background.md); exact count of convs (no bias) + BN affine + linear 512x10.
    assert count_parameters(davidnet()) == 6_573_120


def test_simple_net_parameter_count_matches_the_post():
    # The batch-norm post's net: ~4.65M, BN affine frozen so only conv weights are parameters.
    assert count_parameters(simple_net()) == 4_651_712


@pytest.mark.parametrize("model", ["davidnet", "simple"])
@pytest.mark.parametrize("norm", ["bn", "bn_fixed_affine", "ghost", "frozen", "none"])
@pytest.mark.parametrize("act", ["relu", "celu", "softplus"])
def test_every_variant_builds_and_maps_images_to_logits(model, norm, act):
    net = build_model(ModelSpec(model=model, width=8, norm=norm, act=act, ghost_splits=2))
    net.train()
    out = net(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


def test_width_scales_every_channel_count():
    net = davidnet(width=16)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 32, 64, 128, 128, 128]
    assert net.classifier.in_features == 128


def test_norm_modules_and_biases_follow_the_variant():
    assert any(isinstance(m, GhostBatchNorm) for m in davidnet(8, norm="ghost").modules())
    assert sum(isinstance(m, FrozenNorm) for m in davidnet(8, norm="frozen").modules()) == 8
    no_bn = davidnet(8, norm="none")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    convs = [m for m in no_bn.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None and torch.all(c.bias == 0) for c in convs)
    assert all(c.bias is None for c in davidnet(8).modules() if isinstance(c, nn.Conv2d))


def test_he_init_for_unnormalised_and_simple_nets():
    torch.manual_seed(0)
    conv = davidnet(64, norm="none").layer3_res.a.conv.weight  # fan_in 512*9
    assert conv.var().item() == pytest.approx(2 / (512 * 9), rel=0.02)
    default = davidnet(64).layer3_res.a.conv.weight
    assert default.var().item() == pytest.approx(1 / (3 * 512 * 9), rel=0.02)


def test_classifier_scales():
    assert davidnet(8).scale.scale == 0.125
    assert simple_net(8).scale.scale == pytest.approx(0.125 / math.sqrt(6))
    assert davidnet(8, classifier_scale=1 / 16).scale.scale == 1 / 16


def test_bad_options_are_refused():
    with pytest.raises(BnlabError, match="unknown norm"):
        davidnet(8, norm="layer")
    with pytest.raises(BnlabError, match="relu takes no"):
        davidnet(8, act="relu", act_param=2.0)
    with pytest.raises(BnlabError, match="no learnable affine"):
        davidnet(8, norm="bn_fixed_affine", affine=True)
