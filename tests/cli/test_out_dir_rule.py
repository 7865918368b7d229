"""One output-folder rule for every command that writes: validate everything first, then prepare the
folder. --force never empties a folder for a command that is then refused; refused commands leave no
empty folders behind; nothing is overwritten without --force; paths that cannot be used are one line."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnlab.cli import main

EVAL = ["--num-samples", "40", "--batch-size", "20", "-q"]


@pytest.fixture(scope="module")
def run_dir(tiny_run: Path) -> Path:
    return tiny_run


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result) -> bool:
    lines = result.stderr.strip().splitlines()
    return result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("bnlab: error:")


def commands_failing_late(run_dir: Path, out: Path) -> dict[str, list[object]]:
    """Per command, an invocation with --force whose problem is found only after options parse."""
    ck = run_dir / "final.pt"
    return {
        "hessian-top-k": ["hessian", ck, *EVAL, "--top-k", -1, "--out", out, "--force"],
        "hessian-samples": ["hessian", ck, *EVAL[2:], "--num-samples", 15, "--batch-size", 20, "--out", out, "--force"],
        "hessian-warm": ["hessian", ck, *EVAL, "--warm-start", run_dir / "metrics.csv", "--out", out, "--force"],
        "hessian-too-many": ["hessian", ck, *EVAL, "--top-k", 10**8, "--out", out, "--force"],
        "outstats-missing": ["outstats", run_dir / "missing.pt", *EVAL, "--out", out, "--force"],
        "outstats-eigvecs": ["outstats", ck, *EVAL, "--eigvecs", run_dir, "--out", out, "--force"],
        "collapse-depth": ["collapse", "--depth", 0, "--out", out, "--force"],
        "train-batch": ["train", "--width", 8, "--dataset", "synthetic", "--batch-size", 100000, "-q", "--out", out,
                        "--force"],
        "dynamics-nolog": ["dynamics", out.parent / "nowhere", "--out", out, "--force"],
    }


@pytest.mark.parametrize("case", ["hessian-top-k", "hessian-samples", "hessian-warm", "hessian-too-many",
                                  "outstats-missing", "outstats-eigvecs", "collapse-depth", "train-batch",
                                  "dynamics-nolog"])
def test_force_never_empties_for_a_refused_command(tmp_path: Path, run_dir: Path, case: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = invoke(*commands_failing_late(run_dir, out)[case])
    assert refused(r), r.output
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("case", ["hessian-top-k", "hessian-too-many", "outstats-eigvecs", "collapse-depth",
                                  "train-batch"])
def test_refused_commands_leave_no_folder(tmp_path: Path, run_dir: Path, case: str) -> None:
    out = tmp_path / "new" / "out"
    r = invoke(*commands_failing_late(run_dir, out)[case])
    assert refused(r), r.output
    assert not out.exists() and not (tmp_path / "new").exists()


def test_no_silent_overwrite(tmp_path: Path, run_dir: Path) -> None:
    d = tmp_path / "d"
    assert invoke("dynamics", run_dir, "--out", d, "-q").exit_code == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    r = invoke("dynamics", run_dir, "--out", d, "-q")
    assert refused(r) and "not empty" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == stamp
    assert invoke("dynamics", run_dir, "--out", d, "-q", "--force").exit_code == 0
    # a sweep folder must be new, empty or hold the same sweep
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = invoke("sweep", "--grid", "lr=0.1", "--width", 8, "--dataset", "synthetic", "--out", other, "--plan-only")
    assert refused(r) and "holds no sweep" in r.stderr
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_paths_that_cannot_be_used(tmp_path: Path, run_dir: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "does-not-exist")
    for out in (afile, dangling):
        assert refused(invoke("sweep", "--grid", "lr=0.1", "--width", 8, "--dataset", "synthetic", "--out", out,
                              "--plan-only"))
        assert refused(invoke("dynamics", run_dir, "--out", out))
        assert refused(invoke("collapse", "--depth", 2, "--width", 8, "--inputs", 10, "--out", out))
    # freeze -o an existing directory, even with --force: refused before the BN refresh
    (tmp_path / "adir").mkdir()
    r = invoke("freeze", run_dir / "final.pt", "-o", tmp_path / "adir", "--force")
    assert refused(r) and "is a directory" in r.stderr


def test_force_with_a_symlink_inside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("outside the output folder")
    (out / "link").symlink_to(target)
    (out / "old.txt").write_text("stale")
    r = invoke("collapse", "--depth", 2, "--width", 8, "--inputs", 10, "--out", out, "--force")
    assert r.exit_code == 0, r.output
    assert (target / "keep.txt").exists()  # the link is removed, not followed
    assert not (out / "link").exists() and not (out / "old.txt").exists() and (out / "collapse.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folders(tmp_path: Path, run_dir: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert refused(invoke("collapse", "--depth", 2, "--width", 8, "--inputs", 10, "--out", ro / "c"))
        assert refused(invoke("freeze", run_dir / "final.pt", "-o", ro / "f.pt"))
    finally:
        ro.chmod(0o700)
