"""Which layers the weight-decay findings check: the convs a batch-statistics BN follows, found from the model."""
from __future__ import annotations

from bnlab.config import make_config
from bnlab.findings.common import bn_preceded_convs


def test_bn_preceded_convs() -> None:
    david = bn_preceded_convs(make_config("bn", width=2).to_dict())
    assert david == ["prep.conv.weight", "layer1.conv.weight", "layer1_res.a.conv.weight", "layer1_res.b.conv.weight",
                     "layer2.conv.weight", "layer3.conv.weight", "layer3_res.a.conv.weight",
                     "layer3_res.b.conv.weight"]
    simple = bn_preceded_convs(make_config("bn", model="simple", width=2).to_dict())
    assert len(simple) == 7 and "classifier.weight" not in simple  # the 1x1 classifier conv has no BN after it
    assert len(bn_preceded_convs(make_config("ghost_bn", width=2, batch_size=32).to_dict())) == 8
    for variant in ("no_bn", "frozen_bn"):  # no batch statistics: nothing is scale-invariant by BN
        assert bn_preceded_convs(make_config(variant, width=2).to_dict()) == []
