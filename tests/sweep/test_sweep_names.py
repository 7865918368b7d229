"""Sweep point folders: one safe, lossless path component per point, collisions and repeats refused before
anything is written, and a point folder the sweep did not make is refused, never emptied."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.errors import BnlabError
from bnlab.sweep import Grid, parse_grid, point_dir, prepare_sweep_dir, read_grid_file, run_sweep
from bnlab.sweep.summary import angle_spread, group_rows

TINY = ["--set", "dataset=synthetic", "--set", "synthetic_train=256", "--set", "synthetic_test=64", "--width", "2",
        "--epochs", "1", "--batch-size", "64", "-j", "1", "-q"]
BASE = dict(width=2, dataset="synthetic", synthetic_train=256, synthetic_test=64, batch_size=64, epochs=1)


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result) -> bool:
    lines = result.stderr.strip().splitlines()
    return result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("bnlab: error:")


@pytest.mark.parametrize("spec, names", [
    ("lr=0.1 wd=5e-4", ["lr=0.1_weight_decay=0.0005"]),  # the usual names are unchanged
    ("lr=0.1234561,0.1234562", ["lr=0.1234561", "lr=0.1234562"]),  # '%g' would give both 'lr=0.123456'
    ("data_dir=foo,foo/../../../precious", ["data_dir=foo", "data_dir=foo%2F..%2F..%2F..%2Fprecious"]),
    ("data_dir=a%2Fb,a/b", ["data_dir=a%252Fb", "data_dir=a%2Fb"]),  # '%' itself encoded: still two names
    ("lr_mults=0:1:0,0:0.5:0", ["lr_mults=0:1:0", "lr_mults=0:0.5:0"]),
])
def test_point_names_are_one_safe_lossless_component(tmp_path: Path, spec: str, names: list[str]) -> None:
    grid = Grid(axes=parse_grid(spec))
    points = grid.points()
    assert [p.name for p in points] == names
    for p in points:
        d = point_dir(tmp_path, p)
        assert d.parent == tmp_path / "points" and d.resolve().parent == (tmp_path / "points").resolve()
    lrs = [p.overrides["lr"] for p in points if "lr" in p.overrides]
    assert [float(p.name.partition("=")[2].split("_")[0]) for p in points if "lr" in p.overrides] == lrs  # exactly


@pytest.mark.parametrize("spec, msg", [
    ("lr=0.1,0.1", "lists the value 0.1 twice"),
    ("lr=0.1,0.10", "lists the value 0.1 twice"),
    ("seed=1,01", "lists the value 1 twice"),
    ("data_dir=Data,data", "would share the folder"),  # one folder on a case-insensitive file system
    ("data_dir=" + "x" * 300, "bytes"),
])
def test_names_that_would_clash_are_refused_before_anything_is_written(tmp_path: Path, spec: str, msg: str) -> None:
    out = tmp_path / "sweep"
    r = invoke("sweep", "--grid", spec, *TINY, "--out", out)
    assert refused(r) and msg in r.stderr, r.output
    assert not out.exists()


def test_crafted_values_that_join_to_one_name_are_refused() -> None:
    # '_' joins the axes, so crafted values can spell the same name from different points
    grid = Grid(axes=[("data_dir", ["x_lr_schedule=y", "x"]), ("lr_schedule", ["const", "y_lr_schedule=const"])])
    with pytest.raises(BnlabError, match="grid points 0 and 3 would share the folder"):
        grid.validate()


def test_an_edited_grid_file_with_a_repeated_value_is_refused(tmp_path: Path) -> None:
    d = Grid(axes=parse_grid("lr=0.1,0.2"), base=BASE).to_dict()
    d["axes"] = [["lr", [0.1, 0.1]]]
    (tmp_path / "grid.json").write_text(json.dumps(d))
    with pytest.raises(BnlabError, match="twice"):
        read_grid_file(tmp_path / "grid.json").validate()


def test_a_value_with_dot_dots_trains_inside_the_sweep_and_leaves_the_outside_alone(tmp_path: Path) -> None:
    """The issue's case: point 1's old name walked '..' out of points/ and emptied a folder there."""
    torch.set_num_threads(1)
    out = tmp_path / "a" / "G"
    precious = tmp_path / "a" / "precious"  # where points/foo/../../../precious led
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("years of work")
    r = invoke("sweep", "--grid", "data_dir=foo,foo/../../../precious", *TINY, "--no-summary", "--out", out)
    assert r.exit_code == 0, r.output
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]
    runs = sorted(p.name for p in (out / "points").iterdir() if p.is_dir())
    assert runs == ["data_dir=foo", "data_dir=foo%2F..%2F..%2F..%2Fprecious"]
    assert all((out / "points" / n / "final.pt").is_file() for n in runs)


@pytest.fixture
def planned(tmp_path: Path) -> tuple[Grid, Path]:
    grid = Grid(axes=parse_grid("lr=0.1,0.2"), base=BASE)
    prepare_sweep_dir(grid, tmp_path / "G")
    return grid, tmp_path / "G"


def test_a_point_folder_the_sweep_did_not_make_is_refused_not_emptied(planned: tuple[Grid, Path],
                                                                      tmp_path: Path) -> None:
    grid, out = planned
    p0, p1 = grid.points()
    point_dir(out, p0).mkdir()
    (point_dir(out, p0) / "notes.txt").write_text("mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_text("mine too")
    (elsewhere / "status.json").write_text(json.dumps({"status": "finished"}))  # not credited to the sweep
    point_dir(out, p1).symlink_to(elsewhere, target_is_directory=True)
    res = run_sweep(grid, out, quiet=True)
    assert not res.ran and sorted(res.failed) == [0, 1]
    assert "holds files but no training run" in res.failed[0] and "symbolic link" in res.failed[1]
    assert (point_dir(out, p0) / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(point_dir(out, p0))) == ["notes.txt"]
    assert sorted(os.listdir(elsewhere)) == ["data.bin", "status.json"]
    assert (elsewhere / "data.bin").read_text() == "mine too"


def test_a_points_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    grid = Grid(axes=parse_grid("lr=0.1"), base=BASE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "G").mkdir()
    (tmp_path / "G" / "points").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BnlabError, match="not a folder of this sweep"):
        prepare_sweep_dir(grid, tmp_path / "G")
    assert not (tmp_path / "G" / "grid.json").exists() and not any(elsewhere.iterdir())


def test_a_point_killed_before_its_first_epoch_restarts_and_keeps_other_files(planned: tuple[Grid, Path]) -> None:
    """The sweep's own folder (config.json, no last.pt yet) is restarted as a resume: nothing is emptied."""
    torch.set_num_threads(1)
    grid, out = planned
    p0 = grid.points()[0]
    rd = point_dir(out, p0)
    rd.mkdir()
    (rd / "config.json").write_text(json.dumps(grid.config(p0).to_dict()))
    (rd / "notes.txt").write_text("mine")
    res = run_sweep(grid, out, quiet=True, only=[0])
    assert res.ran == {0: "finished"} and not res.failed
    assert (rd / "final.pt").is_file() and (rd / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("angles, spread", [
    ([0.0, 0.0], 1.0),  # a run whose lr ends at 0 (one epoch, piecewise schedule) has angle 0
    ([0.0, 1e-3], None), ([2e-3, 1e-3], 2.0), ([1e-3, float("nan")], None), ([1e-3], None), ([], None),
])
def test_angle_spread(angles: list[float], spread: float | None) -> None:
    assert angle_spread(angles) == spread
    rows = [{"name": f"p{i}", "lr_wd": 1e-4, "angle": a} for i, a in enumerate(angles)]
    assert [g["angle_spread"] for g in group_rows(rows, "lr_wd")] == ([spread] if rows else [])


def test_a_seed_sweep_writes_its_summary(tmp_path: Path) -> None:
    """`sweep --grid "seed=0,1"`: two points with equal lr*wd and angle 0 crashed the summary."""
    torch.set_num_threads(1)
    out = tmp_path / "s"
    r = invoke("sweep", "--grid", "seed=0,1", *TINY, "--out", out)
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert [p["status"] for p in s["points"]] == ["finished", "finished"]
    assert s["groups_lr_wd"][0]["n"] == 2 and s["groups_lr_wd"][0]["angle_spread"] == 1.0
