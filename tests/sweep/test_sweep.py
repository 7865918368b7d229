"""bnlab.sweep: grid parsing, resume (skip finished, resume crashed), summary = the individual runs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.dynamics import analyse_run
from bnlab.errors import BnlabError
from bnlab.sweep import (
    Grid,
    format_summary,
    parse_grid,
    point_dir,
    prepare_sweep_dir,
    read_grid_file,
    run_sweep,
    summarise_sweep,
)
from bnlab.train import train

BASE = dict(width=2, dataset="synthetic", synthetic_train=256, synthetic_test=100, batch_size=64, epochs=2,
            lr_schedule="const", momentum=0.9)


def test_parse_grid() -> None:
    axes = parse_grid("lr=0.1,0.2,0.4 wd=1.25e-4,2.5e-4,5e-4 momentum=0.9 nesterov=false")
    assert axes == [("lr", [0.1, 0.2, 0.4]), ("weight_decay", [1.25e-4, 2.5e-4, 5e-4]), ("momentum", [0.9]),
                    ("nesterov", [False])]
    g = Grid(axes=axes, base={"width": 2, "dataset": "synthetic"})
    pts = g.points()
    assert len(pts) == 9 and pts[1].name == "lr=0.1_weight_decay=0.00025_momentum=0.9_nesterov=False"
    assert g.config(pts[5]).lr == 0.2 and g.config(pts[5]).weight_decay == 5e-4
    for bad, msg in [("lr=0.1 bogus=1", "unknown grid key"), ("lr", "expected key=v1"), ("lr=x", "bad value"),
                     ("lr=0.1 lr=0.2", "twice"), ("", "empty grid")]:
        with pytest.raises(BnlabError, match=msg):
            parse_grid(bad)


def test_grid_file_roundtrip(tmp_path: Path) -> None:
    g = Grid(axes=parse_grid("lr=0.1,0.2 wd=5e-4"), base={"width": 2, "dataset": "synthetic"}, variant="bn")
    (tmp_path / "grid.json").write_text(json.dumps(g.to_dict()))
    g2 = read_grid_file(tmp_path / "grid.json")
    assert [p.name for p in g2.points()] == [p.name for p in g.points()]
    assert g2.config(g2.points()[1]) == g.config(g.points()[1])


def test_sweep_resume_and_summary(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "sw"
    grid = Grid(axes=parse_grid("lr=0.1,0.2 wd=5e-3"), base=BASE, variant="bn")
    pts = grid.points()
    # point 1 "crashed" after its first epoch: a resumable run directory with last.pt
    prepare_sweep_dir(grid, out)
    train(grid.config(pts[1]), point_dir(out, pts[1]), device="cpu", quiet=True, stop_after_epoch=1)
    first = run_sweep(grid, out, device="cpu", quiet=True, only=[0])
    assert first.ran == {0: "finished"} and not first.failed
    assert torch.get_num_threads() == 1  # an in-process point does not leave its thread count behind
    stamp = (point_dir(out, pts[0]) / "final.pt").stat().st_mtime_ns
    second = run_sweep(grid, out, device="cpu", quiet=True)
    assert second.skipped == [0] and second.ran == {1: "finished"}
    assert (point_dir(out, pts[0]) / "final.pt").stat().st_mtime_ns == stamp  # not retrained
    metrics1 = list(csv.DictReader(open(point_dir(out, pts[1]) / "metrics.csv")))
    assert [int(r["epoch"]) for r in metrics1] == [1, 2]  # resumed, not restarted
    third = run_sweep(grid, out, device="cpu", quiet=True)
    assert third.skipped == [0, 1] and not third.ran

    s = summarise_sweep(out, grid)
    for p, row in zip(pts, s["points"]):
        rd = point_dir(out, p)
        last = list(csv.DictReader(open(rd / "metrics.csv")))[-1]
        assert row["status"] == "finished" and row["test_acc"] == pytest.approx(float(last["test_acc"]))
        assert row["train_loss"] == pytest.approx(float(last["train_loss"]))
        rep = analyse_run(rd, check_checkpoint=False)
        inv = [r for r in rep.layers if r.scale_invariant]
        assert row["n_invariant"] == len(inv) > 0
        assert row["angle"] == pytest.approx(sum(r.angle for r in inv) / len(inv))
        clf = rep.layer("classifier.weight").w_norm_final
        assert row["layers"]["classifier.weight"]["w_norm"] == pytest.approx(clf)
    assert [g["lr_wd"] for g in s["groups_lr_wd"]] == pytest.approx([5e-4, 1e-3])
    # 8 steps each: 8 * 4 lr wd / (1 - mu) = 0.16 and 0.32 relaxation times, far too short: one warning line
    assert [r["relaxation_times"] for r in s["points"]] == pytest.approx([8 * 4 * lr * 5e-3 / 0.1 for lr in (0.1, 0.2)])
    text = format_summary(s)
    warn = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "2 point(s) ran fewer than 3 relaxation times" in warn[0] and "0.2..0.3" in warn[0]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["name"] for r in rows] == [p.name for p in pts]

    # a different grid into the same directory is refused
    with pytest.raises(BnlabError, match="different grid"):
        run_sweep(Grid(axes=parse_grid("lr=0.3 wd=5e-3"), base=BASE), out, quiet=True)


def test_cli_plan_and_errors(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["sweep", "--grid", "lr=0.1,0.2 wd=5e-4,1e-3", "--width", "2", "--dataset",
                                  "synthetic", "--out", str(tmp_path / "s"), "--plan-only"])
    assert r.exit_code == 0, r.output
    assert "3\tlr=0.2_weight_decay=0.001" in r.output
    assert json.loads((tmp_path / "s" / "grid.json").read_text())["format"] == "bnlab-sweep-grid"
    r = CliRunner().invoke(main, ["sweep", "--grid", "lr=0.1 colour=red", "--out", str(tmp_path / "t")])
    assert r.exit_code == 2 and "bnlab: error: unknown grid key 'colour'" in r.output
    r = CliRunner().invoke(main, ["sweep", "--grid-file", str(tmp_path / "s" / "grid.json"), "--out",
                                  str(tmp_path / "s"), "--point", "7", "--no-summary"])
    assert r.exit_code == 2 and "out of range" in r.output


def test_retries_resume_a_crashed_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--retries: a point whose training raises is retried (resumed from its last.pt); without retries it is
    reported as crashed with the error, and a rerun finishes it."""
    import bnlab.sweep.runner as runner

    torch.set_num_threads(1)
    real = runner.train
    calls = []

    def flaky(config, out, **kw):  # crash once, after the first epoch was committed
        calls.append(kw.get("resume", False))
        if len(calls) == 1:
            real(config, out, **{**kw, "stop_after_epoch": 1})
            raise RuntimeError("node lost")
        return real(config, out, **kw)

    monkeypatch.setattr(runner, "train", flaky)
    grid = Grid(axes=parse_grid("lr=0.1 wd=5e-3"), base={**BASE, "width": 2}, variant="bn")
    res = run_sweep(grid, tmp_path / "a", device="cpu", quiet=True, retries=1)
    assert res.ran == {0: "finished"} and not res.failed and calls == [False, True]
    metrics = list(csv.DictReader(open(point_dir(tmp_path / "a", grid.points()[0]) / "metrics.csv")))
    assert [int(r["epoch"]) for r in metrics] == [1, 2]  # resumed, not restarted
    calls.clear()
    res = run_sweep(grid, tmp_path / "b", device="cpu", quiet=True, retries=0)
    assert res.failed == {0: "RuntimeError: node lost"} and not res.ran
    res = run_sweep(grid, tmp_path / "b", device="cpu", quiet=True, retries=0)
    assert res.ran == {0: "finished"}


def test_parallel_jobs_match_serial_points(tmp_path: Path) -> None:
    """--jobs 2: two points trained in separate processes (1 thread each) end exactly where the same points
    trained here with 1 thread end."""
    from bnlab.sweep import run_point

    grid = Grid(axes=parse_grid("lr=0.1,0.2 wd=5e-3"), base={**BASE, "width": 2, "epochs": 1}, variant="bn")
    res = run_sweep(grid, tmp_path / "par", device="cpu", quiet=True, jobs=2)
    assert res.ran == {0: "finished", 1: "finished"} and not res.failed
    (tmp_path / "ser").mkdir()
    for p in grid.points():
        assert run_point(grid.config(p).to_dict(), str(tmp_path / "ser" / p.name), "cpu", 1, 0, True) == ("finished",
                                                                                                         "ran")
        a = torch.load(point_dir(tmp_path / "par", p) / "final.pt", weights_only=True)["model"]
        b = torch.load(tmp_path / "ser" / p.name / "final.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), p.name
