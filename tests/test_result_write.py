"""Every result's `write(folder)` creates its folder; eigenvectors from another evaluation set are flagged."""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import bnlab
from bnlab.ablate import RESULT_CSV, AblationResult
from bnlab.checkpoint import save_checkpoint
from bnlab.cli import main
from bnlab.config import make_config
from bnlab.curvature.series import SeriesResult
from bnlab.dynamics.options import DynamicsResult, run_dynamics
from bnlab.io.eigvecs import read_eigvecs
from bnlab.models import build_model
from bnlab.outstats.collapse import CollapseOptions, CollapseResult, run_collapse
from bnlab.reproduce.run import ReproduceResult
from bnlab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets (tests/conftest.py)

SMALL = dict(num_samples=40, batch_size=20, device="cpu")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = make_config("bn", model="simple", width=2, act="softplus", dataset="synthetic", synthetic_train=200,
                      synthetic_test=50)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "bn.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    return path


def _result_types() -> set[str]:
    """Every class in bnlab with its own `write` method (a new one must be added to the test below)."""
    found = set()
    for info in pkgutil.walk_packages(bnlab.__path__, "bnlab."):
        if info.name.endswith("__main__"):  # importing it runs the command line
            continue
        mod = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__ and "write" in vars(cls) and not getattr(cls, "_is_protocol", False):
                found.add(name)
    return found


def test_every_result_write_creates_its_folder(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: set[str] = set()
    h = bnlab.hessian(ckpt, top_k=2, max_hvps=20, **SMALL)
    paths = h.write(tmp_path / "missing" / "hess")  # the README's snippet, parents missing too
    # the record last: a failed write never leaves a hessian.json without its eigvecs.pt
    assert [p.name for p in paths] == ["eigvecs.pt", "hessian.json"] and all(p.is_file() for p in paths)
    torch.testing.assert_close(read_eigvecs(tmp_path / "missing" / "hess").eigenvalues, h.eigenvalues)
    written.add(type(h).__name__)

    s = bnlab.output_stats(ckpt, eigvecs=str(tmp_path / "missing" / "hess"), histograms=False, stats=("mean",), **SMALL)
    paths = s.write(tmp_path / "a" / "os")
    assert json.loads(paths[-1].read_text())["span"]["means_dim"] == 9 and paths[0].is_file()
    written.add(type(s).__name__)

    c = run_collapse(CollapseOptions(depth=3, width=8, n_inputs=10, hist_layers=(1,), hist_channels=2))
    assert [p.is_file() for p in c.write(tmp_path / "b" / "collapse")] == [True, True]
    written.add(CollapseResult.__name__)

    series = SeriesResult({"checkpoints": [{"epoch": 3}]}, [h])
    paths = series.write(tmp_path / "c" / "series")
    assert (tmp_path / "c" / "series" / "epoch_003" / "eigvecs.pt") in paths and paths[-1].is_file()
    written.add(SeriesResult.__name__)

    run = tmp_path / "run"
    train(make_config("bn", width=2, dataset="synthetic", synthetic_train=64, synthetic_test=20, batch_size=32,
                      epochs=1), run, device="cpu", quiet=True)
    d = run_dynamics(run)
    assert all(p.is_file() for p in d.write(tmp_path / "d" / "dyn"))
    written.add(DynamicsResult.__name__)

    # the report's own writer needs a whole reproduction; what matters here is the folder it is given
    seen = []
    monkeypatch.setattr("bnlab.reproduce.run.write_report", lambda result, out: seen.append(out.is_dir()) or [])
    ReproduceResult({}, [], draw_figures=False).write(tmp_path / "e" / "report")
    assert seen == [True]
    written.add(ReproduceResult.__name__)

    a = AblationResult([{"step": "baseline", "acc_mean": 0.5}], {"seeds": [0]})
    paths = a.write(tmp_path / "f" / "ablation")
    assert [p.name for p in paths][0] == RESULT_CSV and all(p.is_file() for p in paths)
    written.add(AblationResult.__name__)

    assert _result_types() == written


def test_eigvecs_of_another_evaluation_set_warn_and_are_recorded(ckpt: Path, tmp_path: Path) -> None:
    bnlab.hessian(ckpt, top_k=2, max_hvps=20, **SMALL).write(tmp_path / "hess")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same evaluation set: not a word
        same = bnlab.output_stats(ckpt, eigvecs=str(tmp_path / "hess"), histograms=False, stats=("mean",), **SMALL)
    assert same.summary["eigen"]["eval_set_mismatch"] == {} and same.warnings == []
    with pytest.warns(UserWarning, match=r"another evaluation set \(num_samples 40 vs 60, eval_seed 0 vs 1;"):
        other = bnlab.output_stats(ckpt, eigvecs=str(tmp_path / "hess"), histograms=False, stats=("mean",),
                                   **{**SMALL, "num_samples": 60, "eval_seed": 1})
    assert other.summary["eigen"]["eval_set_mismatch"] == {"num_samples": {"hessian": 40, "outstats": 60},
                                                           "eval_seed": {"hessian": 0, "outstats": 1}}
    # the command says it once on stderr, before computing, and the file records it
    r = CliRunner().invoke(main, ["outstats", str(ckpt), "--eigvecs", str(tmp_path / "hess"), "--num-samples", "40",
                                  "--batch-size", "10", "--no-histograms", "--stats", "mean", "-q", "--device", "cpu",
                                  "--out", str(tmp_path / "os")])
    assert r.exit_code == 0, r.output
    warn = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "batch_size 20 vs 10" in warn[0], r.stderr
    recorded = json.loads((tmp_path / "os" / "outstats.json").read_text())["eigen"]["eval_set_mismatch"]
    assert recorded == {"batch_size": {"hessian": 20, "outstats": 10}}
