"""`bnlab reproduce --merge`: parts run separately (here the weight-decay finding F4b and the batch-norm
finding F5, at smoke scale) make one report; parts that do not belong together are refused in one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.findings.registry import IDS
from bnlab.reproduce.merge import part_files

PART_MAX_BYTES = 2_000_000  # a part's record (report.json + figures) is brought back from a leased machine


def bnlab(*args: object) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("parts")
    bnlab("reproduce", "F4b", "--scale", "smoke", "--out", root / "wd", "-q")
    bnlab("reproduce", "F5", "--scale", "smoke", "--out", root / "bn", "-q")
    records = {}
    for name in ("wd", "bn"):  # only the record travels: report.json and the figures' PNGs
        for path in part_files(root / name):
            target = root / f"{name}_record" / path.relative_to(root / name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        records[name] = root / f"{name}_record"
    return records["wd"], records["bn"]


def test_parts_merge_into_one_report(parts: tuple[Path, Path], tmp_path: Path) -> None:
    wd, bn = parts
    for part in parts:
        assert sum(p.stat().st_size for p in part.rglob("*") if p.is_file()) < PART_MAX_BYTES
    out = tmp_path / "merged"
    bnlab("reproduce", "--merge", wd, bn, "--out", out)
    rec = json.loads((out / "report.json").read_text())
    verdicts = {f["id"]: f["verdict"] for f in rec["findings"]}
    assert [f["id"] for f in rec["findings"]] == list(IDS)
    assert verdicts["F4b"] != "NOT RUN" and verdicts["F5"] != "NOT RUN"
    assert {v for k, v in verdicts.items() if k not in ("F4b", "F5")} == {"NOT RUN"}
    assert rec["requested"] == ["F4b", "F5"] and [p["folder"] for p in rec["parts"]] == [str(wd), str(bn)]
    for fid, part in (("F4b", wd), ("F5", bn)):
        f = next(f for f in rec["findings"] if f["id"] == fid)
        assert f["part"] == str(part) and (out / f["figure"]).read_bytes() == (part / f["figure"]).read_bytes()
    md = (out / "report.md").read_text()
    assert "Merged from 2 parts" in md and "![F5](figures/F5.png)" in md
    assert (out / "report.html").read_text().count('src="data:image/png;base64,') == 2


def _edited(part: Path, tmp_path: Path, name: str, edit) -> Path:  # noqa: ANN001
    copy = tmp_path / name
    shutil.copytree(part, copy)
    rec = json.loads((copy / "report.json").read_text())
    edit(rec)
    (copy / "report.json").write_text(json.dumps(rec))
    return copy


def _flip_f4b(rec: dict) -> None:
    f = next(f for f in rec["findings"] if f["id"] == "F4b")
    f["verdict"] = "PASS" if f["verdict"] != "PASS" else "FAIL"


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(scale="cpu"), "parts of different scales"),
    (lambda r: r["provenance"]["versions"].update(bnlab="0.0.1"), "parts of different bnlab versions"),
    (lambda r: r["provenance"]["data"].update(fingerprint="other"), "parts of different data"),
    (_flip_f4b, "F4b decided differently by the parts"),
])
def test_parts_that_do_not_belong_together_are_refused(parts: tuple[Path, Path], tmp_path: Path, edit,  # noqa: ANN001
                                                       message: str) -> None:
    wd, _ = parts
    other = _edited(wd, tmp_path, "other", edit)
    out = tmp_path / "merged"
    r = CliRunner().invoke(main, ["reproduce", "--merge", str(wd), str(other), "--out", str(out)])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_a_folder_without_a_report_is_refused(parts: tuple[Path, Path], tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["reproduce", "--merge", str(parts[0]), str(tmp_path), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "holds no report.json" in r.output, r.output
    r = CliRunner().invoke(main, ["reproduce", "--merge", str(parts[0]), "--out", str(parts[0])])
    assert r.exit_code == 2 and "is one of the parts" in r.output, r.output
