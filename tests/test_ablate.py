"""`bnlab ablate` at smoke scale: the post's nine steps, two seeds each, on a tiny synthetic task; the
summary against the runs' own metrics, resuming, refusals, and the figure script."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.collections import PathCollection

from bnlab.ablate import AblationOptions, mean_se
from bnlab.cli import main
from bnlab.errors import BnlabError
from bnlab.recipes import STEP_NAMES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "figures"))
import plot_ablation  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SMOKE = ["--epoch-scale", "0.05", "--width", "2", "--dataset", "synthetic", "--subset", "80", "--test-subset", "20",
         "--batch-size", "32", "--device", "cpu"]


def run(*args: object):  # noqa: ANN201
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All nine steps with one seed (more seeds for two steps: see the rerun test)."""
    out = tmp_path_factory.mktemp("ablate") / "ab"
    r = run("ablate", "--out", out, "--seeds", "0", *SMOKE, "-q")
    assert r.exit_code == 0, r.output
    return out


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def step_dir(out: Path, index: int) -> Path:
    return out / "runs" / f"{index:02d}_{STEP_NAMES[index]}"


def test_every_step_trains_with_the_tricks_before_it(ablation: Path) -> None:
    rows = json.loads((ablation / "ablation.json").read_text())["steps"]
    assert [r["step"] for r in rows] == list(STEP_NAMES)
    assert [r["post_seconds"] for r in rows] == [70, 64, 59, 52, 46, 43, 36, 34, 26]
    with open(ablation / "ablation.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["step"] for t in table] == list(STEP_NAMES)
    for r, t in zip(rows, table):
        m = metrics(step_dir(ablation, r["index"]) / "seed_0")
        assert r["test_acc_mean"] == pytest.approx(float(m[-1]["test_acc"])) and r["test_acc_se"] is None
        assert r["train_s_mean"] == pytest.approx(sum(float(e["train_time"]) for e in m))
        assert r["ms_per_step_mean"] == pytest.approx(1000 * r["train_s_mean"] / int(m[-1]["step"]))
        assert float(t["test_acc_mean"]) == pytest.approx(r["test_acc_mean"])
        assert r["epochs"] == 1 and r["finished"] == 1
    cfgs = {r["step"]: json.loads((step_dir(ablation, r["index"]) / "seed_0" / "config.json").read_text())
            for r in rows}
    assert all(c["recipe"] == name and c["model"]["width"] == 2 for name, c in cfgs.items())
    # the tricks accumulate in the post's order
    assert not cfgs["baseline"]["model"]["pool_first"] and cfgs["pool_first"]["model"]["pool_first"]
    assert cfgs["celu"]["model"]["act"] == "celu" and cfgs["celu"]["model"]["act_param"] == 0.075
    assert cfgs["ghost_bn"]["model"]["norm"] == "ghost" and cfgs["ghost_bn"]["label_smoothing"] == 0.2
    assert cfgs["frozen_scales"]["bias_scale"] == 64 and not cfgs["frozen_scales"]["model"]["whiten"]
    assert cfgs["ema"]["ema_momentum"] == 0.99 and not cfgs["ema"]["tta"]
    last = cfgs["tta"]
    assert last["tta"] and last["model"]["whiten"] and last["model"]["frozen_scales"] and last["data"]["cutout"] == 0


def test_more_seeds_reuse_the_finished_runs_and_report_mean_and_standard_error(ablation: Path) -> None:
    finals = sorted((ablation / "runs").glob("*/seed_*/final.pt"))
    assert len(finals) == 9
    stamps = {p: p.stat().st_mtime_ns for p in finals}
    r = run("ablate", "--out", ablation, "--seeds", "0,1", "--steps", "baseline,tta", *SMOKE, "-q")
    assert r.exit_code == 0, r.output
    assert all(p.stat().st_mtime_ns == stamps[p] for p in finals)  # seed 0 reused everywhere
    rows = json.loads((ablation / "ablation.json").read_text())["steps"]
    assert [r["step"] for r in rows] == ["baseline", "tta"]
    for row in rows:
        dirs = [step_dir(ablation, row["index"]) / f"seed_{s}" for s in (0, 1)]
        accs = [float(metrics(d)[-1]["test_acc"]) for d in dirs]
        assert row["seeds"] == row["finished"] == 2
        assert row["test_acc_mean"] == pytest.approx(np.mean(accs))
        assert row["test_acc_se"] == pytest.approx(np.std(accs, ddof=1) / np.sqrt(2))
        assert json.loads((dirs[1] / "config.json").read_text())["seed"] == 1
    # a run that lost its files is trained again, alone
    gone = step_dir(ablation, 8) / "seed_1"
    kept = {p: p.stat().st_mtime_ns for p in (ablation / "runs").glob("*/seed_*/final.pt") if gone not in p.parents}
    for f in gone.iterdir():
        f.unlink()
    assert run("ablate", "--out", ablation, "--seeds", "0,1", "--steps", "tta", *SMOKE, "-q").exit_code == 0
    assert (gone / "final.pt").is_file() and all(p.stat().st_mtime_ns == t for p, t in kept.items())


def test_refusals_are_one_line_exit_2(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for args, msg in ((["--seeds", "0,0"], "repeats a seed"), (["--steps", "fast"], "unknown ablation step"),
                      (["--epoch-scale", "0"], "epoch-scale"), (["--seeds", ""], "at least one seed")):
        r = run("ablate", "--out", tmp_path / "x", *args)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
    r = run("ablate", "--out", other, *SMOKE)
    assert r.exit_code == 2 and "holds no ablation" in r.output
    with pytest.raises(BnlabError, match="per step"):
        AblationOptions(overrides={"epochs": 3}).validate()


def test_mean_and_standard_error() -> None:
    assert mean_se([0.9, 0.92, 0.94]) == pytest.approx((0.92, 0.02 / np.sqrt(3)))
    assert np.isnan(mean_se([0.5])[1])


def test_figure_shows_accuracy_with_error_bars_and_both_times(ablation: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # summarise all nine steps with seed 0 again (every run reused; another test may have summarised fewer)
    assert run("ablate", "--out", ablation, "--seeds", "0", *SMOKE, "-q").exit_code == 0
    rows = plot_ablation.load(ablation)
    fig = plot_ablation.ablation_figure(rows)
    acc_ax, time_ax, twin = fig.axes
    assert [t.get_text() for t in acc_ax.get_xticklabels()] == list(STEP_NAMES)
    assert acc_ax.get_ylabel() == "test accuracy (%)" and "V100" in twin.get_ylabel()
    dots = [c for c in acc_ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in dots) == len(STEP_NAMES)  # one dot per seed and step
    assert [c.get_label() for c in dots].count("one seed") == 1
    legend = [t.get_text() for t in time_ax.get_legend().get_texts()]
    assert legend == ["this run (left axis)", "post, V100 (right axis)"]
    plot_ablation.main([str(ablation), "--out", str(tmp_path)])
    assert (tmp_path / "ablation.png").is_file() and (tmp_path / "ablation.pdf").is_file()
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        plot_ablation.load(tmp_path / "nothing")
    assert e.value.code == 2


def test_ema_momentum_changes_only_the_steps_that_average() -> None:
    """Small-scale ablations shorten the EMA's horizon; the steps before the EMA still evaluate raw weights."""
    from bnlab.recipes import STEPS

    short, default = AblationOptions(ema_momentum=0.95), AblationOptions()
    for step in STEPS:
        averages = bool(step.options.get("ema_momentum"))
        assert short.config(step, 0).ema_momentum == (0.95 if averages else 0.0)  # 0: no average
        assert default.config(step, 0).ema_momentum == (0.99 if averages else 0.0)
    assert [s.name for s in STEPS if s.options.get("ema_momentum")] == ["ema", "tta"]
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(BnlabError, match=r"^--ema-momentum must be in \(0, 1\), got "):
            AblationOptions(ema_momentum=bad).validate()
    with pytest.raises(BnlabError, match="use --ema-momentum"):
        AblationOptions(overrides={"ema_momentum": 0.9}).validate()
