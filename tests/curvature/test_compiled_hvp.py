"""`--hvp-method func_compiled` (torch.func through torch.compile) gives the eager products: both against
the dense Hessian of a tiny BN network, in batch and running mode, one vector and a block (``-m slow``:
compiling is minutes on a loaded CPU)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.curvature import HessianOperator, dense_hessian
from bnlab.curvature.hessian import HessianOptions

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny() -> tuple[nn.Sequential, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Softplus(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(1)
    return net, [(torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
                 for _ in range(2)]


@pytest.mark.slow  # torch.compile: 60 s of CPU for the two modes, 7 min wall on the loaded 2-core machine
@pytest.mark.parametrize("mode", ["batch", "running"])
def test_compiled_products_equal_eager_and_dense_truth(mode: str) -> None:
    net, batches = tiny()
    H = dense_hessian(net, batches, F.cross_entropy, mode)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ops = {m: HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode=mode, method=m, loss_scale="batch-sum")
           for m in ("func", "func_compiled")}
    V = torch.randn(3, H.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for V_ in (V, V[:1]):  # a block (vmapped) and one vector
        eager, compiled = (ops[m].matmat(V_) for m in ("func", "func_compiled"))
        truth = 6.0 * V_ @ H  # batch-sum units over batches of 6
        torch.testing.assert_close(eager, truth, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(compiled, truth, rtol=1e-9, atol=1e-11)
    assert ops["func_compiled"].describe()["hvp_method"] == "func_compiled"
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the model is untouched


def test_compiled_method_is_an_option_without_graph_cache() -> None:
    HessianOptions(hvp_method="func_compiled").validate()
    net, batches = tiny()
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", method="func_compiled")
    assert op.cache_graphs is False  # "auto" streams: there is no gradient graph to keep
