"""`bnlab hessian` from the command line and `bnlab.hessian` from Python, on synthetic checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import bnlab
from bnlab.checkpoint import load_checkpoint, save_checkpoint
from bnlab.cli import main
from bnlab.config import make_config
from bnlab.curvature import hessian_operator_from_checkpoint
from bnlab.models import build_model


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
