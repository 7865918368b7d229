"""--out (with --force) never touches an input: every command, against every input path it reads.

For each command and each of its inputs (checkpoint, run directory, data folder, eigenvectors, warm
start), the output is made equal to the input, its parent, its child, a symbolic link to it, or the
input is named through a symbolic link. Every such command is refused with one line, before any work
(loading data, building the evaluation set, training: patched here to fail the test), and every file
of the workspace, sentinels included, is still there, byte for byte. (A hessian folder given as
--eigvecs/--warm-start stands for the eigvecs.pt in it, the file read: a new folder inside it is allowed.)
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.config import make_config
from bnlab.rundir import check_out_dir
from bnlab.train import train
from conftest import write_cifar_folder

EVAL = ["--num-samples", "20", "--batch-size", "10", "-q"]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result) -> bool:
    lines = result.stderr.strip().splitlines()
    return result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("bnlab: error:")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root (links not followed) with its content hash: what must survive."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> dict[str, Path]:
    """Inputs made once: a CIFAR-format data folder, a width-4 run trained on it (one epoch, with
    ckpt_epoch_001.pt for a series) and a hessian output (eigvecs.pt) of its final checkpoint."""
    root = tmp_path_factory.mktemp("ws")
    data = write_cifar_folder(root / "d", per_batch=20)
    run = root / "run"
    train(make_config("bn", width=4, data_dir=str(data), epochs=1, batch_size=50, save_every=1, log_every=1),
          run, quiet=True)
    hess = root / "hess"
    r = invoke("hessian", run / "final.pt", "--top-k", 1, "--no-verify", *EVAL, "--out", hess)
    assert r.exit_code == 0, r.output
    for d in (data, run, hess):
        (d / "sentinel.txt").write_text("must survive")
    return {"root": root, "data": data, "run": run, "ckpt": run / "final.pt", "hess": hess}


@pytest.fixture(autouse=True)
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusals come before any work: the first step of each command's work fails the test."""
    def work(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("work started before the output was checked against the inputs")

    for target in ("bnlab.train.load_data", "bnlab.freeze.load_data", "bnlab.cli.common.build_context",
                   "bnlab.cli.hessian.run_hessian_series", "bnlab.cli.dynamics.run_dynamics",
                   "bnlab.sweep.runner.train", "bnlab.sweep.runner.write_json", "bnlab.reproduce.run._run_stages"):
        monkeypatch.setattr(target, work)


# command -> (its inputs, argv from {input name: path as given} and the output)
Argv = Callable[[dict[str, Path], Path], list[object]]
COMMANDS: dict[str, tuple[tuple[str, ...], Argv]] = {
    "train": (("data",), lambda i, o: ["train", "--width", 4, "--epochs", 1, "--batch-size", 50, "-q",
                                       "--data-dir", i["data"], "--out", o, "--force"]),
    "hessian": (("ckpt", "data", "hess"), lambda i, o: ["hessian", i["ckpt"], "--top-k", 1, *EVAL, "--data-dir",
                                                        i["data"], "--warm-start", i["hess"], "--out", o, "--force"]),
    "hessian-series": (("run", "data"), lambda i, o: ["hessian", i["run"], "--top-k", 1, *EVAL, "--data-dir",
                                                      i["data"], "--out", o, "--force"]),
    "hessian-recorded-data": (("data",), lambda i, o: ["hessian", i["ckpt"], "--top-k", 1, *EVAL, "--out", o,
                                                       "--force"]),
    "outstats": (("ckpt", "data", "hess"), lambda i, o: ["outstats", i["ckpt"], *EVAL, "--eigvecs", i["hess"],
                                                         "--data-dir", i["data"], "--no-histograms", "--out", o,
                                                         "--force"]),
    "dynamics": (("run",), lambda i, o: ["dynamics", i["run"], "-q", "--out", o, "--force"]),
    "sweep": (("data",), lambda i, o: ["sweep", "--grid", "lr=0.1", "--width", 4, "--epochs", 1, "--data-dir",
                                       i["data"], "-q", "--out", o]),
    "reproduce": (("data",), lambda i, o: ["reproduce", "F1", "--scale", "cpu", "--data-dir", i["data"], "-q",
                                           "--no-figures", "--out", o, "--force"]),
}
RELATIONS = ("equal", "parent", "child", "link-to-input", "input-through-link")


def cases() -> list[tuple[str, str, str]]:
    return [(c, name, rel) for c, (names, _) in COMMANDS.items() for name in names for rel in RELATIONS
            if not (name in ("ckpt", "hess") and rel == "child")  # inputs read as one file: nothing lies inside
            and not (c == "hessian-recorded-data" and rel == "input-through-link")]  # no option names it


@pytest.mark.parametrize("command, name, relation", cases())
def test_output_against_every_input_is_refused(ws: dict[str, Path], tmp_path: Path, command: str, name: str,
                                               relation: str) -> None:
    names, argv = COMMANDS[command]
    given = {k: ws[k] for k in ("data", "run", "ckpt", "hess")}
    target = ws[name]
    out = {"equal": target, "parent": target.parent, "child": target / "new",
           "link-to-input": tmp_path / "link", "input-through-link": target}[relation]
    if relation == "link-to-input":
        out.symlink_to(target)
    if relation == "input-through-link":
        (tmp_path / "via").symlink_to(target)
        given[name] = tmp_path / "via"
    before = snapshot(ws["root"])
    r = invoke(*argv(given, out))
    assert refused(r), r.output
    assert "input" in r.stderr, r.stderr  # refused for touching an input, not for something else
    assert snapshot(ws["root"]) == before


@pytest.mark.parametrize("relation", ["equal", "link-to-input", "input-through-link", "data-child", "data-link"])
def test_freeze_never_writes_over_its_inputs(ws: dict[str, Path], tmp_path: Path, relation: str) -> None:
    ckpt, data = ws["ckpt"], ws["data"]
    if relation == "link-to-input":
        (tmp_path / "link.pt").symlink_to(ckpt)
    if relation in ("input-through-link", "data-link"):
        (tmp_path / "via").symlink_to(ckpt if relation == "input-through-link" else data)
    out = {"equal": ckpt, "link-to-input": tmp_path / "link.pt", "input-through-link": ckpt,
           "data-child": data / "frozen.pt", "data-link": tmp_path / "via" / "frozen.pt"}[relation]
    given = tmp_path / "via" if relation == "input-through-link" else ckpt
    before = snapshot(ws["root"])
    r = invoke("freeze", given, "-o", out, "--force", "--data-dir", data)
    assert refused(r) and "input" in r.stderr, r.output
    assert snapshot(ws["root"]) == before


def test_resume_of_a_run_whose_data_lies_inside_it_is_refused(ws: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A run interrupted, then its data folder moved into the run directory (reached through a link)."""
    monkeypatch.undo()  # this test trains one epoch of its own
    run, moved = tmp_path / "run", tmp_path / "run" / "data"
    data = write_cifar_folder(tmp_path / "d", per_batch=20)
    train(make_config("bn", width=4, data_dir=str(data), epochs=2, batch_size=50, log_every=0), run, quiet=True,
          stop_after_epoch=1)
    data.rename(moved)
    data.symlink_to(moved)
    before = snapshot(tmp_path)
    r = invoke("train", "--resume", run, "-q")
    assert refused(r) and "input" in r.stderr, r.output
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- empty --out
EMPTY_OUT = {
    "train": ["train", "--width", 4, "--dataset", "synthetic", "-q", "--out", "", "--force"],
    "train-resume": ["train", "--resume", ""],
    "hessian": ["hessian", "CKPT", *EVAL, "-o", "", "--force"],
    "outstats": ["outstats", "CKPT", *EVAL, "-o", "", "--force"],
    "dynamics": ["dynamics", "RUN", "-o", "", "--force"],
    "freeze": ["freeze", "CKPT", "-o", "", "--force"],
    "collapse": ["collapse", "--depth", 2, "--width", 4, "--hist-channels", 2, "-o", "", "--force"],
    "sweep": ["sweep", "--grid", "lr=0.1", "--dataset", "synthetic", "-o", ""],
    "sweep-dir": ["sweep", "", "--grid", "lr=0.1", "--dataset", "synthetic"],
    "reproduce": ["reproduce", "F1", "--scale", "smoke", "-o", "", "--force"],
}


@pytest.mark.parametrize("command", sorted(EMPTY_OUT))
def test_an_empty_output_path_is_refused_and_touches_nothing(ws: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """An unset shell variable (`--out "$OUT"`) must not mean the current directory."""
    here = tmp_path / "cwd"
    (here / "sub").mkdir(parents=True)
    (here / "sub" / "mine.txt").write_text("keep")
    monkeypatch.chdir(here)
    args = [{"CKPT": ws["ckpt"], "RUN": ws["run"]}.get(a, a) if isinstance(a, str) else a
            for a in EMPTY_OUT[command]]
    before = snapshot(here)
    r = invoke(*args)
    assert refused(r), r.output
    assert snapshot(here) == before


@pytest.mark.parametrize("api", ["check_out_dir", "claim_out_dir", "freeze_checkpoint", "train"])
def test_the_python_api_refuses_an_empty_output_path_too(ws: dict[str, Path], api: str) -> None:
    from bnlab.errors import BnlabError
    from bnlab.freeze import freeze_checkpoint
    from bnlab.rundir import claim_out_dir

    calls = {"check_out_dir": lambda: check_out_dir("", force=True),
             "claim_out_dir": lambda: claim_out_dir("", force=True).__enter__(),
             "freeze_checkpoint": lambda: freeze_checkpoint(ws["ckpt"], "", force=True),
             "train": lambda: train(make_config("bn", width=4, dataset="synthetic"), "", force=True)}
    with pytest.raises(BnlabError, match="output path is empty"):
        calls[api]()


# ---------------------------------------------------------------------------- what --force never empties
@pytest.mark.parametrize("where", ["cwd", "parent-of-cwd", "home", "parent-of-home", "mount"])
def test_force_never_empties_the_working_directory_home_or_a_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  where: str) -> None:
    home, cwd, mount = tmp_path / "home" / "me", tmp_path / "work" / "here", tmp_path / "mnt"
    for d in (home, cwd, mount):
        d.mkdir(parents=True)
        (d / "mine.txt").write_text("keep")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(mount.resolve()) or real_ismount(p))
    out = {"cwd": cwd, "parent-of-cwd": cwd.parent, "home": home, "parent-of-home": home.parent,
           "mount": mount}[where]
    before = snapshot(tmp_path)
    r = invoke("collapse", "--depth", 2, "--width", 4, "--inputs", 8, "--hist-channels", 2, "--out", out, "--force")
    assert refused(r) and "--force would empty" in r.stderr, r.output
    assert snapshot(tmp_path) == before


def test_force_refuses_the_filesystem_root() -> None:
    from bnlab.errors import BnlabError

    with pytest.raises(BnlabError, match="--force would empty"):
        check_out_dir("/", force=True)  # touches nothing: only the check, never a command


def test_a_series_refuses_a_warm_start_before_force_empties(ws: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = invoke("hessian", ws["run"], "--top-k", 1, *EVAL, "--warm-start", ws["hess"], "--out", out, "--force")
    assert refused(r) and "automatic along a series" in r.stderr, r.output
    assert (out / "precious.txt").read_text() == "keep me"
