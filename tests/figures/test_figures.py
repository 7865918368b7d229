"""Every figure script draws from the real output files of the bnlab command it belongs to."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bnlab.checkpoint import save_checkpoint
from bnlab.cli import main
from bnlab.config import make_config
from bnlab.models import build_model

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--width", "2", "--dataset", "synthetic", "--subset", "160", "--test-subset", "40",
        "--batch-size", "32", "--epochs", "2", "--lr-schedule", "const", "-q"]


def bnlab(*args: object) -> None:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output


def draw(script: str, *args: object) -> None:
    env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(ROOT / "figures" / script), *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, **env}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def pngs(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png") if p.stat().st_size > 1000}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for variant in ("bn", "no_bn"):
        cfg = make_config(variant, model="simple", width=2, act="softplus", dataset="synthetic",
                          synthetic_train=200, synthetic_test=50)
        torch.manual_seed(0)
        out[variant] = root / f"{variant}.pt"
        save_checkpoint(out[variant], {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    return out


def test_plot_hessian(ckpts: dict[str, Path], tmp_path: Path) -> None:
    for name, ck in ckpts.items():
        bnlab("hessian", ck, "--top-k", "3", "--tol", "1e-3", "--num-samples", "40", "--batch-size", "20",
              "--density", "--density-probes", "2", "--density-steps", "8", "--out", tmp_path / name, "-q")
    draw("plot_hessian.py", tmp_path / "bn" / "hessian.json", tmp_path / "no_bn" / "hessian.json",
         "--labels", "BN,no BN", "-o", tmp_path / "fig" / "hessian.png")
    assert pngs(tmp_path / "fig") == {"hessian.png"}


def test_plot_outstats(ckpts: dict[str, Path], tmp_path: Path) -> None:
    for name, ck in ckpts.items():
        bnlab("outstats", ck, "--num-samples", "40", "--batch-size", "20", "--num-eigs", "2", "--project",
              "--out", tmp_path / name, "-q")
    draw("plot_outstats.py", tmp_path / "bn", tmp_path / "no_bn", "--out", tmp_path / "fig")
    assert {"layer_grad_norms.png", "perturbation.png", "overlaps.png", "projected_eigs.png",
            "kde_bn.png", "kde_no_bn.png"} <= pngs(tmp_path / "fig")


def test_plot_dynamics_and_sweep(tmp_path: Path) -> None:
    bnlab("train", "--variant", "bn", *TINY, "--lr", "0.2", "--wd", "5e-3", "--out", tmp_path / "run")
    bnlab("dynamics", tmp_path / "run", "--out", tmp_path / "dyn")
    draw("plot_dynamics.py", tmp_path / "dyn", "--out", tmp_path / "fig")
    assert {"dynamics_norms.png", "dynamics_angles.png", "dynamics_ratio.png"} <= pngs(tmp_path / "fig")
    bnlab("sweep", "--grid", "lr=0.1,0.2 wd=5e-3", *TINY, "--out", tmp_path / "sweep")
    draw("plot_sweep.py", tmp_path / "sweep", "--out", tmp_path / "sfig")
    assert {"sweep_heatmap.png", "sweep_angle.png"} <= pngs(tmp_path / "sfig")


def test_collapse_command_and_plot(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["collapse", "--depth", "10", "--width", "1024", "--inputs", "300",
                                  "--hist-layers", "1,5,10,99", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "c" / "collapse.json").read_text())
    assert rec["hist_layers"] == [1, 5, 10]  # layers beyond the depth are dropped
    plain, theory, centred = rec["share_plain"], rec["theory_share"], rec["share_centred"]
    assert len(plain) == 10 and abs(plain[9] - theory[9]) < 0.05 and centred[9] < 0.45 < plain[9]
    values = torch.load(tmp_path / "c" / "collapse_values.pt", weights_only=True)
    assert values["plain"]["5"].shape == (8, 300)
    draw("plot_collapse.py", tmp_path / "c", "--out", tmp_path / "fig")
    assert pngs(tmp_path / "fig") == {"collapse_share.png", "collapse_kde.png"}
    bad = CliRunner().invoke(main, ["collapse", "--hist-layers", "a,b", "--out", str(tmp_path / "d")])
    assert bad.exit_code == 2 and "--hist-layers" in bad.output
