"""Spread of the trained/stochastic quantities the default suite puts thresholds on (not a test).

Each quantity is recomputed exactly as its test computes it, over seeds x intra-op threads x ATEN CPU
capabilities (set per subprocess: the capability is read once, when torch loads). Prints one JSON line per
run and a min/max table, so a margin can be set from the measured spread:

    PYTHONPATH=. python tests/measure_margins.py --seeds 0,1,2,3 --threads 1,2 --caps default,avx2
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _dyn_train(path: Path, variant: str, seed: int, **options: object) -> Path:
    from bnlab.config import make_config
    from bnlab.train import train
    tiny = dict(width=4, dataset="synthetic", synthetic_train=512, synthetic_test=100, batch_size=32,
                lr_schedule="const")
    train(make_config(variant, **{**tiny, **options, "seed": seed}), path, device="cpu", quiet=True)
    return path


def q_dynamics_bn(tmp: Path, seed: int) -> dict[str, float]:
    """tests/dynamics/test_dynamics.py: test_bn_layers_reach_predicted_angle, test_channels_are_invariant."""
    from bnlab.dynamics import analyse_run
    run = _dyn_train(tmp / "bn", "bn", seed, epochs=8, lr=0.2, weight_decay=5e-3, momentum=0.9, log_channels=True)
    rep = analyse_run(run)
    convs = [r for r in rep.layers if r.param.endswith("conv.weight")]
    others = [r for r in rep.layers if not r.param.endswith("conv.weight")]
    ch = analyse_run(run, channels=True, layers=["layer1"], check_checkpoint=False).channels
    import numpy as np
    return {"ratio_min": min(r.ratio for r in convs), "ratio_max": max(r.ratio for r in convs),
            "ratio_lagged_min": min(r.ratio_lagged for r in convs),
            "ratio_lagged_max": max(r.ratio_lagged for r in convs),
            "n_invariant": sum(r.scale_invariant for r in rep.layers),
            "conv_median_abs_cos_max": max(r.median_abs_cos for r in convs),
            "conv_checkpoint_abs_cos_max": max(r.checkpoint_abs_cos for r in convs),
            "other_median_abs_cos_min": min(r.median_abs_cos for r in others),
            "angle_cv": rep.aggregate["angle_cv"], "norm_spread": rep.aggregate["norm_spread"],
            "channel_median_abs_cos_max": float(np.nanmax(ch["median_abs_cos"]))}


def q_dynamics_nobn(tmp: Path, seed: int) -> dict[str, float]:
    """test_no_bn_net_is_not_scale_invariant."""
    from bnlab.dynamics import analyse_run
    rep = analyse_run(_dyn_train(tmp / "nobn", "no_bn", seed, epochs=1, lr=0.05, weight_decay=5e-4, momentum=0.9))
    return {"n_invariant": len(rep.aggregate["scale_invariant"]),
            "weight_median_abs_cos_min": min(r.median_abs_cos for r in rep.layers if r.param.endswith("weight"))}


def q_dynamics_pyth(tmp: Path, seed: int) -> dict[str, float]:
    """test_pythagorean_growth_without_weight_decay."""
    from bnlab.dynamics import analyse_run
    run = _dyn_train(tmp / "pyth", "bn", seed, epochs=1, lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False)
    rep = analyse_run(run, check_checkpoint=False)
    inv = [r for r in rep.layers if r.scale_invariant]
    return {"n_invariant": len(inv), "pythagoras_residual_max": max(r.pythagoras_residual for r in inv),
            "norm_growth_min": min(r.w_norm_final / r.w_norm_init for r in inv)}


def _tiny(seed: int, **options: object):  # tests/conftest.py's tiny_config
    from bnlab.config import make_config
    d = dict(width=8, dataset="synthetic", synthetic_train=1024, synthetic_test=256, batch_size=128, epochs=2,
             lr=0.2)
    return make_config("bn", **{**d, **options, "seed": seed})


def q_train_tiny(tmp: Path, seed: int) -> dict[str, float]:
    """tests/test_train.py: test_tiny_run_learns_and_writes_the_run_directory, test_dynamics_log_rows."""
    import csv

    from bnlab.train import train
    train(_tiny(seed, epochs=3), tmp / "a", quiet=True, device="cpu")
    m = list(csv.DictReader(open(tmp / "a" / "metrics.csv")))
    train(_tiny(seed, epochs=1, weight_decay=0.0, log_channels=True), tmp / "b", quiet=True, device="cpu")
    rows = [r for r in csv.DictReader(open(tmp / "b" / "dynamics.csv")) if r["param"].endswith("conv.weight")]
    return {"test_acc": float(m[-1]["test_acc"]),
            "train_loss_last_over_first": float(m[-1]["train_loss"]) / float(m[0]["train_loss"]),
            "conv_abs_cos_wg_max": max(abs(float(r["cos_wg"])) for r in rows),
            "angle_over_rel_step_dev_max": max(abs(float(r["angle"]) / float(r["rel_step"]) - 1)
                                               for r in rows if float(r["rel_step"]) > 0)}


def q_presets(tmp: Path, seed: int) -> dict[str, float]:
    """tests/test_presets.py: the synthetic-task accuracy of every preset and README recipe (4 epochs)."""
    import re

    from click.testing import CliRunner

    sys.path.insert(0, str(Path(__file__).parent))
    import test_presets as tp

    from bnlab.cli import main
    cases = [["--variant", v, "--model", m] for v, m in
             (c.values if hasattr(c, "values") else c for c in tp.PRESET_CASES)
             if not (m == "simple" and v in ("no_bn", "frozen_bn"))]
    cases += [list(a) for a in tp.RECIPES if not ("simple" in a and "no_bn" in a)]
    out = {}
    for i, argv in enumerate(cases):
        r = CliRunner().invoke(main, ["train", *argv, *tp.SYNTHETIC, "--epochs", "4", "--seed", str(seed),
                                      "--out", str(tmp / f"p{i}")])
        acc = float(re.search(r"test acc ([0-9.]+)", r.output).group(1)) if r.exit_code == 0 else float("nan")
        out[tp.recipe_id(argv)] = acc
    return out


def q_fc_collapse(tmp: Path, seed: int) -> dict[str, float]:
    """tests/outstats/test_outstats.py: test_fc_collapse_follows_arccos_recursion."""
    import math

    from bnlab.outstats import fc_collapse
    n = 256
    res = fc_collapse(depth=20, width=1024, n_inputs=n, seed=seed)
    expected = [ci + (1 - ci) / n for ci in res["theory"]]
    centred = fc_collapse(depth=10, width=1024, n_inputs=n, seed=seed, centre=True)
    return {"share_dev_max": max(abs(a - b) for a, b in zip(res["shares"], expected)),
            "centred_dev_max": max(abs(s - 1 / math.pi) for s in centred["shares"][1:])}


QUANTITIES = {name[2:]: f for name, f in globals().items() if name.startswith("q_")}


def _child(names: list[str], seeds: list[int], threads: list[int]) -> None:
    import torch
    cap = torch.backends.cpu.get_cpu_capability()
    for name in names:
        for t in threads:
            torch.set_num_threads(t)
            for seed in seeds:
                with tempfile.TemporaryDirectory() as d:
                    values = QUANTITIES[name](Path(d), seed)
                print(json.dumps({"quantity": name, "cap": cap, "threads": t, "seed": seed, **values}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantities", default=",".join(QUANTITIES))
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--caps", default="default,avx2")
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    names, seeds, threads = a.quantities.split(","), [int(s) for s in a.seeds.split(",")], \
        [int(t) for t in a.threads.split(",")]
    if a.child:
        return _child(names, seeds, threads)
    rows = []
    for cap in a.caps.split(","):
        env = {**os.environ, "ATEN_CPU_CAPABILITY": cap}
        with subprocess.Popen([sys.executable, __file__, "--child", "--quantities", a.quantities, "--seeds", a.seeds,
                               "--threads", a.threads], env=env, stdout=subprocess.PIPE, text=True) as p:
            for line in p.stdout:  # as each run ends: a long audit shows its progress
                print(line, end="", flush=True)
                rows.append(json.loads(line))
        if p.returncode:
            raise SystemExit(f"the child for capability {cap} failed (exit {p.returncode})")
    for name in names:
        sel = [r for r in rows if r["quantity"] == name]
        keys = [k for k in sel[0] if k not in ("quantity", "cap", "threads", "seed")]
        for k in keys:
            v = [r[k] for r in sel]
            print(f"{name:16s} {k:34s} min {min(v):.4g} max {max(v):.4g} (n={len(v)})")


if __name__ == "__main__":
    main()
