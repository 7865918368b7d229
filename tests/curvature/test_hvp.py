"""The wiring of ``method="func_compiled"`` (`bnlab.curvature.hvp.compiled_func_block`), fast.

The compiled products themselves (inductor) are checked by tests/curvature/test_compiled_hvp.py, which
is marked slow (minutes of CPU). Here ``torch.compile`` keeps everything of the real call (the function,
``dynamic=``, dynamo's tracing and guards) except the backend: a recording eager backend runs the
traced graph as it is (seconds, no inductor codegen) and notes the shapes each compile saw. The truth
is the dense float64 Hessian of a tiny BN network (`dense_hessian`: jacfwd of grad, no compile).
"""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bnlab.curvature.hvp as hvp
from bnlab.curvature import HessianOperator, dense_hessian

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def tiny(sizes: tuple[int, ...]) -> tuple[nn.Sequential, list[tuple[torch.Tensor, torch.Tensor]]]:
    """4 -> 3 (BatchNorm1d) -> softplus -> 2 classes, float64, and batches of the given sizes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Softplus(), nn.Linear(3, 2)).double()
    g = torch.Generator().manual_seed(1)
    return net, [(torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g))
                 for n in sizes]


class EagerCompile:
    """torch.compile with a recording eager backend in place of inductor: counts the torch.compile
    calls and, per compiled graph, whether any input was symbolic (a dynamic-shape graph)."""

    def __init__(self) -> None:
        self.real = torch.compile
        self.calls: list[dict] = []
        self.symbolic: list[bool] = []  # one entry per graph dynamo handed to the backend

    def backend(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        def is_symbolic(v: object) -> bool:
            return isinstance(v, torch.SymInt) or (isinstance(v, torch.Tensor)
                                                    and any(isinstance(d, torch.SymInt) for d in v.shape))
        self.symbolic.append(any(is_symbolic(n.meta.get("example_value")) for n in gm.graph.nodes
                                 if n.op == "placeholder"))
        return gm.forward

    def __call__(self, *args, **kwargs):
        self.calls.append(dict(kwargs))
        return self.real(*args, backend=self.backend, **kwargs)


@pytest.fixture
def eager_compile(monkeypatch: pytest.MonkeyPatch):
    """A fresh compile state: no compiled function kept by hvp, dynamo's caches empty before and after."""
    torch._dynamo.reset()
    rec = EagerCompile()
    monkeypatch.setattr(torch, "compile", rec)
    monkeypatch.setattr(hvp, "_compiled", [])
    yield rec
    torch._dynamo.reset()


def test_compiled_products_equal_dense_hessian(eager_compile: EagerCompile) -> None:
    # every argument must reach the compiled func_block: a block of 3 vectors (the vmapped path) against
    # the dense Hessian (one batch: a single graph to trace)
    net, batches = tiny((5,))
    H = dense_hessian(net, batches, F.cross_entropy, "batch")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", method="func_compiled")
    V = torch.randn(3, H.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), V @ H, rtol=1e-9, atol=1e-11)
    assert len(eager_compile.symbolic) >= 1  # the product did go through torch.compile
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # model and BN buffers untouched


def test_compiled_once_with_static_shapes_per_batch_shape(eager_compile: EagerCompile) -> None:
    # The compiled function is made once and kept (hvp._compiled); compiling is static (dynamic=False):
    # batches of 5 and 3 are two separate static graphs, never one symbolic graph (torch's default,
    # automatic dynamic shapes, would trace the second batch size symbolically; dynamic=True, the first).
    # The weights n_b/N of the two batches are checked through the dense truth.
    net, batches = tiny((5, 3))
    H = dense_hessian(net, batches, F.cross_entropy, "batch")
    op = HessianOperator(net, batches, loss_fn=F.cross_entropy, bn_mode="batch", method="func_compiled")
    V = torch.randn(2, H.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), V @ H, rtol=1e-9, atol=1e-11)
    graphs = len(eager_compile.symbolic)
    assert graphs >= 2 and not any(eager_compile.symbolic)  # a static graph per batch shape, none symbolic
    torch.testing.assert_close(op.matmat(2.0 * V), 2.0 * V @ H, rtol=1e-9, atol=1e-11)
    assert len(eager_compile.symbolic) == graphs  # the same shapes again: no recompile
    assert len(eager_compile.calls) == 1  # torch.compile called once, its function kept
