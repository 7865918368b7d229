"""Every bad input named by the trainer issue: one line on stderr, exit code 2, nothing overwritten."""
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.train import train
from conftest import tiny_config

TINY = ["--width", "8", "--dataset", "synthetic", "--subset", "1000", "--test-subset", "200", "--batch-size", "128",
        "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, pattern):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:"), result.stderr
    assert pattern in lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(tiny_config(epochs=1), out, quiet=True)
    return out


def test_unknown_variant_and_conflicting_options(tmp_path):
    assert_one_line_error(run("train", "--variant", "batchnorm", "--out", tmp_path / "o"), "--variant")
    assert_one_line_error(run("train", "--variant", "no_bn", "--norm", "bn", "--out", tmp_path / "o"),
                          "variant no_bn means norm none")
    assert_one_line_error(run("train", "--variant", "ghost_bn", "--batch-size", "100", "--out", tmp_path / "o"),
                          "divisible")
    assert_one_line_error(run("train", "--act", "relu", "--act-param", "2", "--out", tmp_path / "o"), "relu")
    assert_one_line_error(run("train", "--momentum", "0", "--out", tmp_path / "o"), "Nesterov")
    assert_one_line_error(run("train", *TINY), "--out")
    assert not (tmp_path / "o").exists()


def test_missing_data_and_md5_mismatch(tmp_path, cifar_tarball, monkeypatch):
    assert_one_line_error(run("train", "--data-dir", tmp_path / "nothing", "--out", tmp_path / "o"),
                          "no CIFAR-10 at --data-dir")
    monkeypatch.setattr("bnlab.data.cifar.TARBALL_MD5", "f" * 32)
    assert_one_line_error(run("train", "--data-dir", cifar_tarball, "--out", tmp_path / "o"), "md5")
    assert not (tmp_path / "o").exists()


def test_truncated_and_foreign_checkpoints(tmp_path, finished_run):
    data = (finished_run / "final.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("info", tmp_path / "trunc.pt"), "truncated or corrupt")
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "foreign.pt")
    assert_one_line_error(run("info", tmp_path / "foreign.pt"), "not a bnlab checkpoint")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    assert_one_line_error(run("info", tmp_path / "module.pt"), "not a bnlab checkpoint")
    assert_one_line_error(run("info", tmp_path / "missing.pt"), "no checkpoint")
    assert_one_line_error(run("freeze", tmp_path / "trunc.pt", "-o", tmp_path / "f.pt"), "truncated")


def test_out_dir_is_protected(tmp_path, finished_run):
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    assert_one_line_error(run("train", *TINY, "--epochs", "1", "--out", finished_run), "not empty")
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(run("train", *TINY, "--out", blocker / "sub"), "cannot create")
    assert_one_line_error(run("train", *TINY, "--out", blocker), "not a directory")
    assert_one_line_error(run("train", "--resume", tmp_path / "empty"), "nothing to resume")
    assert_one_line_error(run("train", "--resume", finished_run, "--lr", "1"), "run's own config")


def test_force_resume_info_and_freeze(tmp_path, finished_run):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("stale")
    r = run("train", *TINY, "--epochs", "1", "--out", out, "--force")
    assert r.exit_code == 0, r.output
    assert not (out / "old.txt").exists() and (out / "final.pt").exists()
    r = run("train", "--resume", out)
    assert r.exit_code == 0 and "finished" in r.output
    r = run("info", out / "final.pt")
    assert r.exit_code == 0 and "variant: bn" in r.output
    r = run("freeze", finished_run / "final.pt", "-o", tmp_path / "frozen.pt")
    assert r.exit_code == 0, r.output
    r = run("info", tmp_path / "frozen.pt")
    assert "frozen_bn" in r.output
    assert_one_line_error(run("freeze", finished_run / "final.pt", "-o", tmp_path / "frozen.pt"), "exists")


def test_console_entry_point_reports_errors_on_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "bnlab", "info", str(tmp_path / "nope.pt")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no checkpoint" in p.stderr
