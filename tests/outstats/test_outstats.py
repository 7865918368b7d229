"""Output-statistic gradients, perturbations, spans and projections against ground truth."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from bnlab.bnmode import bn_mode
from bnlab.curvature import DenseOperator, ProjectedOperator, top_eigenpairs
from bnlab.errors import BnlabError
from bnlab.models import ModelSpec, build_model
from bnlab.outstats import (
    Target,
    activation_stats,
    arccos_recursion,
    fc_collapse,
    orthonormal_basis,
    overlaps,
    per_layer_sq_norms,
    perturbation_table,
    random_overlaps,
    stat_gradients,
)
from conftest import requires_cuda

STATS = ("mean", "var", "skew")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def tiny(model: str, norm: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(ModelSpec(model=model, width=1, norm=norm, act="softplus", ghost_splits=2)).double()
    with torch.no_grad():  # non-trivial running stats, so running mode differs from batch mode
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.3)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return net


def make_batches(n_batches: int = 2, size: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g, dtype=torch.float64), torch.arange(size) % 10)
            for _ in range(n_batches)]


def target_output(model, params, x, target: Target) -> torch.Tensor:
    """The target's output under `params`, written independently of bnlab.outstats.target."""
    if target.module in ("logits", "logits_raw"):
        z = functional_call(model, params, (x,))
        return z - z.mean(1, keepdim=True) if target.module == "logits" else z
    got = []
    h = dict(model.named_modules())[target.module].register_forward_hook(lambda _m, _i, o: got.append(o))
    try:
        functional_call(model, params, (x,))
    finally:
        h.remove()
    return got[0]


def central(v: torch.Tensor) -> torch.Tensor:
    """(3, C) mean, variance, third central moment of (B, C, ...) over all but the channel dim."""
    v = v.transpose(0, 1).reshape(v.shape[1], -1)
    m = v.mean(1)
    d = v - m[:, None]
    return torch.stack([m, (d ** 2).mean(1), (d ** 3).mean(1)])


def reference(model, batches, target, mode, moments):
    """Statistics as one function of all parameters over all batches; jacrev gives ground truth."""
    names = [n for n, _ in model.named_parameters()]
    n_total = sum(len(y) for _, y in batches)

    def f(params):
        outs = [target_output(model, params, x, target) for x, _ in batches]
        if moments == "pooled":
            return central(torch.cat(outs))
        return sum(central(o) * (o.shape[0] / n_total) for o in outs)

    primals = {n: p.detach() for n, p in model.named_parameters()}
    with bn_mode(model, mode):
        values = f(primals)
        jac = jacrev(f)(primals)
    grads = torch.cat([jac[n].reshape(*values.shape, -1) for n in names], dim=-1)
    return values, grads


CASES = [(m, norm, mode) for m in ("simple", "davidnet")
         for norm, modes in (("bn", ("batch", "running")), ("bn_fixed_affine", ("batch", "running")),
                             ("ghost", ("batch", "running")), ("frozen", ("none",)), ("none", ("none",)))
         for mode in modes]



def matches_reference(model, batches, target: Target, moments: str, mode: str):
    """stat_gradients against the jacrev reference (on the target's channels); returns its result."""
    sg = stat_gradients(model, batches, stats=STATS, target=target, moments=moments, mode=mode)
    values, grads = reference(model, batches, target, mode, moments)
    if target.channels:
        values, grads = values[:, list(target.channels)], grads[:, list(target.channels)]
    torch.testing.assert_close(sg.values, values, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sg.grads, grads, rtol=1e-8, atol=1e-11)
    return sg


@pytest.mark.parametrize("model_name,norm,mode", CASES)
def test_gradients_match_jacrev(model_name: str, norm: str, mode: str) -> None:
    model = tiny(model_name, norm)
    batches = make_batches()
    for target, moments in ((Target("logits"), "per-batch"), (Target("layer1", (0, 1)), "pooled")):
        matches_reference(model, batches, target, moments, mode)


# Batches of 6 and 2 (what --num-samples 8 --batch-size 6 gives): per-batch statistics must weigh
# each batch n_b / N, pooled ones are the moments of all 8 examples together.
UNEQUAL = [("simple", "bn", "batch"), ("davidnet", "bn", "batch"), ("davidnet", "bn", "running"),
           ("simple", "frozen", "none"), ("davidnet", "none", "none")]


@pytest.mark.parametrize("model_name,norm,mode", UNEQUAL)
def test_unequal_batches_match_jacrev(model_name: str, norm: str, mode: str) -> None:
    model = tiny(model_name, norm)
    big, small = make_batches(1, 6, seed=4)[0], make_batches(1, 2, seed=5)[0]
    batches = [big, small]
    for target, moments in ((Target("logits"), "per-batch"), (Target("logits"), "pooled"),
                            (Target("layer1", (1,)), "per-batch")):
        sg = matches_reference(model, batches, target, moments, mode)
        assert (sg.num_samples, sg.num_batches, sg.moments, sg.bn_mode) == (8, 2, moments, mode)
    # the weighting is visible: the plain average of the two batches' statistics is something else
    sg = stat_gradients(model, batches, stats=("mean",), mode=mode)
    with bn_mode(model, mode), torch.no_grad():
        plain = sum(central(target_output(model, dict(model.named_parameters()), x, Target()))[0]
                    for x, _ in batches) / 2
    assert (sg.values[0] - plain).abs().max() > 1e-6 * plain.abs().max()  # far above float64 rounding


@pytest.mark.parametrize("model_name,norm,mode", [("simple", "bn", "batch"), ("davidnet", "ghost", "batch"),
                                                  ("simple", "none", "none"), ("davidnet", "frozen", "none")])
def test_gradients_match_finite_differences(model_name: str, norm: str, mode: str) -> None:
    model = tiny(model_name, norm)
    batches = make_batches(2, 8)
    sg = stat_gradients(model, batches, stats=STATS, mode=mode)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    v = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta.items()}
    vflat = torch.cat([t.reshape(-1) for t in v.values()])
    eps = 1e-6  # tiny BN layers normalise few values: curvature is large, so a small step (float64)

    def stats_at(sign: float) -> torch.Tensor:
        p = {n: theta[n] + sign * eps * v[n] for n in theta}
        with bn_mode(model, mode), torch.no_grad():
            outs = [target_output(model, p, x, Target()) for x, _ in batches]
        return sum(central(o) for o in outs) / len(outs)

    fd = (stats_at(1) - stats_at(-1)) / (2 * eps)
    torch.testing.assert_close(sg.grads @ vflat, fd, rtol=1e-5, atol=1e-7)


def test_rows_and_labels_follow_the_order_asked_for() -> None:
    model, batches = tiny("simple", "bn"), make_batches()
    sg = stat_gradients(model, batches, stats=("skew", "mean"), target=Target("layer1", (1, 0)), mode="batch")
    assert sg.stats == ("mean", "skew")  # canonical order, whatever order they were asked in
    assert sg.labels() == ["mean[1]", "mean[0]", "skew[1]", "skew[0]"]
    assert sg.labels(["skew"]) == ["skew[1]", "skew[0]"]
    assert torch.equal(sg.flat(["skew", "mean"]), torch.cat([sg.grads[1], sg.grads[0]]))
    assert torch.equal(sg.flat(), sg.grads.reshape(4, -1)) and torch.equal(sg.of("skew"), sg.grads[1])


@requires_cuda
@pytest.mark.parametrize("moments", ["per-batch", "pooled"])
def test_gradients_on_cuda_equal_cpu(moments: str) -> None:
    model, batches = tiny("davidnet", "bn"), make_batches()
    target = Target("layer1", (0, 1))
    want = stat_gradients(model, batches, stats=STATS, target=target, moments=moments, mode="batch")
    got = stat_gradients(model.cuda(), [(x.cuda(), y.cuda()) for x, y in batches], stats=STATS, target=target,
                         moments=moments, mode="batch")
    torch.testing.assert_close(got.values.cpu(), want.values, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(got.grads.cpu(), want.grads, rtol=1e-8, atol=1e-11)


def test_batch_accumulation_equals_full_batch() -> None:
    # Frozen and no-BN outputs do not depend on the batch: 4 batches of 4 == one batch of 16 for
    # the mean, and pooled var/skew over 4 batches == the central moments of the single batch.
    for norm in ("none", "frozen"):
        model = tiny("simple", norm)
        small = make_batches(4, 4)
        full = [(torch.cat([x for x, _ in small]), torch.cat([y for _, y in small]))]
        one = stat_gradients(model, full, stats=STATS, mode="none")
        per = stat_gradients(model, small, stats=("mean",), mode="none")
        pooled = stat_gradients(model, small, stats=STATS, mode="none", moments="pooled")
        torch.testing.assert_close(per.grads[0], one.grads[0], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(pooled.values, one.values, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(pooled.grads, one.grads, rtol=1e-9, atol=1e-12)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("norm,mode", [("bn", "batch"), ("ghost", "batch"), ("bn", "running"), ("none", "none")])
def test_model_unchanged(norm: str, mode: str) -> None:
    model = tiny("davidnet", norm).train()
    before = snapshot(model)
    batches = make_batches()
    sg = stat_gradients(model, batches, stats=STATS, mode=mode, moments="pooled")
    perturbation_table(model, batches, sg.of("mean"), mode=mode, delta=0.05)
    activation_stats(model, batches, ["prep", "layer3_res", "logits"], mode=mode)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bit-identical, buffers included
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())


def test_softmax_shift_invariance_nine_dims() -> None:
    model = tiny("simple", "none")
    batches = make_batches()
    centred = stat_gradients(model, batches, stats=("mean",), target=Target("logits"), mode="none")
    raw = stat_gradients(model, batches, stats=("mean",), target=Target("logits_raw"), mode="none")
    assert orthonormal_basis(centred.flat())[0].shape[1] == 9
    assert centred.flat().sum(0).abs().max() < 1e-12 * centred.flat().abs().max()
    assert orthonormal_basis(raw.flat())[0].shape[1] == 10


def test_basis_and_overlaps() -> None:
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(4, 50, generator=g, dtype=torch.float64)
    rows = torch.cat([rows, rows[:2].sum(0, keepdim=True), 3 * rows[3:4]])  # two dependent rows
    q, kept = orthonormal_basis(rows)
    assert q.shape == (50, 4) and kept == [0, 1, 2, 3]
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(q @ (q.T @ rows.T), rows.T)  # every row lies in the span
    inside = rows[:4].T @ torch.randn(4, 3, generator=g, dtype=torch.float64)
    outside = torch.randn(50, 3, generator=g, dtype=torch.float64)
    outside -= q @ (q.T @ outside)
    torch.testing.assert_close(overlaps(q, inside), torch.ones(3, dtype=torch.float64))
    assert overlaps(q, outside).abs().max() < 1e-24
    mixed = (inside[:, 0] / inside[:, 0].norm() + outside[:, 0] / outside[:, 0].norm())
    assert overlaps(q, mixed).item() == pytest.approx(0.5)
    assert random_overlaps(q, 400, seed=1).mean().item() == pytest.approx(4 / 50, rel=0.15)


def test_projected_hessian_removes_known_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    n, r = 60, 5
    span_rows = torch.randn(r, n, generator=g, dtype=torch.float64)
    q, _ = orthonormal_basis(span_rows)
    bulk = torch.randn(n, n, generator=g, dtype=torch.float64)
    bulk = (bulk + bulk.T) / math.sqrt(8 * n)  # eigenvalues within about [-1, 1]
    outliers = torch.tensor([100.0, 80.0, 60.0, 50.0, 40.0], dtype=torch.float64)
    h = q @ torch.diag(outliers) @ q.T + bulk
    assert top_eigenpairs(DenseOperator(h), 3, tol=1e-8).eigenvalues[0] > 39
    projector = torch.eye(n, dtype=torch.float64) - q @ q.T
    expected = torch.linalg.eigvalsh(projector @ h @ projector).flip(0)[:3]
    got = top_eigenpairs(ProjectedOperator(DenseOperator(h), q), 3, tol=1e-8).eigenvalues
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)
    assert got[0] < 2


def test_perturbation_step_norm_and_first_order_shift() -> None:
    model = tiny("simple", "none")
    batches = make_batches()
    sg = stat_gradients(model, batches, stats=("mean",), mode="none")
    delta = 1e-5
    table = perturbation_table(model, batches, sg.of("mean"), mode="none", delta=delta)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert table["step_norm"] == pytest.approx(delta * theta.norm().item())
    assert sum(r["frac_before"] for r in table["rows"]) == pytest.approx(1.0)  # every input predicted once
    for row, g in zip(table["rows"], sg.of("mean")):
        # a step s along ĝ_c moves the mean of centred logit c by s‖g_c‖ to first order
        assert row["mean_logit_shift_grad"] == pytest.approx(table["step_norm"] * g.norm().item(), rel=1e-3)
        assert abs(row["mean_logit_shift_random"]) < row["mean_logit_shift_grad"]


def test_per_layer_split_sums_to_total() -> None:
    model = tiny("davidnet", "bn")
    sg = stat_gradients(model, make_batches(), stats=("mean",), mode="batch")
    layers, sq = per_layer_sq_norms(sg.flat(), sg.param_names, sg.param_shapes)
    assert layers == ["prep", "layer1", "layer1_res.a", "layer1_res.b", "layer2", "layer3", "layer3_res.a",
                      "layer3_res.b", "classifier"]
    torch.testing.assert_close(sq.sum(1), (sg.flat() ** 2).sum(1))


def test_channel_mean_share_of_constant_and_centred_channels() -> None:
    model = tiny("simple", "bn_fixed_affine")
    batches = make_batches(2, 8)
    acts = activation_stats(model, batches, ["prep.norm", "prep.act"], mode="batch")
    # batch-normalised channels are centred in every batch: mean share 0
    assert acts["prep.norm"]["layer_mean_share"] < 1e-20
    assert 0 < acts["prep.act"]["layer_mean_share"] < 1
    assert acts["prep.act"]["hist"].sum(1).tolist() == [2 * 8 * 8 * 8] * acts["prep.act"]["hist"].shape[0]


def relu_kernel(c: float) -> float:
    """E[relu(u) relu(v)] / E[relu(u)^2] for standard normal u, v with correlation c, by quadrature.

    Independent of the arc-cosine closed form: v = c u + s w (s = sqrt(1 - c^2)), and for fixed u the
    mean of a rectified normal is E_w[relu(a + s w)] = a Phi(a/s) + s phi(a/s); E[relu(u)^2] = 1/2.
    """
    from scipy import integrate, stats

    s = math.sqrt(max(1 - c * c, 0.0))
    if s == 0:
        return 1.0

    def inner(u: float) -> float:
        a = c * u
        return u * (a * stats.norm.cdf(a / s) + s * stats.norm.pdf(a / s)) * stats.norm.pdf(u)

    return 2 * integrate.quad(inner, 0, np.inf, epsabs=1e-13, epsrel=1e-12)[0]


def test_arccos_recursion_against_quadrature() -> None:
    c = arccos_recursion(50)
    assert len(c) == 50 and c[0] == 0.0
    assert c[1] == pytest.approx(1 / math.pi, abs=1e-15)  # E[relu u]^2 / E[relu u^2] = (1/(2 pi)) / (1/2)
    ref = [0.0]
    for _ in range(49):
        ref.append(relu_kernel(ref[-1]))
    np.testing.assert_allclose(c, ref, rtol=1e-9, atol=1e-12)
    assert all(b > a for a, b in zip(c, c[1:])) and c[-1] < 1  # monotone collapse towards 1


def test_fc_collapse_follows_arccos_recursion() -> None:
    n = 256
    res = fc_collapse(depth=20, width=1024, n_inputs=n, seed=0)
    assert res["theory"] == arccos_recursion(20) and len(res["shares"]) == 20
    expected = [ci + (1 - ci) / n for ci in res["theory"]]  # distinct pairs at c_l, plus the diagonal
    assert res["theory_share"] == pytest.approx(expected, rel=1e-12)
    # measured max 0.025 (centred below: 0.021) over seeds 0-3 x threads 1, 2 x default/AVX2 kernels
    assert max(abs(a - b) for a, b in zip(res["shares"], expected)) < 0.05
    centred = fc_collapse(depth=10, width=1024, n_inputs=n, seed=0, centre=True)
    assert all(abs(s - 1 / math.pi) < 0.05 for s in centred["shares"][1:])
    # the share of one layer, recomputed from its values: mean over inputs squared over the second moment
    hist = fc_collapse(depth=3, width=64, n_inputs=50, seed=1, hist_layers=(3,), hist_channels=64, dtype=torch.float64)
    h = hist["values"][3].double().T  # (inputs, channels), stored as float32
    assert hist["shares"][2] == pytest.approx(float((h.mean(0) ** 2).sum() / (h ** 2).mean(0).sum()), rel=1e-5)


def test_project_k_is_checked() -> None:
    from bnlab.errors import BnlabError
    from bnlab.outstats.run import OutstatsOptions

    OutstatsOptions(project=True, project_k=1).validate()
    with pytest.raises(BnlabError, match="--project-k"):
        OutstatsOptions(project=True, project_k=-1).validate()


def test_pooled_moments_are_taken_about_the_full_sets_mean() -> None:
    """Channels far from zero: raw moments about 0 would cancel (E[x²] − E[x]² loses every digit of a variance of
    ~1 at a mean of 1e8 in float64); about the pre-pass mean the pooled statistics stay exact."""
    model = tiny("simple", "none")
    with torch.no_grad():
        model.layer1.conv.bias.add_(1e8)  # softplus is the identity up there: the offset passes through
    batches = make_batches(3, 4)
    sg = stat_gradients(model, batches, stats=STATS, target=Target("layer1"), moments="pooled")
    values, _ = reference(model, batches, Target("layer1"), "none", "pooled")
    assert values[0].min() > 5e7 and 1e-3 < values[1].min()
    torch.testing.assert_close(sg.values, values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("moments, passes", [("per-batch", 1), ("pooled", 2)])
def test_only_pooled_moments_take_a_pre_pass(moments: str, passes: int) -> None:
    model, batches = tiny("simple", "bn"), make_batches(3, 4)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        stat_gradients(model, batches, stats=("mean", "var"), moments=moments, mode="batch")
    finally:
        hook.remove()
    assert len(calls) == passes * len(batches)


def test_defaults_and_the_result_names_what_was_asked(capsys: pytest.CaptureFixture[str]) -> None:
    model, batches = tiny("simple", "none"), make_batches()
    sg = stat_gradients(model, batches)
    assert (sg.stats, sg.target, sg.moments, sg.bn_mode) == (("mean",), Target(), "per-batch", "none")
    assert capsys.readouterr().err == ""  # quiet unless asked
    layer = Target("layer1", (1,))
    assert stat_gradients(model, batches, target=layer).target == layer


@pytest.mark.parametrize("stats", [("mean", "kurtosis"), (), ("var", "var")])
def test_unknown_missing_or_repeated_statistics_are_refused(stats: tuple[str, ...]) -> None:
    with pytest.raises(BnlabError, match=r"^--stats must be distinct names from mean,var,skew"):
        stat_gradients(tiny("simple", "none"), make_batches(), stats=stats)


@pytest.mark.parametrize("moments", ["per-batch", "pooled"])
def test_the_sums_are_kept_on_the_models_device(moments: str) -> None:
    # PyTorch's meta device stands in for a GPU (devices and shapes, no values); the CUDA twin above checks values
    meta = torch.device("meta")
    model = tiny("simple", "bn").to(meta)
    batches = [(x.to(meta), y.to(meta)) for x, y in make_batches()]
    sg = stat_gradients(model, batches, stats=STATS, target=Target("layer1"), moments=moments, mode="batch")
    assert sg.values.device == sg.grads.device == meta
    assert sg.grads.shape == (3, 2, sum(p.numel() for p in model.parameters()))
