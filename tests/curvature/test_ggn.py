"""GGNOperator, ResidualOperator and the class-means term against dense truth built here.

G is built densely as Σ_b (n_b/N) Σ_i J_iᵀ H_i J_i with J from `torch.func.jacrev` of the logits and
H_i = (diag(p_i) − p_i p_iᵀ)/n_b written out (the softmax cross-entropy's Hessian in the logits), so
the operator's autodiff of the loss on the logits is checked against the closed form; H is the
dense Hessian of `bnlab.curvature.dense` (itself checked against a hand-written loss in
test_operator.py). Tiny nets: an MLP and a conv net, with and without BN, BN in batch and running
mode, batches of 6 and 2 (weights n_b/N). Sharded products are checked in tests/distributed.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

from bnlab.bnmode import bn_mode
from bnlab.curvature import (
    GGNOperator,
    HessianOperator,
    LowRankOperator,
    ResidualOperator,
    SumOperator,
    dense_hessian,
    top_eigenpairs,
)
from bnlab.curvature.ggn import _factor_sums
from bnlab.curvature.hessian import HessianOptions
from bnlab.curvature.linop import DenseOperator, scaled
from bnlab.curvature.params import FlatLayout, select_parameters
from bnlab.errors import BnlabError
from conftest import requires_cuda

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)

SIZES = (6, 2)
C = 3
CASES = [("mlp", True, "batch"), ("mlp", True, "running"), ("mlp", False, "none"),
         ("conv", True, "batch"), ("conv", True, "running"), ("conv", False, "none")]


def net(kind: str, bn: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        layers = [nn.Linear(5, 4), *([nn.BatchNorm1d(4)] if bn else []), nn.Softplus(), nn.Linear(4, C)]
    else:
        layers = [nn.Conv2d(2, 3, 3), *([nn.BatchNorm2d(3)] if bn else []), nn.Softplus(),
                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, C)]
    model = nn.Sequential(*layers).double()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def data(kind: str, sizes: tuple[int, ...] = SIZES, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64) if kind == "mlp" else \
        torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64)
    y = torch.arange(n) % C  # every class in the set
    out, i = [], 0
    for s in sizes:
        out.append((x[i:i + s].clone(), y[i:i + s].clone()))
        i += s
    return out


def jacobians(model: nn.Module, batches, mode: str) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: (J (n_b, C, dim) by jacrev, softmax probabilities (n_b, C), labels)."""
    named = select_parameters(model, None)
    layout = FlatLayout(named)
    theta = layout.flatten([p.detach() for _, p in named])
    out = []
    with bn_mode(model, mode):
        for x, y in batches:
            def logits(flat: torch.Tensor, x: torch.Tensor = x) -> torch.Tensor:
                return functional_call(model, layout.unflatten(flat), (x,), strict=False)
            J = jacrev(logits)(theta).detach()
            p = torch.softmax(logits(theta), 1).detach()
            out.append((J, p, y))
    return out


def factors(p: torch.Tensor) -> torch.Tensor:
    """A_i (n, C, C) with column k = √p_ik·(e_k − p_i), written out from the probabilities."""
    eye = torch.eye(p.shape[1], dtype=p.dtype)
    return torch.stack([torch.stack([torch.sqrt(pi[k]) * (eye[k] - pi) for k in range(len(pi))], 1) for pi in p])


def papyan_terms(model: nn.Module, batches, mode: str, classes: int = C) -> dict[str, torch.Tensor]:
    """G = Σ_b (n_b/N) Σ_i J_iᵀ H_i J_i; Papyan's three terms from the columns Φ_ik = J_iᵀ A_i e_k, their class
    means Δ_ck (class c, column k) and deviations: class (k = c), cross-class (k ≠ c), within-class. A class
    without examples contributes nothing."""
    n = sum(len(y) for _, y in batches)
    G = 0.0
    cols: list[tuple[int, torch.Tensor]] = []  # (class, Φ_i (dim, C)) per example
    for J, p, y in jacobians(model, batches, mode):
        nb = len(y)
        for i, A in enumerate(factors(p)):
            Hi = (torch.diag(p[i]) - torch.outer(p[i], p[i])) / nb
            G = G + (nb / n) * J[i].T @ Hi @ J[i]
            cols.append((int(y[i]), J[i].T @ A))
    counts = torch.bincount(torch.tensor([c for c, _ in cols]), minlength=classes).double()
    present = [c for c in range(classes) if counts[c] > 0]
    means = {c: sum(phi for c_, phi in cols if c_ == c) / counts[c] for c in present}  # Δ_ck in column k
    Gcm = sum((counts[c] / n) * torch.outer(means[c][:, c], means[c][:, c]) for c in present)
    Gcross = sum((counts[c] / n) * torch.outer(means[c][:, k], means[c][:, k])
                 for c in present for k in range(classes) if k != c)
    Gwithin = sum((phi - means[c]) @ (phi - means[c]).T for c, phi in cols) / n
    return {"G": G, "Gcm": Gcm, "Gcross": Gcross, "Gwithin": Gwithin, "counts": counts}


@functools.cache
def truth(kind: str, bn: bool, mode: str) -> dict[str, torch.Tensor]:
    """`papyan_terms` of the test's net and batches, and the dense Hessian H."""
    model, batches = net(kind, bn), data(kind)
    H = dense_hessian(model, batches, F.cross_entropy, mode)
    return {**papyan_terms(model, batches, mode), "H": H}


def dense(op) -> torch.Tensor:
    return op.matmat(torch.eye(op.dim, dtype=torch.float64))


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


@pytest.mark.parametrize("kind,bn,mode", CASES)
def test_ggn_and_residual_match_dense_truth(kind: str, bn: bool, mode: str) -> None:
    t = truth(kind, bn, mode)
    model, batches = net(kind, bn), data(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode=mode)
    R = ResidualOperator(model, batches, loss_fn=F.cross_entropy, bn_mode=mode)
    Gd, Rd = dense(G), dense(R)
    close(Gd, t["G"])
    close(Gd, Gd.T, 1e-12)
    lam = torch.linalg.eigvalsh(Gd)
    assert lam.min() >= -1e-12 * lam.max()  # PSD
    close(Gd + Rd, t["H"])  # G + R = H
    close(Rd, t["H"] - t["G"])
    # the residual is not negligible on an untrained net: the test would not tell G from H otherwise
    assert (t["H"] - t["G"]).abs().max() > 1e-3 * t["H"].abs().max()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # never changed
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("kind,bn,mode", [CASES[0], CASES[5]])
def test_residual_by_every_route_is_h_minus_g_and_keeps_the_loss(kind: str, bn: bool, mode: str) -> None:
    """R as the Hessian of the loss linearised in the logits: both HVP routes, graphs cached or streamed,
    equal the dense H − G; its loss and gradient are the loss's own (a hand-written float64 loss)."""
    t = truth(kind, bn, mode)
    model, batches = net(kind, bn), data(kind)
    for method, cache in (("double_backward", True), ("double_backward", False), ("func", False)):
        R = ResidualOperator(model, batches, loss_fn=F.cross_entropy, bn_mode=mode, method=method,
                             cache_graphs=cache, block_size=32)
        close(dense(R), t["H"] - t["G"])
        assert R.describe()["hvp_method"] == method and R.describe()["graph_cache"]["mode"] == ("on" if cache
                                                                                               else "off")
    n = sum(SIZES)
    with torch.no_grad(), bn_mode(model, mode):
        want = sum(float((torch.logsumexp(model(x), 1) - model(x).gather(1, y[:, None])[:, 0]).sum())
                   for x, y in batches) / n
    assert R.loss() == pytest.approx(want, rel=1e-12)
    H = HessianOperator(model, batches, loss_fn=F.cross_entropy, bn_mode=mode)
    close(R.gradient(), H.gradient(), 1e-12)
    assert R.gradient().abs().max() > 1e-3  # not a trivially zero gradient


def test_bn_batch_mode_couples_the_examples_of_a_batch() -> None:
    """With batch statistics, G depends on how the examples are batched (J_i is taken in its batch);
    in running mode it does not."""
    model = net("mlp", True)
    batches = data("mlp")
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    regrouped = [(x[:4], y[:4]), (x[4:], y[4:])]
    for mode, same in (("batch", False), ("running", True)):
        a = dense(GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode=mode))
        b = dense(GGNOperator(model, regrouped, loss_fn=F.cross_entropy, bn_mode=mode))
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14) == same


def test_unequal_batches_are_weighted_by_size() -> None:
    t = truth("mlp", True, "batch")
    model, batches = net("mlp", True), data("mlp")
    wrong = 0.0  # each batch's G_b with weight 1/2 instead of n_b/N
    for J, p, y in jacobians(model, batches, "batch"):
        nb = len(y)
        for i in range(nb):
            wrong = wrong + 0.5 * J[i].T @ ((torch.diag(p[i]) - torch.outer(p[i], p[i])) / nb) @ J[i]
    assert (wrong - t["G"]).abs().max() > 1e-3 * t["G"].abs().max()
    close(dense(GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")), t["G"])


def test_label_smoothing_leaves_the_output_hessian_and_g_unchanged_but_not_h() -> None:
    model, batches = net("mlp", True), data("mlp")
    smooth = functools.partial(F.cross_entropy, label_smoothing=0.3)
    t = truth("mlp", True, "batch")
    close(dense(GGNOperator(model, batches, loss_fn=smooth, bn_mode="batch")), t["G"])
    H_smooth = dense_hessian(model, batches, smooth, "batch")
    assert (H_smooth - t["H"]).abs().max() > 1e-4 * t["H"].abs().max()  # the residual part changes
    close(dense(ResidualOperator(model, batches, loss_fn=smooth, bn_mode="batch")), H_smooth - t["G"])


def test_units_weight_decay_and_a_parameter_subset() -> None:
    t = truth("conv", True, "batch")
    model, batches = net("conv", True), data("conv")
    wd = 0.01
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch", loss_scale="batch-sum",
                    batch_size=6, weight_decay=wd)
    close(dense(G), 6 * (t["G"] + wd * torch.eye(G.dim, dtype=torch.float64)))
    R = ResidualOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch", loss_scale="batch-sum",
                         batch_size=6, weight_decay=wd)
    close(dense(R), 6 * (t["H"] - t["G"]))  # the decay term cancels in H − G
    assert R.describe()["weight_decay_term"] == 0.0 and R.describe()["weight_decay_cancels"] == wd
    sub = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch", params=["5.*"])  # the classifier
    idx = torch.arange(t["G"].shape[0])[-sub.dim:]
    close(dense(sub), t["G"][idx][:, idx])
    assert sub.settings["params"] == ["5.*"] and sub.settings["matrix"] == "ggn"


def test_combinators_sum_scale_and_low_rank() -> None:
    model, batches = net("mlp", True), data("mlp")
    H = HessianOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    R = ResidualOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    t = truth("mlp", True, "batch")
    close(dense(SumOperator([(1.0, G), (1.0, R)])), t["H"])
    close(dense(SumOperator([(1.0, H), (-1.0, G)])), dense(R))
    close(dense(scaled(G, -2.5)), -2.5 * t["G"])
    with pytest.raises(BnlabError, match="one dimension"):
        SumOperator([(1.0, G), (1.0, DenseOperator(torch.eye(3)))])
    with pytest.raises(BnlabError, match="at least one"):
        SumOperator([])
    F_ = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    low = LowRankOperator(F_)
    close(dense(low), F_.T @ F_)
    lam, vecs = low.eigenpairs()
    close(lam, torch.linalg.eigvalsh(F_.T @ F_).flip(0)[:2])
    close(low.matmat(vecs), lam[:, None] * vecs)
    close(vecs @ vecs.T, torch.eye(2, dtype=torch.float64))
    assert LowRankOperator(torch.zeros(0, 4)).eigenpairs()[0].numel() == 0
    with pytest.raises(BnlabError, match="factor"):
        LowRankOperator(torch.zeros(4))


def test_the_factors_square_to_the_output_hessian_of_a_hand_written_loss() -> None:
    """A_i A_iᵀ = ∇²_z ℓ_i for ℓ_i(z) = logsumexp(z) − z_y written here (torch.func.hessian, float64)."""
    z = torch.randn(4, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 2, 1, 2])
    A = factors(torch.softmax(z, 1))
    for i in range(len(y)):
        H_out = torch.func.hessian(lambda t, i=i: torch.logsumexp(t, 0) - t[y[i]])(z[i])
        close(A[i] @ A[i].T, H_out, 1e-12)


@pytest.mark.parametrize("kind,bn,mode", [CASES[0], CASES[4], CASES[5]])
def test_class_cross_class_and_within_terms_sum_to_g(kind: str, bn: bool, mode: str) -> None:
    """Papyan's decomposition, built here from jacrev's per-example Jacobians: class + cross-class + within = G
    (float64), ranks C and C(C−1), all three PSD; the operator's two mean terms equal the dense ones."""
    t = truth(kind, bn, mode)
    close(t["Gcm"] + t["Gcross"] + t["Gwithin"], t["G"])
    dim = t["G"].shape[0]
    assert dim > C * C  # so that the rank bounds are not the dimension's
    for term, rank in (("Gcm", C), ("Gcross", C * (C - 1)), ("Gwithin", None)):
        lam = torch.linalg.eigvalsh(t[term])
        assert lam.min() >= -1e-12 * lam.max()
        if rank is not None:
            assert int(torch.linalg.matrix_rank(t[term], rtol=1e-9)) == rank
    model, batches = net(kind, bn), data(kind)
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode=mode, loss_scale="batch-sum", batch_size=6)
    cm, cross = G.class_means(), G.cross_class_means()
    assert (cm.rank_bound, cross.rank_bound) == (C, C * (C - 1))
    close(dense(cm), 6 * t["Gcm"])
    close(dense(cross), 6 * t["Gcross"])
    close(dense(G) - dense(cm) - dense(cross), 6 * t["Gwithin"])
    lam, _ = cm.eigenpairs()
    close(lam, torch.linalg.eigvalsh(6 * t["Gcm"]).flip(0)[:C])
    assert G.passes == 2 + dim // G.block_size + bool(dim % G.block_size)  # one pass per mean term
    # a class missing from the set drops out (no division by zero)
    x, y = batches[0]
    one = GGNOperator(model, [(x[y != 2], y[y != 2])], loss_fn=F.cross_entropy, bn_mode=mode)
    assert one.class_means().rank_bound == C - 1 and torch.isfinite(one.class_means().factor).all()
    assert one.cross_class_means().rank_bound == (C - 1) * (C - 1)


def test_a_class_with_a_single_example_keeps_its_mean_terms() -> None:
    """A class seen once has the mean of one example's columns (n_c = 1 is a class, not an empty one):
    both mean terms against the dense truth of batches (6, 2) where class 2 occurs exactly once."""
    model = net("mlp", True)
    batches = [(x, torch.tensor(labels)) for (x, _), labels in zip(data("mlp"), ([0, 1, 0, 1, 0, 2], [1, 0]))]
    t = papyan_terms(model, batches, "batch")
    assert t["counts"].tolist() == [4.0, 3.0, 1.0]
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    cm, cross = G.class_means(), G.cross_class_means()
    assert (cm.rank_bound, cross.rank_bound) == (C, C * (C - 1))
    close(dense(cm), t["Gcm"])
    close(dense(cross), t["Gcross"])
    close(dense(G) - dense(cm) - dense(cross), t["Gwithin"])


def test_half_precision_mean_terms_at_a_class_size_beyond_float16s_range() -> None:
    """A float16 model with N·n_c = 300·260 > 65504 (float16's largest value): the weights n_c/N and 1/n_c are
    formed in float64, not in the model's dtype (where N·n_c overflows and the class's term vanishes). Truth:
    the dense terms of the same (float16-rounded) weights and inputs in float64; the tolerance is float16's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Softplus(), nn.Linear(4, C)).half()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g).half()
    y = torch.tensor([0] * 260 + [1] * 20 + [2] * 20)[torch.randperm(300, generator=g)]
    batches = [(x[:150], y[:150]), (x[150:], y[150:])]
    t = papyan_terms(copy.deepcopy(model).double(), [(a.double(), b) for a, b in batches], "none")
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="none")
    for term, want in ((G.class_means(), t["Gcm"]), (G.cross_class_means(), t["Gcross"])):
        assert term.factor.dtype == torch.float64 and torch.isfinite(term.factor).all()
        lam = term.eigenpairs()[0]
        torch.testing.assert_close(lam, torch.linalg.eigvalsh(want).flip(0)[:len(lam)], rtol=2e-2,
                                   atol=1e-3 * float(lam[0]))
        torch.testing.assert_close(dense(term), want, rtol=0, atol=2e-2 * float(want.abs().max()))


@pytest.mark.parametrize("kind,bn,mode", [CASES[0], CASES[5]])
def test_lanczos_on_g_finds_the_dense_top_eigenvalues(kind: str, bn: bool, mode: str) -> None:
    t = truth(kind, bn, mode)
    G = GGNOperator(net(kind, bn), data(kind), loss_fn=F.cross_entropy, bn_mode=mode)
    res = top_eigenpairs(G, 3, tol=1e-8, seed=0)
    want = torch.linalg.eigvalsh(t["G"]).flip(0)[:3]
    torch.testing.assert_close(res.eigenvalues, want, rtol=1e-7, atol=1e-12)
    assert bool(res.converged.all())


def test_ggn_counts_blocks_and_describes_itself() -> None:
    model, batches = net("mlp", False), data("mlp")
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="none", block_size=2)
    V = torch.randn(5, G.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    close(G.matmat(V), V @ truth("mlp", False, "none")["G"])
    assert G.hvp_count == 5 and G.passes == 3
    d = G.describe()
    assert d["matrix"] == "ggn" and d["num_samples"] == 8 and d["num_batches"] == 2 and "hvp_method" not in d
    assert G.matmat(torch.zeros(0, G.dim, dtype=torch.float64)).shape == (0, G.dim)
    R = ResidualOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="none", cache_graphs=False)
    assert R.describe()["matrix"] == "residual" and R.describe()["cache_graphs"] is False
    assert R.describe()["hvp_method"] == "double_backward" and R.quiet
    # no decay given: none cancels, and the record says 0 (not a default decay that was never asked for)
    assert R.describe()["weight_decay_cancels"] == 0.0 and R.describe()["weight_decay_term"] == 0.0
    assert "Gauss-Newton" in GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="none",
                                         loss_scale="batch-sum").settings["units"]


def test_a_one_parameter_selection_takes_a_block_of_several_vectors() -> None:
    """dim = 1 (only a BN scale selected) with m = 3 vectors: each row is its own product, g·v_i, against the
    dense G's entry of that parameter (a shortcut for one vector must look at the number of rows, not columns)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 1), nn.BatchNorm1d(1), nn.Softplus(), nn.Linear(1, C)).double()
    batches = data("mlp")
    names = [n for n, _ in select_parameters(model, None)]
    i = sum(p.numel() for n, p in model.named_parameters() if names.index(n) < names.index("1.weight"))
    g = papyan_terms(model, batches, "batch")["G"][i, i]
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch", params=["1.weight"])
    assert G.dim == 1 and g > 1e-6
    V = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    close(G.matmat(V), g * V)


def test_float32_model_gives_float64_products() -> None:
    model, batches = net("mlp", True).float(), [(x.float(), y) for x, y in data("mlp")]
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    v = torch.randn(G.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    gv = G.matvec(v)
    want = truth("mlp", True, "batch")["G"] @ v
    assert gv.dtype == torch.float64
    torch.testing.assert_close(gv, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_options_refuse_what_the_gauss_newton_matrix_does_not_have() -> None:
    with pytest.raises(BnlabError, match="--matrix"):
        HessianOptions(matrix="fisher").validate()
    with pytest.raises(BnlabError, match="Gauss-Newton"):
        HessianOptions(matrix="ggn", hvp_method="func").validate()
    with pytest.raises(BnlabError, match="Gauss-Newton"):
        HessianOptions(matrix="ggn", cache_graphs="on").validate()
    HessianOptions(matrix="residual", cache_graphs="on").validate()


@pytest.mark.parametrize("cross", [False, True])
def test_a_rank_without_batches_sends_zeros_of_the_others_shape(cross: bool) -> None:
    """Under torchrun a rank may hold no batch (more ranks than batches): its part of a mean term is a zero block of
    the shape and dtype the other ranks send. Simulated in one process: the reduction adds what the holder of
    every batch sent, and the idle rank's term must equal the holder's."""
    model, batches = net("mlp", True), data("mlp")
    term = "cross_class_means" if cross else "class_means"
    holder = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    sent: list[torch.Tensor] = []
    holder._sum_over_ranks = lambda t: sent.append(t) or t
    want = dense(getattr(holder, term)())
    idle = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    idle._shard = range(0, 0)
    got: list[torch.Tensor] = []
    idle._sum_over_ranks = lambda t: got.append(t) or t + sent[0]
    close(dense(getattr(idle, term)()), want)
    rows = C * (C - 1) if cross else C
    assert got[0].shape == sent[0].shape == (rows, holder.dim + 1) and not got[0].any()
    # the block has one dtype on every rank (the collective needs it), float64 (exact counts) for any model dtype
    half = GGNOperator(net("mlp", True).to(torch.bfloat16), [(x.to(torch.bfloat16), y) for x, y in batches],
                       loss_fn=F.cross_entropy, bn_mode="batch")
    half._shard = range(0, 0)
    seen: list[torch.Tensor] = []
    half._sum_over_ranks = lambda t: seen.append(t) or t
    assert getattr(half, term)().rank_bound == 0  # no class has an example anywhere: nothing left
    assert seen[0].dtype == torch.float64 and seen[0].shape == (rows, half.dim + 1)


def mean_terms_on(device: torch.device, cross: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One mean term of the test's net and batches on `device`: (the full set's term, dense; the term of a rank
    that holds no batch, dense, reduced with the holder's block as in the idle-rank test; the two blocks the
    ranks sent, stacked). The blocks stay on the model's device: NCCL reduces device tensors only."""
    term = "cross_class_means" if cross else "class_means"
    model = net("mlp", True).to(device)
    batches = [(x.to(device), y.to(device)) for x, y in data("mlp")]
    holder = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    sent: list[torch.Tensor] = []
    holder._sum_over_ranks = lambda t: sent.append(t) or t
    full = getattr(holder, term)()
    assert full.factor.device == torch.device("cpu")  # small: returned on the CPU
    idle = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    idle._shard = range(0, 0)
    got: list[torch.Tensor] = []
    idle._sum_over_ranks = lambda t: got.append(t) or t + sent[0]
    reduced = getattr(idle, term)()
    assert sent[0].device == got[0].device == model[0].weight.device
    return dense(full), dense(reduced), torch.stack([sent[0].cpu(), got[0].cpu()])


class _Sent(Exception):
    """Stops a mean term once its block is handed to the reduction."""


@pytest.mark.parametrize("cross", [False, True])
def test_mean_terms_stay_on_the_models_device(cross: bool) -> None:
    """PyTorch's meta device stands in for a GPU (devices and shapes, no values): the factor sums come back on the
    logits' device (their identity made there), and an idle rank's zero block is made on the model's device (NCCL
    reduces device tensors only). The CUDA twin below checks the values."""
    import torch.fx.experimental._config as fx_config
    if not hasattr(fx_config, "meta_nonzero_assume_all_nonzero"):
        pytest.skip("this torch has no data-independent nonzero on the meta device")
    meta = torch.device("meta")
    model = net("mlp", True).to(meta)
    batches = [(x.to(meta), y.to(meta)) for x, y in data("mlp")]
    names, params = zip(*model.named_parameters())
    # nonzero's shape is data-dependent; torch's own patch restores its config (monkeypatch may delete the entry)
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        sums, counts = _factor_sums(model, names, params, *batches[0], cross)
    assert sums.device == counts.device == meta
    idle = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="batch")
    idle._shard = range(0, 0)
    sent: list[torch.Tensor] = []

    def reduce(t: torch.Tensor) -> torch.Tensor:
        sent.append(t)
        raise _Sent

    idle._sum_over_ranks = reduce
    with pytest.raises(_Sent):
        idle.cross_class_means() if cross else idle.class_means()
    assert sent[0].device == meta and sent[0].dtype == torch.float64


@requires_cuda
@pytest.mark.parametrize("cross", [False, True])
def test_mean_terms_of_a_model_on_cuda_equal_the_cpu_ones(cross: bool) -> None:
    """A model on the GPU: the factors' helper tensors (eye, masks) on the logits' device, an idle rank's zero
    block on the model's device, and the same terms as on the CPU (float64)."""
    want = mean_terms_on(torch.device("cpu"), cross)
    got = mean_terms_on(torch.device("cuda", 0), cross)
    for g, w in zip(got, want):
        close(g, w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_class_counts_are_exact_in_a_half_precision_model(dtype: torch.dtype) -> None:
    """n_c is a count: exact whatever the model's dtype. Here 2050 examples of class 0 over batches of 2048, 1
    and 1 (plus one of class 1 to keep the classes): bfloat16 rounds integers above 256 and float16 above 2048,
    so counts kept in the model's dtype would come out 2048. Truth: the labels' bincount."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).to(dtype)
    x = torch.randn(2051, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    y = torch.zeros(2051, dtype=torch.long)
    y[-1] = 1
    batches = [(x[:2048], y[:2048]), (x[2048:2049], y[2048:2049]), (x[2049:], y[2049:])]
    G = GGNOperator(model, batches, loss_fn=F.cross_entropy, bn_mode="none")
    for term, rows in (("class_means", [(0, 0), (1, 1)]), ("cross_class_means", [(0, 1), (1, 0)])):
        seen: list[torch.Tensor] = []
        G._sum_over_ranks = lambda t, seen=seen: seen.append(t) or t
        getattr(G, term)()
        want = torch.bincount(y, minlength=2).double()[[c for c, _ in rows]]
        assert seen[0].dtype == torch.float64
        assert torch.equal(seen[0][:, -1], want), term
