"""A full disk (issue 24, item 9), simulated by writers that raise what the kernel or torch.save raise
then: every command fails with one line, and no result is left that looks complete (the record file
is written last and the files written before it are removed)."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import bnlab.io.torchfile as torchfile
from bnlab.cli import main

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# What torch.save raises when the disk fills up under it (its message spans lines).
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                          "data/0: file write failed\nException raised from write_record at ...")
EVAL = ["--num-samples", "20", "--batch-size", "10", "-q"]
CHEAP_HESSIAN = ["--top-k", "1", "--max-hvps", "4", "--no-verify", *EVAL]


def _disk_full(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def save(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(torchfile.torch, "save", save)


def _one_line(result: Any, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".bnlab.lock") if folder.exists() else []


@pytest.mark.parametrize("error,words", [(ENOSPC, ("No space left on device", "eigvecs.pt")),
                                         (TORCH_FULL, ("eigvecs.pt", "disk full"))], ids=["ENOSPC", "torch"])
def test_hessian_on_a_full_disk(tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch,
                                error: BaseException, words: tuple[str, ...]) -> None:
    _disk_full(monkeypatch, error)
    out = tmp_path / "h"
    r = CliRunner().invoke(main, ["hessian", str(tiny_run / "final.pt"), *CHEAP_HESSIAN, "--out", str(out)])
    _one_line(r, *words)
    assert _leftovers(out) == []  # no hessian.json without its eigvecs.pt, no temp files


def test_a_failing_record_removes_what_was_written_before_it(tmp_path: Path, tiny_run: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """eigvecs.pt is written, then hessian.json fails: eigvecs.pt must not stay behind alone."""
    import bnlab.curvature.hessian as hessian

    def full(path: Path, *a: Any, **k: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(hessian, "write_json", full)
    out = tmp_path / "h"
    r = CliRunner().invoke(main, ["hessian", str(tiny_run / "final.pt"), *CHEAP_HESSIAN, "--out", str(out)])
    _one_line(r, "hessian.json", "No space left on device")
    assert _leftovers(out) == []


def test_freeze_on_a_full_disk(tmp_path: Path, tiny_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full(monkeypatch, TORCH_FULL)
    out = tmp_path / "frozen.pt"
    _one_line(CliRunner().invoke(main, ["freeze", str(tiny_run / "final.pt"), "-o", str(out)]), "frozen.pt",
              "disk full")
    assert _leftovers(tmp_path) == []


def test_collapse_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full(monkeypatch, ENOSPC)
    out = tmp_path / "c"
    r = CliRunner().invoke(main, ["collapse", "--depth", "3", "--width", "16", "--inputs", "20", "--hist-channels",
                                  "2", "--out", str(out)])
    _one_line(r, "collapse_values.pt", "No space left on device")
    assert _leftovers(out) == []


def test_json_writer_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bnlab.errors import BnlabError
    from bnlab.io.jsonfile import write_json

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("bnlab.io.jsonfile.os.fsync", full)
    with pytest.raises(BnlabError, match="cannot write .*x.json: No space left on device; free some space"):
        write_json(tmp_path / "x.json", {"a": 1})
    assert _leftovers(tmp_path) == []  # neither the file nor its temp file


def test_sweep_on_a_full_disk_is_one_line_per_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _disk_full(monkeypatch, TORCH_FULL)
    out = tmp_path / "s"
    r = CliRunner().invoke(main, ["sweep", "--grid", "lr=0.1", "--width", "4", "--dataset", "synthetic", "--set",
                                  "synthetic_train=128", "--set", "synthetic_test=20", "--batch-size", "64",
                                  "--epochs", "1", "--retries", "0", "-q", "-j", "1", "--no-summary",
                                  "--out", str(out)])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr  # the point's failure, then the command's one-line error
    assert lines[0].startswith("point 0 failed: cannot write") and "disk full" in lines[0]
    assert lines[1].startswith("bnlab: error: 1 point(s) failed")
    assert "Traceback" not in r.stderr and "RuntimeError" not in r.stderr
    assert not (out / "points" / "lr=0.1" / "final.pt").exists()


@pytest.mark.parametrize("writer", ["text", "csv", "dict_rows"])
def test_text_and_csv_writers_on_a_full_disk(writer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every text file (CSV logs, metrics, reports) goes through bnlab.io.textfile: whole or not at all."""
    from bnlab.errors import BnlabError
    from bnlab.io import textfile

    calls = {"text": lambda p: textfile.write_text(p, "a,b\n1,2\n"),
             "csv": lambda p: textfile.write_csv(p, ["a", "b"], [(1, 2)]),
             "dict_rows": lambda p: textfile.write_dict_rows(p, ["a", "b"], [{"a": 1, "b": 2, "extra": 3}])}
    path = calls[writer](tmp_path / "ok.csv")
    assert path.read_text().splitlines() == ["a,b", "1,2"]  # the same bytes from each writer

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("bnlab.io.textfile.os.fsync", full)
    with pytest.raises(BnlabError, match="cannot write .*x.csv: No space left on device; free some space"):
        calls[writer](tmp_path / "x.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.csv"]  # neither the file nor its temp file
