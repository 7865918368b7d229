"""DataOperator's own contract, through the smallest operator one can add: M_b = I for every batch.

Then M = c · [Σ_b (n_b/N) I + wd · D] = c · (I + wd · D) in closed form (D: the decay mask), whatever the
model, so the base's weighting, units, defaults, dtype handling, block passes and record are checked
without any curvature code in between. HessianOperator and the Gauss-Newton operators pass every argument
explicitly; only a subclass that takes the base's defaults sees them, so they are tested here.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.curvature.base import DataOperator

pytestmark = pytest.mark.usefixtures("one_thread")


class Identity(DataOperator):
    """weight · V per batch: the identity's curvature over the batches (a test-only operator)."""

    matrix = "identity"
    title = "identity"

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[torch.dtype, int, float]] = []

    def batch_product(self, x: torch.Tensor, y: torch.Tensor, weight: float, V: torch.Tensor) -> torch.Tensor:
        self.seen.append((V.dtype, len(y), weight))
        return weight * V


def net32() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # float32: 26 parameters


def batches(sizes: tuple[int, ...] = (6, 2)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)) for n in sizes]


def make(**kw) -> Identity:  # noqa: ANN003
    return Identity(net32(), batches(), loss_fn=F.cross_entropy, bn_mode="none", **kw)


def test_the_defaults_give_the_identity_in_mean_units() -> None:
    op = make()
    V = torch.randn(3, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = op.matmat(V)
    assert out.dtype == torch.float64 and out.shape == V.shape
    # computed in float32 (the model's dtype): 0.75 v + 0.25 v of the float32 vector, no decay term by default
    torch.testing.assert_close(out, V.float().double(), rtol=2e-7, atol=0)
    assert op.weight_decay == 0.0 and op.scale == 1.0 and op.batch_size == 6
    assert [(d, n) for d, n, _ in op.seen] == [(torch.float32, 6), (torch.float32, 2)]  # the model's dtype
    assert [w for _, _, w in op.seen] == [0.75, 0.25]


def test_decay_and_batch_sum_units_in_closed_form() -> None:
    decayed = lambda name: name.endswith("weight")  # noqa: E731
    op = make(weight_decay=0.5, decayed=decayed, loss_scale="batch-sum", batch_size=4)
    mask = torch.cat([torch.full((p.numel(),), float(decayed(n))) for n, p in net32().named_parameters()]).double()
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    want = 4 * (v.float().double() + 0.5 * mask * v)  # c (I + wd D) v, c = 4
    torch.testing.assert_close(op.matvec(v), want, rtol=1e-6, atol=0)
    assert [w for _, _, w in op.seen] == [4 * 0.75, 4 * 0.25]


def test_default_block_is_16_vectors_per_pass() -> None:
    op = make()
    for m, passes in ((16, 1), (17, 3), (33, 6)):  # cumulative: 1, then 2 more, then 3 more
        op.matmat(torch.zeros(m, op.dim, dtype=torch.float64))
        assert op.passes == passes
    assert op.block_size == 16 and op.hvp_count == 16 + 17 + 33
    assert len(op.seen) == 2 * passes  # two batches per pass


def test_the_record_names_the_matrix_params_and_provenance() -> None:
    op = make()
    d, s = op.describe(), op.settings
    assert d["matrix"] == "identity" and d["dim"] == 26 and d["num_samples"] == 8 and d["num_batches"] == 2
    assert d["dtype"] == "float32" and d["weight_decay_term"] == 0.0 and "distributed" not in d
    assert s["params"] == ["*"] and s["matrix"] == "identity" and s["units"] == "mean loss over the evaluation set"
    assert set(s) == set(d) | {"params", "units"}  # no provenance given: nothing else
    assert op.provenance == {}
    sub = make(params=["0.*"], provenance={"checkpoint": "x.pt"})
    assert sub.settings["params"] == ["0.*"] and sub.settings["checkpoint"] == "x.pt" and sub.dim == 16
    assert sub.provenance == {"checkpoint": "x.pt"}
    summed = make(loss_scale="batch-sum")
    assert summed.units == "loss summed over a batch of 6 (= 6 x mean-loss identity)"


class SeesDevices(Identity):
    """Identity that also records the device of every block it is handed."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.devices: list[torch.device] = []

    def batch_product(self, x: torch.Tensor, y: torch.Tensor, weight: float, V: torch.Tensor) -> torch.Tensor:
        self.devices.append(V.device)
        return super().batch_product(x, y, weight, V)


def test_blocks_go_to_the_models_device_and_products_come_back_to_the_vectors() -> None:
    """FakeTensorMode stands in for a GPU on a CPU (devices and shapes through every op, mixing refused as on
    CUDA, no values): the model on "cuda", a block of vectors on either device, with a decay term (its mask lives
    on the CPU). One block is called directly: fake CUDA views (matmat's slicing into blocks) need a CUDA build.
    The CUDA tests of test_operator.py check the values."""
    fake = pytest.importorskip("torch._subclasses.fake_tensor")
    cuda = torch.device("cuda", 0)
    model, data = net32(), batches()
    with fake.FakeTensorMode(allow_non_fake_inputs=True):
        op = SeesDevices(model.to(cuda), [(x.to(cuda), y.to(cuda)) for x, y in data], loss_fn=F.cross_entropy,
                         bn_mode="none", weight_decay=0.5)
        for device in (torch.device("cpu"), cuda):
            assert op._block(torch.zeros(3, op.dim, dtype=torch.float64, device=device)).device == device
        assert set(op.devices) == {cuda}


def test_no_vectors_give_an_empty_answer_on_their_device() -> None:
    meta = torch.device("meta")  # a device other than the model's, as a GPU would be
    op = make()
    out = op.matmat(torch.zeros(0, op.dim, dtype=torch.float64, device=meta))
    assert out.device == meta and out.shape == (0, op.dim) and op.passes == 0


def test_the_gradient_is_kept_on_the_models_device() -> None:
    # PyTorch's meta device stands in for a GPU here (autograd runs on it; FakeTensorMode's CUDA does not)
    meta = torch.device("meta")
    op = Identity(net32().to(meta), [(x.to(meta), y.to(meta)) for x, y in batches()], loss_fn=F.cross_entropy,
                  bn_mode="none", weight_decay=0.5)
    assert op.gradient().device == meta
