"""lambda1 on two disjoint halves of an evaluation set (`bnlab.curvature.halves`): the halves are the whole's
batches split in two, their Hessians weight back to the whole's (n1 H1 + n2 H2 = N H, dense float64 truth),
and each half's lambda1 is its dense matrix's top eigenvalue."""
from __future__ import annotations

import pytest
import torch

from bnlab.checkpoint import save_checkpoint
from bnlab.config import make_config
from bnlab.context import EvalSpec, build_context
from bnlab.curvature.halves import halves, lambda1_halves
from bnlab.curvature.source import curvature_operator
from bnlab.errors import BnlabError
from bnlab.models import build_model


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    torch.set_num_threads(1)
    cfg = make_config("bn", model="simple", width=1, act="softplus", dataset="synthetic", synthetic_train=80,
                      synthetic_test=20)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("halves") / "bn.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    return build_context(str(path), EvalSpec(num_samples=40, batch_size=10, dtype="float64"), device="cpu")


PARAMS = ("classifier.weight",)  # 80 parameters: dense truth in 80 products per half


def _dense(c) -> torch.Tensor:  # noqa: ANN001
    op = curvature_operator(c, "hessian", params=PARAMS)
    return op.matmat(torch.eye(op.dim, dtype=torch.float64))


def test_halves_are_the_whole_s_batches_and_weight_back_to_its_hessian(ctx) -> None:  # noqa: ANN001
    a, b = halves(ctx)
    assert (len(a.y), len(b.y)) == (20, 20) and a.sizes == b.sizes == [10, 10]
    assert torch.equal(torch.cat([a.x, b.x]), ctx.x) and torch.equal(torch.cat([a.y, b.y]), ctx.y)
    whole, ha, hb = _dense(ctx), _dense(a), _dense(b)
    torch.testing.assert_close((20 * ha + 20 * hb) / 40, whole, rtol=1e-9, atol=1e-9 * float(whole.abs().max()))
    assert not torch.allclose(ha, hb)  # different images: different curvature


def test_lambda1_of_each_half_is_its_dense_top_eigenvalue(ctx) -> None:  # noqa: ANN001
    rec = lambda1_halves(ctx, tol=1e-8, params=PARAMS)
    truth = [float(torch.linalg.eigvalsh(_dense(h))[-1]) for h in halves(ctx)]
    assert rec["lambda1"] == pytest.approx(truth, rel=1e-6) and rec["num_samples"] == [20, 20]
    assert rec["spread"] == pytest.approx(abs(truth[0] - truth[1]) / ((truth[0] + truth[1]) / 2), rel=1e-5)
    assert all(rec["converged"])


def test_one_batch_cannot_be_halved(ctx) -> None:  # noqa: ANN001
    import dataclasses

    one = dataclasses.replace(ctx, x=ctx.x[:10], y=ctx.y[:10])
    with pytest.raises(BnlabError, match="at least 2 batches"):
        halves(one)
