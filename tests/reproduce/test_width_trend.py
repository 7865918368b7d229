"""The width trend's plumbing (`bnlab reproduce F7 F9 --widths ...`) at smoke scale, widths 2 and 3: each width
is an ordinary reproduction folder with the simple nets at that width, a rerun reuses them, the table holds
what the per-width reports and stage files hold, the figure has one point per width, bad input is one line."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.errors import BnlabError
from bnlab.reproduce.merge import merge_reports
from bnlab.reproduce.plan import SETTINGS, build_plan, needed_stages
from bnlab.reproduce.run import ReproduceOptions
from bnlab.reproduce.trend import TREND_FILE, trend_costs, width_folder, width_trend
from bnlab.reproduce.trend_report import table, trend_figure

WIDTHS = (2, 3)


@pytest.fixture(scope="module")
def trend(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trend") / "t"
    # serial, in this process, no per-width figures: the smallest cost (about 25 s on 2 loaded cores)
    result = width_trend(out, WIDTHS, scale="smoke", jobs=1, figures=False, quiet=True)
    return out, result.record


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _stage_out(folder: Path, report: dict, name: str) -> Path:
    stage = next(s for s in report["stages"] if s["name"] == name)
    return folder / stage["folder"] / "out"


def test_each_width_is_an_ordinary_reproduction(trend: tuple[Path, dict]) -> None:
    out, _ = trend
    smoke = SETTINGS["smoke"]["bn_post"]
    for w in WIDTHS:
        folder = width_folder(out, w)
        assert _read(folder / "reproduce.json")["format"] == "bnlab-reproduce"
        rep = _read(folder / "report.json")
        assert rep["scale"] == "smoke" and rep["overrides"] == {"bn_post.width": w}
        assert rep["requested"] == ["F7", "F9"]
        # exactly the stages F7 and F9 read, at this width; everything else as smoke says
        opts = ReproduceOptions(targets=("F7", "F9"), scale="smoke", simple_width=w)
        assert {s["name"] for s in rep["stages"]} == set(needed_stages(build_plan("smoke", opts.settings()),
                                                                       ("F7", "F9")))
        for variant in ("bn", "no_bn"):
            st = _read(folder / next(s["folder"] for s in rep["stages"] if s["name"] == f"train_simple_{variant}")
                       / "stage.json")
            assert st["settings"]["width"] == w
            assert {k: st["settings"][k] for k in ("epochs", "batch_size")} == {k: smoke[k] for k in
                                                                                ("epochs", "batch_size")}
        assert "Scale settings replaced (the rest as the scale says): bn_post.width = " f"{w}." in \
            (folder / "report.md").read_text()
    assert SETTINGS["smoke"]["bn_post"]["width"] == smoke["width"] == 2  # the scale's own settings untouched


def test_rows_are_what_the_reports_and_stage_files_hold(trend: tuple[Path, dict]) -> None:
    out, record = trend
    assert _read(out / TREND_FILE) == record and record["status"] == "done"
    assert [r["width"] for r in record["rows"]] == list(WIDTHS)
    lines = table(record).splitlines()
    for row, line in zip(record["rows"], lines[2:]):
        folder = width_folder(out, row["width"])
        rep = _read(folder / "report.json")
        by_id = {f["id"]: f for f in rep["findings"]}
        assert row["verdicts"] == {"F7": by_id["F7"]["verdict"], "F9": by_id["F9"]["verdict"]}
        # the classifier share recomputed from the stage's outstats.json: the mean over classes of its share
        for m in ("bn", "frozen", "no_bn"):
            o = _read(_stage_out(folder, rep, f"outstats_{m}") / "outstats.json")
            i = o["layers"].index("classifier")
            share = np.mean([v[i] for k, v in o["layer_shares"].items() if k.startswith("mean[")])
            assert row["F7"]["classifier_share"][m] == pytest.approx(share, rel=1e-12)
            lam = _read(_stage_out(folder, rep, f"hessian_{m}") / "hessian.json")["eigen"]["eigenvalues"]
            assert row["F9"]["lambda1"][m] == lam[0]
        assert row["F9"]["ratio"] == pytest.approx(row["F9"]["lambda1"]["frozen"] / row["F9"]["lambda1"]["bn"])
        assert row["F9"]["gap"] is None and row["F9"]["frozen_top_k"] == 5  # smoke: top-5, no gap at 8..11
        assert [p["ours"] for p in row["posts"]] == [p["ours"] for p in rep["posts"] if p["finding"] in ("F7", "F9")]
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == str(row["width"]) and cells[1] == by_id["F7"]["verdict"]
        assert cells[2].split(" / ")[0] == f"{row['F7']['classifier_share']['bn']:.2f}"
        assert cells[7] == f"{row['F9']['ratio']:.1f}x" and cells[8] == "not measured (top-5)"
    assert lines[-1].startswith("| the post (width 64) |") and "| 0.836 |" in lines[-1] and "17.6x" in lines[-1]


def test_rerun_reuses_finished_widths(trend: tuple[Path, dict]) -> None:
    out, record = trend
    before = {p: p.stat().st_mtime_ns for p in out.glob("width_*/stages/*/stage.json")}
    assert len(before) == 2 * 11
    r = CliRunner().invoke(main, ["reproduce", "F9", "F7", "--widths", "3,2", "--scale", "smoke", "--out", str(out),
                                  "--no-figures", "-j", "1"])
    assert r.exit_code == 0, r.output
    assert r.output.count("0 reused, 11 to run") == 0 and r.output.count("11 reused, 0 to run") == 2
    assert "trend: width 2 (1/2)" in r.output and "trend: width 3 (2/2)" in r.output  # progress per width
    assert {p: p.stat().st_mtime_ns for p in out.glob("width_*/stages/*/stage.json")} == before
    again = _read(out / TREND_FILE)
    assert [r["F7"] for r in again["rows"]] == [r["F7"] for r in record["rows"]]
    assert table(again) in r.output


def test_figure_has_one_point_per_width(trend: tuple[Path, dict]) -> None:
    out, record = trend
    assert (out / "width_trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![share and gap against width](width_trend.png)" in (out / "width_trend.md").read_text()
    lines = {ln.get_gid(): ln for ax in trend_figure(record).axes for ln in ax.get_lines() if ln.get_gid()}
    for m, name in (("bn", "BN"), ("frozen", "frozen BN")):
        assert list(lines[name].get_xdata()) == list(WIDTHS)
        assert list(lines[name].get_ydata()) == [r["F7"]["classifier_share"][m] for r in record["rows"]]
    assert list(lines["frozen / BN"].get_ydata()) == [r["F9"]["ratio"] for r in record["rows"]]
    gap = "frozen BN, largest λk/λk+1, k = 8..11"
    assert len(lines[gap].get_xdata()) == 0  # smoke measures no gap at k = 8..11: no point, not a zero
    measured = copy.deepcopy(record)
    measured["rows"][1]["F9"]["gap"] = 1.5
    fig_lines = {ln.get_gid(): ln for ax in trend_figure(measured).axes for ln in ax.get_lines()}
    assert list(fig_lines[gap].get_xdata()) == [3] and list(fig_lines[gap].get_ydata()) == [1.5]


def test_cost_model_and_merge_see_the_width(trend: tuple[Path, dict]) -> None:
    out, _ = trend
    costs = trend_costs(ReproduceOptions(targets=("F7", "F9"), scale="cpu", jobs=2), (8, 16, 32))
    assert costs[8] < costs[16] < costs[32]
    with pytest.raises(BnlabError, match="parts of different scale settings"):
        merge_reports([width_folder(out, 2), width_folder(out, 3)], out.parent / "merged")


@pytest.mark.parametrize("args, message", [
    (["--widths", "0"], "--widths must be at least 1, got 0"),
    (["--widths", "2,2"], "--widths names 2 more than once"),
    (["--widths", "2,x"], "--widths must be comma-separated whole numbers"),
    (["--widths", ""], "--widths must be comma-separated whole numbers"),
    (["F10", "--widths", "2"], "--widths traces F7 and F9 only"),
    (["batch-norm", "--widths", "2"], "--widths traces F7 and F9 only"),
    (["--merge", "--widths", "2"], "--merge combines finished parts and --widths runs a width trend"),
])
def test_refusals_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "o"
    r = CliRunner().invoke(main, ["reproduce", *args, "--scale", "smoke", "--out", str(out)])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_a_trend_of_another_scale_or_a_foreign_folder_is_refused(trend: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = trend
    r = CliRunner().invoke(main, ["reproduce", "--widths", "2", "--scale", "cpu", "--out", str(out)])
    assert r.exit_code == 2 and "holds a width trend at scale smoke, not cpu" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    r = CliRunner().invoke(main, ["reproduce", "--widths", "2", "--scale", "smoke", "--out", str(tmp_path / "other")])
    assert r.exit_code == 2 and "is not empty; pass --force" in r.output, r.output
