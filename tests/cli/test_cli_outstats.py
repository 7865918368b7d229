"""`bnlab outstats` end to end on a tiny synthetic checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bnlab.checkpoint import file_hash, load_checkpoint, save_checkpoint
from bnlab.cli import main
from bnlab.config import make_config
from bnlab.curvature import hessian_operator_from_checkpoint, top_eigenpairs
from bnlab.models import build_model
from bnlab.outstats import orthonormal_basis, overlaps

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)


def tiny_ckpt(tmp_path: Path, variant: str) -> Path:
    cfg = make_config(variant, model="simple", width=2, act="softplus", dataset="synthetic",
                      synthetic_train=200, synthetic_test=50)
    torch.manual_seed(0)
    path = tmp_path / f"{variant}.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    return path


@pytest.mark.parametrize("variant", ["bn", "no_bn"])
def test_cli_writes_everything_and_leaves_the_model(tmp_path: Path, variant: str) -> None:
    ckpt = tiny_ckpt(tmp_path, variant)
    before = load_checkpoint(ckpt).model.state_dict()
    digest = file_hash(ckpt)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["outstats", str(ckpt), "--num-samples", "40", "--batch-size", "20",
                                    "--num-eigs", "3", "--project", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "outstats.json").read_text())
    assert s["settings"]["bn_mode"] == ("batch" if variant == "bn" else "none")
    assert s["span"]["means_dim"] == 9 and s["span"]["full_dim"] <= 30
    assert len(s["perturbation"]["rows"]) == 10
    overlap = s["eigen"]["overlap_full"]
    assert len(overlap) == 3 and all(0 <= v <= 1 + 1e-9 for v in overlap)
    assert len(s["projected"]["eigenvalues"]) == 3
    # projecting out a subspace cannot raise the top eigenvalue (Cauchy interlacing)
    assert s["projected"]["eigenvalues"][0] <= s["eigen"]["eigenvalues"][0] * (1 + 1e-2) + 1e-9
    layer_shares = s["layer_shares"]["mean[0]"]
    assert len(layer_shares) == len(s["layers"]) and sum(layer_shares) == pytest.approx(1.0)
    t = torch.load(out / "outstats.pt", weights_only=True)
    assert t["grads"].shape[0] == 30 and "init" in t["activations"]
    assert file_hash(ckpt) == digest
    after = load_checkpoint(ckpt).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    ckpt = tiny_ckpt(tmp_path, "no_bn")
    res = CliRunner().invoke(main, ["outstats", str(ckpt), "--module", "nope", "--num-samples", "20",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "bnlab: error: no module 'nope'" in res.output
    res = CliRunner().invoke(main, ["outstats", str(ckpt), "--bn-mode", "batch", "--num-samples", "20",
                                    "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "impossible" in res.output
    res = CliRunner().invoke(main, ["outstats", str(ckpt), "--stats", "mean,kurt", "--num-samples", "20",
                                    "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "--stats" in res.output


def test_eigvecs_from_a_hessian_dir(tmp_path: Path) -> None:
    # The real `bnlab hessian` output (eigvecs.pt + hessian.json) feeds `outstats --eigvecs`; its
    # overlaps must equal those of the same eigenvectors projected on the span directly.
    ckpt = tiny_ckpt(tmp_path, "no_bn")
    hdir = tmp_path / "hess"
    h = CliRunner().invoke(main, ["hessian", str(ckpt), "--top-k", "2", "--tol", "1e-6", "--num-samples", "40",
                                  "--batch-size", "20", "--out", str(hdir), "-q"])
    assert h.exit_code == 0, h.output
    saved = torch.load(hdir / "eigvecs.pt", weights_only=True)
    op = hessian_operator_from_checkpoint(ckpt, num_samples=40, batch_size=20, device="cpu")
    ref = top_eigenpairs(op, 2, tol=1e-6)
    assert saved["eigenvalues"].tolist() == pytest.approx(ref.eigenvalues.tolist(), rel=1e-5)
    common = ["--num-samples", "40", "--batch-size", "20", "--no-histograms", "-q", "--stats", "mean"]
    r1 = CliRunner().invoke(main, ["outstats", str(ckpt), "--eigvecs", str(hdir), "--out", str(tmp_path / "a"),
                                   *common])
    assert r1.exit_code == 0, r1.output
    got = json.loads((tmp_path / "a" / "outstats.json").read_text())["eigen"]
    t = torch.load(tmp_path / "a" / "outstats.pt", weights_only=True)
    q, _ = orthonormal_basis(t["grads"].double(), 1e-4)
    torch.testing.assert_close(torch.tensor(got["overlap_means"], dtype=torch.float64),
                               overlaps(q, saved["eigenvectors"].double().T), rtol=1e-4, atol=1e-6)
    assert got["eigenvalues"] == pytest.approx(saved["eigenvalues"].tolist())
    assert got["hessian_settings"]["bn_mode"] == "none" and got["hessian_settings"]["num_samples"] == 40
    bad = CliRunner().invoke(main, ["outstats", str(ckpt), "--eigvecs", str(tmp_path), "--out",
                                    str(tmp_path / "b"), *common])
    assert bad.exit_code == 2 and "no eigvecs.pt" in bad.output
    # eigenvectors of another checkpoint, or of a parameter subset, are refused in one line
    other = tmp_path / "other"
    other.mkdir()
    ckpt2 = tiny_ckpt(other, "bn")
    wrong = CliRunner().invoke(main, ["outstats", str(ckpt2), "--eigvecs", str(hdir), "--out", str(tmp_path / "c"),
                                      *common])
    assert wrong.exit_code == 2 and "another checkpoint" in wrong.output
    sub = tmp_path / "hess_sub"
    h2 = CliRunner().invoke(main, ["hessian", str(ckpt), "--top-k", "1", "--params", "classifier*",
                                   "--num-samples", "40", "--batch-size", "20", "--out", str(sub), "-q"])
    assert h2.exit_code == 0, h2.output
    part = CliRunner().invoke(main, ["outstats", str(ckpt), "--eigvecs", str(sub), "--out", str(tmp_path / "d"),
                                     *common])
    assert part.exit_code == 2 and "other parameters" in part.output
