"""Damaged or hand-edited files (issue 24, item 12): checkpoints with weights of the wrong dtype or
non-finite ones, a last.pt whose training state does not fit its run, eigvecs.pt that are not
orthonormal or say nothing of their checkpoint. Each is one line on stderr, exit code 2, nothing written."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from cli.test_bad_numbers import EVAL, assert_refused
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.context import EvalSpec


def _edit(src: Path, dst: Path, change: Any) -> Path:
    """dst: the checkpoint src with change(payload) applied (as a hand edit would leave it)."""
    payload = torch.load(src, weights_only=True)
    change(payload)
    torch.save(payload, dst)
    return dst


def _first_weight(payload: dict[str, Any]) -> str:
    return next(k for k, v in payload["model"].items() if v.is_floating_point() and v.dim() > 1)


def _as_int64(p: dict[str, Any]) -> None:
    k = _first_weight(p)
    p["model"][k] = (p["model"][k] * 100).to(torch.int64)


@pytest.mark.parametrize("command", ["info", "hessian", "outstats", "freeze"])
def test_int64_weights_are_refused(tmp_path: Path, tiny_run: Path, command: str) -> None:
    ckpt = _edit(tiny_run / "final.pt", tmp_path / "int.pt", _as_int64)
    out = tmp_path / "out"
    args = {"info": ["info", str(ckpt)], "freeze": ["freeze", str(ckpt), "-o", str(out)],
            "hessian": ["hessian", str(ckpt), *EVAL, "--top-k", "1", "--out", str(out)],
            "outstats": ["outstats", str(ckpt), *EVAL, "--no-histograms", "--out", str(out)]}[command]
    assert_refused(CliRunner().invoke(main, args), out, names="int64")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("command", ["hessian", "outstats"])
def test_non_finite_weights_are_one_line(tmp_path: Path, tiny_run: Path, command: str, value: float) -> None:
    def poison(p: dict[str, Any]) -> None:
        w = p["model"][_first_weight(p)]
        w[(0,) * w.dim()] = value

    ckpt = _edit(tiny_run / "final.pt", tmp_path / "bad.pt", poison)
    out = tmp_path / "out"
    extra = ["--top-k", "2"] if command == "hessian" else ["--no-histograms"]
    assert_refused(CliRunner().invoke(main, [command, str(ckpt), *EVAL, *extra, "--out", str(out)]), out,
                   names="non-finite weights")


def _set(key: str, value: Any) -> Any:
    return lambda p: p.__setitem__(key, value)


def _metric(column: str, value: Any) -> Any:
    def change(p: dict[str, Any]) -> None:
        if value is None:
            del p["metrics"][0][column]
        else:
            p["metrics"][0][column] = value
    return change


def _momentum_shape(p: dict[str, Any]) -> None:
    state = p["optimizer"]["state"]
    i = next(iter(state))
    state[i]["momentum_buffer"] = torch.zeros(3)


LAST_PT_CASES = {
    "optimizer state a string": (lambda p: p["optimizer"].__setitem__("state", "x"), "optimizer"),
    "optimizer without param groups": (lambda p: p["optimizer"].__setitem__("param_groups", []), "optimizer"),
    "optimizer momentum of another shape": (_momentum_shape, "momentum buffer"),
    "rng of floats": (_set("rng", {"torch": torch.zeros(5)}), "rng"),
    "rng empty": (_set("rng", {}), "rng"),
    "rng truncated": (_set("rng", {"torch": torch.zeros(7, dtype=torch.uint8)}), "generator state"),
    "metric column missing": (_metric("test_acc", None), "columns"),
    "metric column a string": (_metric("train_loss", "low"), "columns"),
    "metric column extra": (_metric("bogus", 1.0), "columns"),
    "epoch 5 of 1": (_set("epoch", 5), "epoch 5 of a 1-epoch run"),
    "epoch -1": (_set("epoch", -1), "epoch -1"),
    "running at the last epoch": (_set("status", "running"), "status running at epoch 1 of 1"),
    "status frozen": (_set("status", "frozen"), "status 'frozen'"),
    "ema run without its ema": (lambda p: p["config"].__setitem__("ema_momentum", 0.9), "no EMA weights"),
}


@pytest.mark.parametrize("case", list(LAST_PT_CASES))
def test_hand_edited_last_pt_is_one_line_and_never_finished(tmp_path: Path, tiny_run: Path, case: str) -> None:
    change, message = LAST_PT_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "final.pt").unlink()  # nothing but last.pt says how far the run got
    _edit(run / "last.pt", run / "last.pt", change)
    r = CliRunner().invoke(main, ["train", "--resume", str(run), "-q"])
    assert_refused(r, run / "final.pt", names=message)


def test_unedited_last_pt_resumes_to_finished(tmp_path: Path, tiny_run: Path) -> None:
    """The control of the cases above: the same copy, unedited, completes (final.pt rewritten)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "final.pt").unlink()
    r = CliRunner().invoke(main, ["train", "--resume", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert (run / "final.pt").is_file()


@pytest.fixture(scope="module")
def hessian_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An eigvecs.pt as `bnlab hessian` writes it for tiny_run (3 orthonormal rows over all parameters,
    the checkpoint's sha256 in its settings); its rows are random, which these checks do not care about."""
    from bnlab.checkpoint import file_hash, load_checkpoint
    from bnlab.io.eigvecs import write_eigvecs

    out = tmp_path_factory.mktemp("hess") / "h"
    out.mkdir()
    model = load_checkpoint(tiny_run / "final.pt").model
    names, params = zip(*model.named_parameters())
    dim = sum(p.numel() for p in params)
    q = torch.linalg.qr(torch.randn(dim, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    write_eigvecs(out / "eigvecs.pt", torch.tensor([3.0, 2.0, 1.0]), q.T, list(names), [list(p.shape) for p in params],
                  {"checkpoint_sha256": file_hash(tiny_run / "final.pt")})
    return out


def _rows(change: Any) -> Any:
    def edit(p: dict[str, Any]) -> None:
        change(p["eigenvectors"])
    return edit


EIGVECS_CASES = {
    "a NaN entry": (_rows(lambda v: v[1].__setitem__(0, float("nan"))), "non-finite"),
    "a zero row": (_rows(lambda v: v[2].zero_()), "row 2 has norm 0"),
    "a duplicate row": (_rows(lambda v: v[1].copy_(v[0])), "rows 0 and 1 overlap"),
    "a scaled row": (_rows(lambda v: v[0].mul_(2)), "row 0 has norm 2"),
    "another dimension": (lambda p: p.__setitem__("eigenvectors", p["eigenvectors"][:, :-1].clone()), "dimension"),
    "no checkpoint_sha256": (lambda p: p["settings"].pop("checkpoint_sha256"), "checkpoint_sha256"),
    "no settings": (lambda p: p.pop("settings"), "checkpoint_sha256"),
}


@pytest.mark.parametrize("case", list(EIGVECS_CASES))
def test_bad_eigvecs_are_refused(tmp_path: Path, tiny_run: Path, hessian_dir: Path, case: str) -> None:
    change, message = EIGVECS_CASES[case]
    bad = _edit(hessian_dir / "eigvecs.pt", tmp_path / "eigvecs.pt", change)
    out = tmp_path / "o"
    args = ["outstats", str(tiny_run / "final.pt"), *EVAL, "--no-histograms", "--eigvecs", str(bad), "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out, names=message)


def test_the_real_eigvecs_are_accepted(tiny_run: Path, hessian_dir: Path) -> None:
    """The control: the unedited file passes the same checks."""
    from bnlab.context import build_context
    from bnlab.io.eigvecs import read_eigvecs
    from bnlab.outstats.gradients import trainable_parameters
    from bnlab.outstats.run import check_eigvecs_match

    ctx = build_context(tiny_run / "final.pt", EvalSpec(num_samples=40, batch_size=20))
    ev = read_eigvecs(hessian_dir)
    check_eigvecs_match(ev, ctx.settings(), trainable_parameters(ctx.model)[0], str(hessian_dir))
    assert ev.eigenvectors.shape[0] == 3


def test_bad_eigvecs_refused_as_a_warm_start(tmp_path: Path, tiny_run: Path, hessian_dir: Path) -> None:
    bad = _edit(hessian_dir / "eigvecs.pt", tmp_path / "eigvecs.pt", EIGVECS_CASES["a duplicate row"][0])
    out = tmp_path / "h"
    args = ["hessian", str(tiny_run / "final.pt"), *EVAL, "--top-k", "3", "--warm-start", str(bad), "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out, names="overlap")
