"""`bnlab hessian` from the command line and `bnlab.hessian` from Python, on synthetic checkpoints."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.func import functional_call, grad, jacfwd

import bnlab
from bnlab.checkpoint import load_checkpoint, save_checkpoint
from bnlab.cli import main
from bnlab.config import make_config
from bnlab.curvature import hessian_operator_from_checkpoint
from bnlab.data import CIFAR_MEAN, CIFAR_STD, eval_set, load_data
from bnlab.models import build_model
from bnlab.norms import batch_norm_layers

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def make_ckpt(tmp_path, variant, name="ck.pt", **opts):
    cfg = make_config(variant, model="simple", width=1, dataset="synthetic", synthetic_train=200,
                      synthetic_test=50, act="softplus", ghost_splits=2, **opts)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    path = tmp_path / name
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict()})
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_writes_record_and_eigvecs(tmp_path):
    ck = make_ckpt(tmp_path, "bn", label_smoothing=0.2)
    before = torch.load(ck, weights_only=True)["model"]
    r = run("hessian", ck, "--top-k", 3, "--tol", 1e-3, "--num-samples", 40, "--batch-size", 20, "--trace",
            "--trace-matvecs", 6, "--density", "--density-probes", 2, "--density-steps", 4,
            "--loss-scale", "batch-sum", "--out", tmp_path / "h", "--quiet")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "h" / "hessian.json").read_text())
    s = rec["settings"]
    assert s["bn_mode"] == "batch" and s["loss_scale"] == "batch-sum" and s["scale_factor"] == 20
    assert s["num_samples"] == 40 and s["label_smoothing"] == 0.2 and len(s["checkpoint_sha256"]) == 64
    e = rec["eigen"]
    assert len(e["eigenvalues"]) == 3 and e["residuals_measured"] and e["hvp_count"] > 0
    assert e["eigenvalues"] == sorted(e["eigenvalues"], reverse=True)
    assert "trace" in rec and "density" in rec
    vecs = torch.load(tmp_path / "h" / "eigvecs.pt", weights_only=True)
    assert vecs["eigenvectors"].shape == (3, s["dim"])
    # default graph cache: decided on the first HVP and recorded (a tiny net always fits)
    assert s["graph_cache"]["mode"] == "auto" and s["graph_cache"]["cached"] is True and s["cache_graphs"] is True
    r_off = run("hessian", ck, "--top-k", 3, "--tol", 1e-3, "--num-samples", 40, "--batch-size", 20, "--loss-scale",
                "batch-sum", "--cache-graphs", "off", "--out", tmp_path / "h_off", "--quiet")
    assert r_off.exit_code == 0, r_off.output
    rec_off = json.loads((tmp_path / "h_off" / "hessian.json").read_text())
    assert rec_off["settings"]["graph_cache"] == {"mode": "off"} and rec_off["settings"]["cache_graphs"] is False
    assert rec_off["eigen"]["eigenvalues"] == pytest.approx(e["eigenvalues"], rel=1e-4)
    after = torch.load(ck, weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_running_mode_differs_and_python_api_matches(tmp_path):
    ck = make_ckpt(tmp_path, "bn")
    c = load_checkpoint(ck)
    sd = {k: v.clone() for k, v in c.model.state_dict().items()}
    kw = dict(top_k=2, tol=1e-4, num_samples=40, batch_size=20, dtype="float64")
    rb = bnlab.hessian(c, bn_mode="batch", **kw).record
    rr = bnlab.hessian(c, bn_mode="running", **kw).record
    assert rb["settings"]["bn_mode"] == "batch" and rr["settings"]["bn_mode"] == "running"
    assert rb["eigen"]["eigenvalues"][0] != pytest.approx(rr["eigen"]["eigenvalues"][0], rel=1e-3)
    assert all(torch.equal(v, c.model.state_dict()[k]) for k, v in sd.items())
    # The operator builder is what outstats reuses: same evaluation set, same Hessian.
    op = hessian_operator_from_checkpoint(c, num_samples=40, batch_size=20, dtype=torch.float64)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert op.settings["bn_mode"] == "batch" and torch.isfinite(op.matvec(v)).all()


@pytest.mark.parametrize("variant", ["ghost_bn", "frozen_bn", "no_bn"])
def test_cli_other_variants(tmp_path, variant):
    ck = make_ckpt(tmp_path, variant)
    r = run("hessian", ck, "--top-k", 1, "--tol", 1e-2, "--num-samples", 40, "--batch-size", 20, "--quiet",
            "--no-verify", "--out", tmp_path / "h")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "h" / "hessian.json").read_text())
    assert rec["settings"]["bn_mode"] == ("batch" if variant == "ghost_bn" else "none")


def test_cli_bad_input_one_line_exit_2(tmp_path):
    ck = make_ckpt(tmp_path, "frozen_bn")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(ck.read_bytes()[:100])
    cases = [
        (foreign, [], "not a bnlab checkpoint"),
        (truncated, [], "not a readable checkpoint"),
        (ck, ["--bn-mode", "batch"], "impossible"),
        (ck, ["--top-k", 100000], "larger than"),
        (ck, ["--num-samples", 45], "multiple of 10"),
    ]
    for path, extra, msg in cases:
        r = CliRunner().invoke(main, ["hessian", str(path), "--num-samples", "40", "--batch-size", "20", "--quiet",
                                      "--out", str(tmp_path / "o"), "--force", *extra])
        assert r.exit_code == 2, (extra, r.output)
        err = r.stderr if hasattr(r, "stderr") else r.output
        assert msg in err and err.strip().count("\n") == 0, err


# ---------------------------------------------------------------------------------------------------
# Numbers against a dense float64 Hessian computed here: the checkpoint's loss on its evaluation set,
# N = 20 examples in batches of 15 and 5 (--batch-size 15), BN with batch statistics,
# L = sum_i loss_i / N (per-example cross-entropy with the run's label smoothing, each batch's
# examples normalised together), over the top of the net (--params layer3_extra*,classifier*: a
# Hessian block, which keeps the dense truth and the Lanczos runs cheap).

SMOOTH = 0.2
WD = 5e-4  # the checkpoint's run weight decay (the default)
N, BS = 20, 15
TOP = "layer3_extra*,classifier*"


@pytest.fixture(scope="module")
def bn_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("ck"), "bn", label_smoothing=SMOOTH)


def _block(path: str) -> tuple:
    """The net cut below layer3_extra: (tail, [(features, y) per batch], names, shapes, theta) in float64, BN with
    batch statistics (buffers untouched); the layers below are held fixed, their outputs are data for the block."""
    ck = load_checkpoint(path)
    model = ck.model.double().train()
    for _, m in batch_norm_layers(model):
        m.track_running_stats = False  # batch statistics; buffers untouched
    data = load_data(ck.config.data, "cpu", seed=ck.config.seed)
    x, y = eval_set(data, N, seed=0)
    mean = torch.tensor(CIFAR_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, dtype=torch.float64).view(1, 3, 1, 1)
    x = (x.double() - mean) / std
    cut = list(dict(model.named_children())).index("layer3_extra")
    head, tail = model[:cut], model[cut:]
    with torch.no_grad():
        feats = [(head(x[i:i + BS]), y[i:i + BS]) for i in range(0, N, BS)]
    names = [n for n, _ in tail.named_parameters()]
    assert names == ["layer3_extra.conv.weight", "classifier.weight"]
    shapes = [p.shape for p in tail.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in tail.parameters()])
    return tail, feats, names, shapes, theta


def _block_logits(tail, names, shapes, flat: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    chunks = torch.split(flat, [math.prod(s) for s in shapes])
    return functional_call(tail, {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}, (f,))


@functools.cache
def dense_block_hessian(path: str) -> np.ndarray:
    """The block of the Hessian on layer3_extra and the classifier."""
    tail, feats, names, shapes, theta = _block(path)

    def total(flat: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy(_block_logits(tail, names, shapes, flat, f), yb, reduction="sum",
                                   label_smoothing=SMOOTH) for f, yb in feats) / N

    return jacfwd(grad(total))(theta).numpy()


@functools.cache
def dense_truth(path: str) -> np.ndarray:
    """Eigenvalues (ascending) of the block of the Hessian on layer3_extra and the classifier."""
    return np.linalg.eigvalsh(dense_block_hessian(path))


def hessian_json(tmp_path: Path, ck: Path, name: str, *args: object) -> dict:
    r = run("hessian", ck, "--num-samples", N, "--batch-size", BS, "--params", TOP, "--out", tmp_path / name,
            "--quiet", *args)
    assert r.exit_code == 0, r.output
    return json.loads((tmp_path / name / "hessian.json").read_text())


def test_eigenvalues_match_dense_truth_with_unequal_batches(tmp_path, bn_ckpt):
    lam = dense_truth(str(bn_ckpt))[::-1]
    rec = hessian_json(tmp_path, bn_ckpt, "f64", "--top-k", 3, "--tol", 1e-9, "--dtype", "float64")
    s = rec["settings"]
    assert (s["num_samples"], s["num_batches"], s["batch_size"], s["dtype"]) == (N, 2, BS, "float64")
    assert s["dim"] == len(lam) and s["label_smoothing"] == SMOOTH
    assert rec["eigen"]["eigenvalues"] == pytest.approx(lam[:3], rel=1e-7)
    assert rec["eigen"]["all_converged"] and rec["eigen"]["residuals_measured"]
    # default float32 products: the same eigenvalues to float32 accuracy
    rec32 = hessian_json(tmp_path, bn_ckpt, "f32", "--top-k", 3, "--tol", 1e-6)
    assert rec32["settings"]["dtype"] == "float32"
    assert rec32["eigen"]["eigenvalues"] == pytest.approx(lam[:3], rel=1e-4)


def test_batch_sum_units_and_weight_decay_term(tmp_path, bn_ckpt):
    """batch-sum = the loss summed over a batch of 15 = 15 x the mean loss; the wd term adds wd·I to it
    (times 15): eigenvalues 15 (lambda + wd)."""
    lam = dense_truth(str(bn_ckpt))[::-1]
    rec = hessian_json(tmp_path, bn_ckpt, "bs", "--top-k", 2, "--tol", 1e-9, "--dtype", "float64",
                       "--loss-scale", "batch-sum", "--weight-decay-term")
    s = rec["settings"]
    assert (s["scale_factor"], s["weight_decay_term"], s["loss_scale"]) == (BS, WD, "batch-sum")
    assert str(BS) in s["units"]
    assert rec["eigen"]["eigenvalues"] == pytest.approx(BS * (lam[:2] + WD), rel=1e-7)


@pytest.mark.parametrize("which,solver", [("SA", "lanczos"), ("LM", "arpack"), ("SA", "arpack")])
def test_which_and_eigensolver(tmp_path, bn_ckpt, which, solver):
    lam = dense_truth(str(bn_ckpt))
    ref = {"SA": lam, "LM": lam[np.argsort(-np.abs(lam), kind="stable")]}[which][:2]
    rec = hessian_json(tmp_path, bn_ckpt, f"{which}-{solver}", "--top-k", 2, "--tol", 1e-9, "--dtype", "float64",
                       "--which", which, "--eigensolver", solver, "--ncv", 40)
    e = rec["eigen"]
    assert (e["which"], e["method"]) == (which, solver)
    assert e["eigenvalues"] == pytest.approx(ref, rel=1e-6, abs=1e-8 * abs(lam).max())
    assert e["all_converged"]


def test_func_hvp_method_gives_the_same_numbers(tmp_path, bn_ckpt):
    lam = dense_truth(str(bn_ckpt))[::-1]
    rec = hessian_json(tmp_path, bn_ckpt, "func", "--top-k", 2, "--tol", 1e-9, "--dtype", "float64",
                       "--hvp-method", "func")
    assert rec["settings"]["hvp_method"] == "func" and rec["settings"]["cache_graphs"] is False
    assert rec["eigen"]["eigenvalues"] == pytest.approx(lam[:2], rel=1e-7)


def test_max_hvps_flags_unconverged_pairs(tmp_path, bn_ckpt):
    r = run("hessian", bn_ckpt, "--num-samples", N, "--batch-size", BS, "--params", TOP, "--top-k", 3,
            "--tol", 1e-12, "--max-hvps", 6, "--out", tmp_path / "cut")
    assert r.exit_code == 0, r.output
    e = json.loads((tmp_path / "cut" / "hessian.json").read_text())["eigen"]
    assert e["hvp_count"] <= 6 and e["all_converged"] is False and not all(e["converged"])
    assert all(rr > 1e-12 for rr in e["relative_residuals"])
    assert f"[{sum(e['converged'])}/3 converged" in r.output


def test_warm_start_and_its_mismatch_error(tmp_path, bn_ckpt):
    lam = dense_truth(str(bn_ckpt))[::-1]
    common = ("--top-k", 3, "--tol", 1e-8, "--dtype", "float64")
    cold = hessian_json(tmp_path, bn_ckpt, "cold", *common)
    warm = hessian_json(tmp_path, bn_ckpt, "warm", *common, "--warm-start", tmp_path / "cold" / "eigvecs.pt")
    assert warm["eigen"]["warm_start"] == str(tmp_path / "cold" / "eigvecs.pt")
    assert warm["eigen"]["eigenvalues"] == pytest.approx(lam[:3], rel=1e-6)
    assert warm["eigen"]["hvp_count"] < cold["eigen"]["hvp_count"]
    # eigenvectors over other parameters, or not an eigvecs.pt at all: one line, exit 2
    hessian_json(tmp_path, bn_ckpt, "other", "--top-k", 1, "--params", "classifier*")
    for bad, msg in ((tmp_path / "other" / "eigvecs.pt", "different parameters"),
                     (tmp_path / "cold" / "hessian.json", "not an eigvecs.pt")):
        r = CliRunner().invoke(main, ["hessian", str(bn_ckpt), "--num-samples", str(N), "--batch-size", str(BS),
                                      "--params", TOP, "--top-k", "3", "--warm-start", str(bad),
                                      "--out", str(tmp_path / "x"), "--force", "--quiet"])
        assert r.exit_code == 2 and msg in r.output and r.output.strip().count("\n") == 0, r.output


@functools.cache
def dense_ggn_truth(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) of the Gauss-Newton block G = Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i / N (J by jacrev,
    in each example's batch), of H − G, and of G's class-means term Σ_c (n_c/N) δ_c δ_cᵀ, on the block above."""
    from torch.func import jacrev

    tail, feats, names, shapes, theta = _block(path)
    G = torch.zeros(len(theta), len(theta), dtype=torch.float64)
    sums = torch.zeros(10, len(theta), dtype=torch.float64)
    counts = torch.zeros(10, dtype=torch.float64)
    for f, yb in feats:
        J = jacrev(lambda flat, f=f: _block_logits(tail, names, shapes, flat, f))(theta).detach()
        p = torch.softmax(_block_logits(tail, names, shapes, theta, f), 1).detach()
        for j, c in enumerate(yb.tolist()):
            G += J[j].T @ (torch.diag(p[j]) - torch.outer(p[j], p[j])) @ J[j] / N
            sums[c] += J[j].T @ (p[j, c].sqrt() * (F.one_hot(torch.tensor(c), 10).double() - p[j]))
            counts[c] += 1
    Gcm = sum(counts[c] / N * torch.outer(sums[c] / counts[c], sums[c] / counts[c]) for c in range(10) if counts[c])
    eig = np.linalg.eigvalsh
    return eig(G.numpy()), eig(dense_block_hessian(path) - G.numpy()), eig(Gcm.numpy())


def test_matrix_ggn_and_residual_match_dense_truth(tmp_path, bn_ckpt):
    g, r, cm = (v[::-1] for v in dense_ggn_truth(str(bn_ckpt)))
    rec = hessian_json(tmp_path, bn_ckpt, "ggn", "--matrix", "ggn", "--top-k", 3, "--tol", 1e-9, "--dtype", "float64")
    assert rec["settings"]["matrix"] == "ggn" and rec["settings"]["label_smoothing"] == SMOOTH
    assert "hvp_method" not in rec["settings"]
    assert rec["eigen"]["eigenvalues"] == pytest.approx(g[:3], rel=1e-7) and rec["eigen"]["all_converged"]
    assert rec["class_means"]["rank_bound"] == 10
    assert rec["class_means"]["eigenvalues"][:3] == pytest.approx(cm[:3], rel=1e-7)
    assert all(0 <= v <= 1 + 1e-9 for v in rec["class_means"]["eigvec_overlap"])
    res = hessian_json(tmp_path, bn_ckpt, "res", "--matrix", "residual", "--top-k", 2, "--tol", 1e-9,
                       "--dtype", "float64")
    assert res["settings"]["matrix"] == "residual" and "class_means" not in res
    assert res["eigen"]["eigenvalues"] == pytest.approx(r[:2], rel=1e-7)
    r_bad = run("hessian", bn_ckpt, "--matrix", "ggn", "--hvp-method", "func", "--num-samples", N, "--batch-size", BS,
                "--out", tmp_path / "bad", "--quiet")
    assert r_bad.exit_code == 2 and "Gauss-Newton" in r_bad.output and r_bad.output.strip().count("\n") == 0
