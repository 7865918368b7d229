"""benchmarks/recipe_pairs.py at smoke size: three fresh processes on the same images, against a fake reference.

The fake checkout (fake_cifar10_fast/, see its README) records what the benchmark handed the reference's
loop; its accuracy is the torch seed / 1000, so the row shows which seed reached it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_cifar_folder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "recipe_pairs.py"
FAKE = Path(__file__).resolve().parent / "fake_cifar10_fast"


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=1200)


def test_pairs_on_fixture_data(tmp_path: Path) -> None:
    ref = Path(shutil.copytree(FAKE, tmp_path / "cifar10-fast"))
    data = write_cifar_folder(tmp_path / "data", per_batch=64)  # 320 training, 64 test images
    p = run("--data-dir", str(data), "--reference", str(ref), "--width", "4", "--epochs", "2", "--batch-size", "128",
            "--seeds", "3", "--threads", "1", "--parallel", "--out", str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "recipe_pairs.json").read_text())
    rows = {r["run"]: r for r in result["rows"]}
    # In the runs' order, whichever finished first (the fake reference does, under --parallel).
    assert list(rows) == ["baseline", "bag-of-tricks", "reference"] and {r["seed"] for r in rows.values()} == {3}
    base, tricks, refrow = rows["baseline"], rows["bag-of-tricks"], rows["reference"]
    # What each run reports is its own evaluation: the trained weights plainly for the baseline, the
    # EMA with TTA for the bag of tricks; the re-evaluation of final.pt must find the same numbers.
    assert base["reported"] == pytest.approx(base["raw"]) and base["ema"] is None and base["ema_tta"] is None
    assert tricks["reported"] == pytest.approx(tricks["ema_tta"])
    assert all(0 <= tricks[k] <= 1 for k in ("raw", "raw_tta", "ema", "ema_tta"))
    assert all(r["wall"] > 0 and r["img_per_s"] > 0 and r["train_s"] > 0 for r in rows.values())
    # The reference's row is its loop's last-epoch accuracy, trained under the requested seed.
    assert refrow["reported"] == refrow["raw"] == pytest.approx(3 / 1000)
    assert refrow["raw_tta"] is None and refrow["ema"] is None
    calls = json.loads((ref / "calls.json").read_text())
    assert calls["channels"] == {"prep": 4, "layer1": 8, "layer2": 16, "layer3": 32}
    assert calls["epochs"] == 2 and calls["batches"] == 2 and calls["batch_size"] == 128  # 320 // 128, drop_last
    assert calls["test_images"] == 64 and calls["draws"] == 2  # augmentation redrawn every epoch
    assert set(calls["dtypes"]) == {"torch.float32"} and calls["device"] == "cpu"
    assert calls["weight_decay"] == pytest.approx(5e-4 * 128) and calls["momentum"] == 0.9
    # Its schedule [0, 5, 24] -> [0, 0.4, 0] compressed to 2 epochs, in the reference's per-summed-loss
    # units (lr / batch, recorded here x batch), evaluated at every step of 2 per epoch.
    expect = np.interp(np.arange(4) / 2, [0, 5 * 2 / 24, 2], [0, 0.4, 0])
    assert calls["lrs"] == pytest.approx(expect.tolist())
    md = (tmp_path / "out" / "recipe_pairs.md").read_text()
    assert "width 4, all training / all test images" in md and "2 epochs, batch 128, seeds [3]" in md
    assert "the runs of a seed trained at the same time" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| run")]
    assert [ln.split(" | ")[0][2:] for ln in table] == ["baseline", "bag-of-tricks", "reference"]
    assert table[2].split(" | ")[2:4] == ["0.30%", "0.30%"]


@pytest.mark.parametrize("argv, message", [
    (["--reference", "/nonexistent"], "is not a cifar10-fast checkout"),
    (["--batch-size", "100"], "bag-of-tricks: ghost BN with 16 splits needs a batch size divisible by it"),
    (["--seeds", "1", "1"], "--seeds must be distinct"),
    ([], "--out is required"),
])
def test_bad_options_are_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    p = run(*argv, *(["--out", str(tmp_path / "o")] if argv else []))  # no options: no --out either
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_several_seeds_summarised_as_mean_and_standard_error() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import recipe_pairs
    finally:
        sys.path.remove(str(SCRIPT.parent))
    settings = {"date": "d", "cpu": "c", "threads": 2, "device": "cpu", "width": 16, "images": "all",
                "test_images": "all", "data": "x", "epochs": 10, "batch_size": 512, "seeds": [0, 1]}
    row = {"raw_tta": None, "ema": None, "ema_tta": None, "train_s": 1.0, "img_per_s": 1.0}
    rows = [{**row, "run": "baseline", "seed": s, "reported": a, "raw": a, "wall": w}
            for s, a, w in ((0, 0.5, 10.0), (1, 0.7, 30.0))]
    md = recipe_pairs.markdown(settings, rows)
    # two seeds: mean 0.6, sample std 0.1414, s.e. = std / sqrt(2) = 0.1
    assert "| baseline | 2 | 60.00 ± 10.00% | 20 |" in md.splitlines()
    assert "| baseline | 1 | 70.00% | 70.00% | – | – | – | 30 | 1 | 1.0 |" in md.splitlines()
