"""Every numeric option of every command has a domain: NaN, ±inf and out-of-range values give one line
on stderr and exit code 2, before any output folder or file is created."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from bnlab.cli import main

TINY = ["--width", "8", "--dataset", "synthetic", "--subset", "1000", "--test-subset", "200", "--batch-size", "128",
        "--quiet"]
EVAL = ["--num-samples", "40", "--batch-size", "20", "-q"]


@pytest.fixture(scope="module")
def run_dir(tiny_run: Path) -> Path:
    return tiny_run


TRAIN_CASES = [
    ["--lr", "nan"], ["--lr", "inf"], ["--lr", "-0.1"], ["--lr", "0"], ["--wd", "nan"], ["--wd", "-1e-4"],
    ["--lr-knots", "0,nan,1", "--lr-mults", "0,1,0"], ["--lr-mults", "0,-1,0"], ["--lr-mults", "0,0,0"],
    ["--act", "celu", "--act-param", "nan"], ["--act", "softplus", "--act-param", "-1"],
    ["--classifier-scale", "nan"], ["--classifier-scale", "0"], ["--momentum", "1.0"], ["--momentum", "nan"],
    ["--label-smoothing", "1.5"], ["--epochs", "0"], ["--batch-size", "0"], ["--batch-size", "100000"],
    ["--width", "0"], ["--ghost-splits", "0", "--variant", "ghost_bn"], ["--cutout", "40"], ["--seed", "-1"],
    ["--log-every", "-1"], ["--save-every", "-2"], ["--subset", "15"],
]


@pytest.mark.parametrize("extra", TRAIN_CASES, ids=lambda a: " ".join(a))
def test_train_numbers(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "out"
    args = ["train", *TINY, *extra, "--out", str(out)]
    if "--batch-size" in extra:  # the value under test replaces TINY's
        i = args.index("--batch-size")
        del args[i:i + 2]
    assert_refused(CliRunner().invoke(main, args), out)


def assert_refused(result, *paths: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:"), result.stderr
    for p in paths:
        assert not p.exists(), f"{p} was created by a refused command"


HESSIAN_CASES = [
    ["--top-k", "-1"], ["--tol", "nan"], ["--tol", "0"], ["--tol", "2"], ["--max-hvps", "-1"], ["--max-hvps", "0"],
    ["--ncv", "1"], ["--num-samples", "15"], ["--num-samples", "0"], ["--batch-size", "0"],
    ["--density", "--density-probes", "0"], ["--trace", "--trace-matvecs", "-5"], ["--seed", "-3"],
    ["--eval-seed", "-1"], ["--warm-start", "/nonexistent/eigvecs.pt"], ["--top-k", "0"],
]


@pytest.mark.parametrize("extra", HESSIAN_CASES, ids=lambda a: " ".join(a))
def test_hessian_numbers(tmp_path: Path, run_dir: Path, extra: list[str]) -> None:
    out = tmp_path / "h"
    args = ["hessian", str(run_dir / "final.pt"), *EVAL, *extra, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out)


OUTSTATS_CASES = [
    ["--delta", "nan"], ["--delta", "0"], ["--delta", "-0.1"], ["--num-eigs", "-1"], ["--tol", "inf"],
    ["--channels", "-1"], ["--stats", "mean,kurtosis"], ["--seed", "-1"], ["--num-samples", "25"],
]


@pytest.mark.parametrize("extra", OUTSTATS_CASES, ids=lambda a: " ".join(a))
def test_outstats_numbers(tmp_path: Path, run_dir: Path, extra: list[str]) -> None:
    out = tmp_path / "o"
    args = ["outstats", str(run_dir / "final.pt"), *EVAL, "--no-histograms", *extra, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out)


@pytest.mark.parametrize("extra", [["--depth", "0"], ["--width", "-4"], ["--inputs", "1"], ["--hist-channels", "-1"],
                                   ["--hist-layers", "0,1"], ["--seed", "-2"]], ids=lambda a: " ".join(a))
def test_collapse_numbers(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "c"
    args = ["collapse", "--depth", "3", "--width", "16", "--inputs", "20", *extra, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out)


@pytest.mark.parametrize("extra", [["--eq-tol", "-1"], ["--eq-tol", "nan"], ["--cos-tol", "nan"], ["--cos-tol", "0"],
                                   ["--window", "0"], ["--window", "1.5"]], ids=lambda a: " ".join(a))
def test_dynamics_numbers(tmp_path: Path, run_dir: Path, extra: list[str]) -> None:
    out = tmp_path / "d"
    assert_refused(CliRunner().invoke(main, ["dynamics", str(run_dir), *extra, "--out", str(out)]), out)


@pytest.mark.parametrize("extra", [["--batch-size", "-5"], ["--batch-size", "1"]], ids=lambda a: " ".join(a))
def test_freeze_numbers(tmp_path: Path, run_dir: Path, extra: list[str]) -> None:
    out = tmp_path / "f.pt"
    assert_refused(CliRunner().invoke(main, ["freeze", str(run_dir / "final.pt"), *extra, "-o", str(out)]), out)


@pytest.mark.parametrize("grid", ["lr=nan", "lr=0.1,inf", "wd=-1", "momentum=1.5", "epochs=0", "lr=abc"])
def test_sweep_grid_values(tmp_path: Path, grid: str) -> None:
    out = tmp_path / "s"
    args = ["sweep", "--grid", grid, *TINY, "--epochs", "1", "--out", str(out)]
    if grid == "epochs=0":
        args = ["sweep", "--grid", grid, *TINY, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out)


@pytest.mark.parametrize("extra", [["--jobs", "0"], ["--threads", "0"], ["--retries", "-1"]],
                         ids=lambda a: " ".join(a))
def test_sweep_options(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "s"
    args = ["sweep", "--grid", "lr=0.1", *TINY, "--epochs", "1", *extra, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out)
