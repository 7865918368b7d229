"""benchmarks/hvp_speed.py at smoke size: one tiny model, one repeat; the record's plumbing and the claim it
rests on (every variant computes the same product, so timing them side by side compares like with like)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hvp_speed.py"
SMALL = ["--models", "simple", "--widths", "2", "--modes", "batch", "--blocks", "1,2", "--repeats", "1",
         "--num-samples", "16", "--batch-size", "8", "--threads", "1"]


def load_script():
    spec = importlib.util.spec_from_file_location("hvp_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_smoke_record_and_table(tmp_path: Path, threads: None, capsys: pytest.CaptureFixture[str]) -> None:
    b = load_script()
    out = tmp_path / "hvp.json"
    rec = b.main([*SMALL, "--out", str(out)])
    assert json.loads(out.read_text()) == rec
    assert (rec["device"], rec["threads"], rec["tf32"], rec["bf16"], rec["blocks"]) == ("cpu", 1, False, False, [1, 2])
    (r,) = rec["results"]
    assert (r["model"], r["width"], r["bn_mode"], r["num_samples"]) == ("simple", 2, "batch", 16)
    assert sorted((row["variant"], row["m"]) for row in r["rows"]) == sorted(
        (v, m) for v in ("cached", "stream", "func") for m in (1, 2))
    for row in r["rows"]:
        s = row["seconds_per_vector"]
        assert s > 0 and row["img_per_s"] == pytest.approx(16 / s)
        assert row["hvp_over_gradient"] == pytest.approx(s / r["gradient_seconds"])
        assert len(row["all_seconds_per_vector"]) == 1
    assert r["graph_cache"]["cached"]["mode"] == "on" and r["graph_cache"]["stream"]["mode"] == "off"
    assert set(r["warmup_seconds"]) == {"cached", "stream", "func"}
    printed = capsys.readouterr().out
    assert "gradient" in printed and "stream" in printed and "compile/warm-up" in printed


def test_every_variant_computes_the_same_product(threads: None) -> None:
    b = load_script()
    args = b.parse_args(SMALL + ["--modes", "running"])
    ops = b.make_operators("davidnet", 2, "running", args, ["cached", "stream", "func"])
    V = torch.randn(2, ops["cached"].dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = ops["cached"].matmat(V)
    assert ref.abs().max() > 0 and ops["cached"].bn_mode == "running"
    for name in ("stream", "func"):
        torch.testing.assert_close(ops[name].matmat(V), ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()))


def test_bad_arguments_are_refused() -> None:
    b = load_script()
    for bad in (["--variants", "nope"], ["--blocks", "0"], ["--num-samples", "4", "--batch-size", "8"]):
        with pytest.raises(SystemExit) as e:
            b.parse_args(bad)
        assert e.value.code == 2
    assert b.parse_args(["--compile"]).variants == ["cached", "stream", "func", "func_compiled"]
