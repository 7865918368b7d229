import pytest
import torch
import torch.nn.functional as F

from bnlab.bnmode import bn_mode, resolve_bn_mode
from bnlab.errors import BnlabError
from bnlab.models import davidnet
from bnlab.norms import FrozenNorm, GhostBatchNorm, calibrate_frozen_norms


def test_ghost_bn_normalises_each_chunk_with_its_own_statistics():
    torch.manual_seed(0)
    g = GhostBatchNorm(3, splits=4).double()
    with torch.no_grad():
        g.weight.uniform_(0.5, 2)
        g.bias.uniform_(-1, 1)
    x = torch.randn(16, 3, 5, 5, dtype=torch.double) * 3 + 1
    y = g(x)
    for chunk_x, chunk_y in zip(x.chunk(4), y.chunk(4)):
        ref = F.batch_norm(chunk_x, None, None, g.weight, g.bias, training=True, eps=g.eps)
        torch.testing.assert_close(chunk_y, ref)
    # running stats: momentum average of the chunks' mean and unbiased variance
    means = torch.stack([c.mean(dim=(0, 2, 3)) for c in x.chunk(4)]).mean(0)
    vars_ = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in x.chunk(4)]).mean(0)
    torch.testing.assert_close(g.running_mean, 0.1 * means)
    torch.testing.assert_close(g.running_var, 0.9 + 0.1 * vars_)
    with pytest.raises(BnlabError, match="divisible"):
        g(x[:6])


def test_frozen_norm_output_does_not_depend_on_the_batch():
    torch.manual_seed(0)
    net = davidnet(8, norm="frozen").train()
    x = torch.randn(64, 3, 32, 32)
    calibrate_frozen_norms(net, x)
    alone = net(x[:1])
    mixed = net(torch.cat([x[:1], torch.randn(7, 3, 32, 32) * 5 + 3]))[:1]
    torch.testing.assert_close(alone, mixed)
    # and training leaves the statistics alone
    before = [m.running_mean.clone() for m in net.modules() if isinstance(m, FrozenNorm)]
    net(torch.randn(16, 3, 32, 32) * 10)
    after = [m.running_mean for m in net.modules() if isinstance(m, FrozenNorm)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_calibration_makes_each_frozen_layer_standardise_its_input():
    torch.manual_seed(0)
    net = davidnet(8, norm="frozen", affine=False)
    x = torch.randn(256, 3, 32, 32)
    calibrate_frozen_norms(net, x)
    h = net.prep.conv(x)
    z = net.prep.norm(h)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.var(dim=(0, 2, 3), unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


def test_bn_mode_never_touches_buffers_and_restores_flags():
    torch.manual_seed(0)
    net = davidnet(8, norm="ghost", ghost_splits=2).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 3, 32, 32)
    with bn_mode(net, "batch"):
        y_batch = net(x)
    with bn_mode(net, "running"):
        y_run = net(x)
    assert not net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not torch.allclose(y_batch, y_run)
    assert resolve_bn_mode(net, None) == "batch"
    with pytest.raises(BnlabError, match="impossible"):
        resolve_bn_mode(davidnet(8, norm="none"), "batch")
    assert resolve_bn_mode(davidnet(8, norm="frozen"), None) == "none"


@pytest.mark.parametrize("norm", ["bn", "bn_fixed_affine", "ghost"])
def test_running_mode_affine_equals_eval_batch_norm(norm: str) -> None:
    """Running mode computes eval BN as x*scale+shift: same values and gradients as F.batch_norm, in float64."""
    from bnlab.norms import batch_norm_layers
    torch.manual_seed(0)
    net = davidnet(4, norm=norm, ghost_splits=2).double()
    with torch.no_grad():
        for _, m in batch_norm_layers(net):
            m.running_mean.normal_()
            m.running_var.uniform_(0.2, 3.0)
            if m.affine and m.weight.requires_grad:
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
    x = torch.randn(6, 3, 32, 32, dtype=torch.double)
    params = [p for p in net.parameters() if p.requires_grad]

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        loss = net(x).square().sum()
        return loss, list(torch.autograd.grad(loss, params))

    net.eval()
    ref_loss, ref_grads = loss_and_grads()
    with bn_mode(net, "running"):
        assert all("forward" in m.__dict__ for _, m in batch_norm_layers(net))
        loss, grads = loss_and_grads()
    assert all("forward" not in m.__dict__ for _, m in batch_norm_layers(net))  # restored
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
