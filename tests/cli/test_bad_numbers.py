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


def assert_refused(result, *paths: Path, names: str | None = None) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:"), result.stderr
    if names is not None:  # the error names the option (or value) at fault
        assert names in lines[0], lines[0]
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


# -- Issue 24, item 11: numbers too large to mean anything are refused up front, naming the option ----------
BIG = str(10**30)
BIG_TRAIN_CASES = [
    (["--seed", BIG], "--seed"), (["--seed", str(2**32)], "--seed"), (["--width", "100000"], "--width"),
    (["--width", BIG], "--width"), (["--act", "celu", "--act-param", "1e308"], "--act-param"),
    (["--act", "softplus", "--act-param", "1e-9"], "--act-param"), (["--lr-mults", "0,1e308,0"], "--lr-mults"),
    (["--lr", "1e308"], "--lr"), (["--classifier-scale", "1e308"], "--classifier-scale"),
    (["--epochs", BIG], "--epochs"), (["--subset", BIG], "--subset"), (["--test-subset", BIG], "--test-subset"),
    (["--lr-schedule", "exp", "--epochs", "5000"], "exp"), (["--ghost-splits", BIG, "--variant", "ghost_bn"],
                                                            "--ghost-splits"),
]


@pytest.mark.parametrize("extra,option", BIG_TRAIN_CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_train_huge_numbers(tmp_path: Path, extra: list[str], option: str) -> None:
    out = tmp_path / "out"
    assert_refused(CliRunner().invoke(main, ["train", *TINY, *extra, "--out", str(out)]), out, names=option)


def test_the_largest_seed_is_accepted() -> None:
    from bnlab.config import make_config
    from bnlab.validate import SEED_MAX

    assert make_config("bn", seed=SEED_MAX).seed == 2**32 - 1  # the documented domain's top end


BIG_HESSIAN_CASES = [
    (["--seed", BIG], "--seed"), (["--eval-seed", BIG], "--eval-seed"),
    (["--density", "--density-probes", BIG], "--density-probes"),
    (["--density", "--density-steps", BIG], "--density-steps"),
    (["--trace", "--trace-matvecs", BIG], "--trace-matvecs"),
    (["--density", "--density-probes", "10000", "--density-steps", "10000"], "--density-probes"),
    (["--max-hvps", BIG], "--max-hvps"), (["--ncv", BIG], "--ncv"), (["--top-k", BIG], "--top-k"),
]


@pytest.mark.parametrize("extra,option", BIG_HESSIAN_CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_hessian_huge_numbers(tmp_path: Path, run_dir: Path, extra: list[str], option: str) -> None:
    out = tmp_path / "h"
    args = ["hessian", str(run_dir / "final.pt"), *EVAL, *extra, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out, names=option)


BIG_OUTSTATS_CASES = [
    (["--no-histograms", "--seed", BIG], "--seed"), (["--hist-layers", "nonexistent"], "--hist-layers"),
    (["--hist-layers", "prep,nonexistent"], "nonexistent"), (["--no-histograms", "--num-eigs", BIG], "--num-eigs"),
    (["--no-histograms", "--num-eigs", "1000000"], "--num-eigs"), (["--no-histograms", "--module", ""], "--module"),
    (["--no-histograms", "--module", " "], "--module"),
]


@pytest.mark.parametrize("extra,option", BIG_OUTSTATS_CASES, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_outstats_refused_before_any_work(tmp_path: Path, run_dir: Path, extra: list[str], option: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import bnlab.outstats.run as outstats_run

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("outstats started computing before refusing")

    monkeypatch.setattr(outstats_run, "stat_gradients", no_work)
    out = tmp_path / "o"
    args = ["outstats", str(run_dir / "final.pt"), *EVAL, *extra, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out, names=option)


@pytest.mark.parametrize("extra,option", [
    (["--seed", BIG], "--seed"), (["--width", BIG], "--width"), (["--width", "100000"], "--width"),
    (["--inputs", BIG], "--inputs"), (["--depth", BIG], "--depth")], ids=lambda a: " ".join(a) if isinstance(a, list)
    else a)
def test_collapse_huge_numbers(tmp_path: Path, extra: list[str], option: str) -> None:
    out = tmp_path / "c"
    args = ["collapse", "--depth", "3", "--width", "16", "--inputs", "20", "--hist-channels", "2", *extra,
            "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out, names=option)


@pytest.mark.parametrize("grid,option", [(f"seed={BIG}", "--seed"), (f"bs={BIG}", "--batch-size"),
                                         (f"subset={BIG}", "--subset"), (f"width={BIG}", "--width"),
                                         ("bs=2000", "--batch-size")])
def test_sweep_grid_huge_values(tmp_path: Path, grid: str, option: str) -> None:
    out = tmp_path / "s"
    flag = {"bs": "--batch-size", "subset": "--subset", "width": "--width"}.get(grid.split("=")[0])
    base = list(TINY)
    if flag:  # the grid axis replaces TINY's value
        i = base.index(flag)
        del base[i:i + 2]
    args = ["sweep", "--grid", grid, *base, "--epochs", "1", "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out, names=option)


@pytest.mark.parametrize("extra,option", [(["--threads", BIG], "--threads"), (["--jobs", BIG], "--jobs"),
                                          (["--point", BIG], "--point"), (["--point", "1"], "--point")],
                         ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_sweep_huge_options_before_the_folder_exists(tmp_path: Path, extra: list[str], option: str) -> None:
    out = tmp_path / "s"
    args = ["sweep", "--grid", "lr=0.1", *TINY, "--epochs", "1", *extra, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out, names=option)


@pytest.mark.parametrize("extra,option", [(["--jobs", BIG], "--jobs"), (["--threads", BIG], "--threads"),
                                          (["--threads", "0"], "--threads")], ids=lambda a: " ".join(a)
                         if isinstance(a, list) else a)
def test_reproduce_huge_options(tmp_path: Path, extra: list[str], option: str) -> None:
    out = tmp_path / "r"
    args = ["reproduce", "F4b", "--scale", "smoke", *extra, "--out", str(out)]
    assert_refused(CliRunner().invoke(main, args), out, names=option)


def test_freeze_records_the_batch_size_it_used(tmp_path: Path, run_dir: Path) -> None:
    """The run has 512 training images: --batch-size 400 refreshes over one batch of 400 (the rest
    dropped), --batch-size 5000 over one batch of all 512; each records what it used."""
    from bnlab.checkpoint import read_checkpoint

    for asked, used, batches in ((400, 400, 1), (5000, 512, 1)):
        out = tmp_path / f"f{asked}.pt"
        r = CliRunner().invoke(main, ["freeze", str(run_dir / "final.pt"), "--batch-size", str(asked), "-o", str(out)])
        assert r.exit_code == 0, r.output
        frozen = read_checkpoint(out)["frozen"]
        assert (frozen["bn_refresh_batch_size"], frozen["bn_refresh_batches"]) == (used, batches)
        assert f"of {used};" in r.output
