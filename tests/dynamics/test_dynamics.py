"""bnlab.dynamics on real (tiny) runs of the trainer and on hand-made logs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bnlab.cli import main
from bnlab.config import make_config
from bnlab.dynamics import analyse_run, read_run, write_report
from bnlab.errors import BnlabError
from bnlab.train import train

TINY = dict(width=4, dataset="synthetic", synthetic_train=512, synthetic_test=100, batch_size=32,
            lr_schedule="const")


def _train(path: Path, variant: str = "bn", **options: object) -> Path:
    torch.set_num_threads(1)
    cfg = make_config(variant, **{**TINY, **options})
    train(cfg, path, device="cpu", quiet=True)
    return path


# the weight-decay post's equilibrium: sqrt(2 lr wd / (1 + mu)) times k_N(0.9) = sqrt(1.9^3 0.1 + 0.9^4) = 1.1585
NESTEROV_ANGLE = (2 * 0.2 * 5e-3 / 1.9) ** 0.5 * (1.9 ** 3 * 0.1 + 0.9 ** 4) ** 0.5


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # lr*wd = 1e-3: relaxation time 0.1 / 4e-3 = 25 steps; 128 steps = 5 relaxation times.
    return _train(tmp_path_factory.mktemp("bn") / "run", epochs=8, lr=0.2, weight_decay=5e-3, momentum=0.9,
                  log_channels=True)


def test_bn_layers_reach_predicted_angle(bn_run: Path) -> None:
    """Every conv (all are BN-preceded) is detected invariant and turns by about the Nesterov prediction, the
    same angle in every layer while the norms differ ~2x.

    The prediction itself is checked exactly (written out below); the measured angle is a trained, chaotic
    quantity. Its spread, measured with tests/measure_margins.py (seeds 0-3 x torch threads 1, 2 x
    ATEN_CPU_CAPABILITY default/avx2/avx512, torch 2.13.0+cpu, AMD EPYC; 23 runs): measured/predicted per
    layer 0.50..5.67 (one run above 2.9; seed 0 alone: 0.50..1.32, 0.77 with AVX2 kernels and one thread, like
    the Intel machine's 0.79 that failed the old 0.85 bound), angle CV across layers 0.04..0.50 (one run
    above 0.23), norm spread 1.63..6.55, conv median |cos| <= 3.3e-5, checkpoint |cos| <= 5.9e-4, other
    tensors' median |cos| >= 8.3e-3. The bounds sit outside that spread with a margin: this tiny net
    (108..9216 weights per layer, 512 images) is far from the noise-only theory (its gradients are partly
    anti-correlated between steps), so only the order of magnitude is tested here; the theory's accuracy is
    tested on the sphere simulation (tests/findings, within 10%).
    """
    rep = analyse_run(bn_run)
    convs = [r for r in rep.layers if r.param.endswith("conv.weight")]
    assert len(convs) == 8 and all(r.scale_invariant for r in convs)
    assert {r.param for r in rep.layers if r.scale_invariant} == {r.param for r in convs}
    pred = NESTEROV_ANGLE  # written out, not bnlab.theory's
    for r in convs:
        assert r.angle_pred == pytest.approx(pred)
        assert 0.3 < r.ratio < 8.0, (r.param, r.ratio)  # measured 0.50..5.67
        assert r.median_abs_cos < 1e-4 and r.checkpoint_abs_cos is not None and r.checkpoint_abs_cos < 1e-2
    assert rep.aggregate["angle_cv"] < 0.7  # measured 0.04..0.50
    assert rep.aggregate["norm_spread"] > 1.3  # measured 1.63..6.55
    # BN affine and classifier are not scale-invariant, and the log says so clearly
    for r in rep.layers:
        if not r.param.endswith("conv.weight"):
            assert not r.scale_invariant and r.median_abs_cos > 2e-3, r.param  # measured >= 8.3e-3
            assert r.angle_pred is None and r.ratio is None


def test_channels_are_invariant_one_by_one(bn_run: Path) -> None:
    rep = analyse_run(bn_run, channels=True, layers=["layer1"], check_checkpoint=False)
    ch = rep.channels
    assert set(ch["param"]) == {"layer1.conv.weight"}
    assert len(ch["channel"]) == 8 and ch["scale_invariant"].all()
    assert np.nanmax(ch["median_abs_cos"]) < 1e-3  # measured <= 1.8e-5 (seeds x threads x CPU kernels, see above)
    # whole-tensor angle^2 is the norm-weighted mean of channel angle^2: same prediction per channel
    assert np.allclose(ch["angle_pred"], NESTEROV_ANGLE)


def test_report_files_and_cli(bn_run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["dynamics", str(bn_run), "--layers", "layer2,classifier", "--out",
                                    str(tmp_path / "a"), "--no-checkpoint-check"])
    assert res.exit_code == 0, res.output
    assert "layer2.conv.weight" in res.output and "not scale-invariant" in res.output
    summary = json.loads((tmp_path / "a" / "dynamics_summary.json").read_text())
    assert [r["param"] for r in summary["layers"]] == ["layer2.conv.weight", "layer2.norm.weight",
                                                        "layer2.norm.bias", "classifier.weight"]
    assert summary["aggregate"]["scale_invariant"] == ["layer2.conv.weight"]
    lines = (tmp_path / "a" / "dynamics_layers.csv").read_text().splitlines()
    assert len(lines) == 5 and lines[0].startswith("param,")
    series = (tmp_path / "a" / "dynamics_series.csv").read_text().splitlines()
    assert len(series) == 1 + 4 * 128


def test_cli_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["dynamics", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "bnlab: error: run directory" in res.output
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(make_config("bn", **TINY).to_json())
    res = CliRunner().invoke(main, ["dynamics", str(tmp_path / "run"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no dynamics.csv" in res.output
    assert not (tmp_path / "o").exists()  # refused before the output folder was made


def test_no_bn_net_is_not_scale_invariant(tmp_path: Path) -> None:
    run = _train(tmp_path / "nobn", "no_bn", epochs=1, lr=0.05, weight_decay=5e-4, momentum=0.9)
    rep = analyse_run(run)
    assert rep.aggregate["scale_invariant"] == []
    # measured min 6.6e-3 over seeds 0-3 x threads 1, 2 (ATEN_CPU_CAPABILITY=default; 1.5e-2 with AVX2, seed 0)
    assert all(r.median_abs_cos > 2e-3 for r in rep.layers if r.param.endswith("weight"))


def test_pythagorean_growth_without_weight_decay(tmp_path: Path) -> None:
    """Plain SGD, wd = 0: for invariant weights ||w_after||^2 = ||w_before||^2 + ||dw||^2 exactly."""
    run = _train(tmp_path / "pyth", epochs=1, lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False)
    rep = analyse_run(run, check_checkpoint=False)
    for r in rep.layers:
        if r.scale_invariant:
            # measured <= 3.2e-3 (seeds 0-3 x threads 1, 2, default kernels; 1.9e-3 AVX2): float32 rounding
            assert r.pythagoras_residual is not None and r.pythagoras_residual < 1e-2, r.param
            assert r.angle_pred is None  # no equilibrium without weight decay
            assert r.w_norm_final > r.w_norm_init
    assert len(rep.aggregate["scale_invariant"]) == 8


def _write_log(path: Path, rows: list[list[object]]) -> None:
    head = "step,epoch,lr,loss,acc,param,numel,w_norm,g_norm,dw_norm,rel_step,cos_wg,angle\n"
    path.write_text(head + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_live_log_partial_line_and_relogged_steps(tmp_path: Path) -> None:
    """A run being written: partial last line dropped, steps re-logged after a resume keep the later row."""
    run = tmp_path / "live"
    run.mkdir()
    (run / "config.json").write_text(make_config("bn", **TINY, lr=0.1, weight_decay=5e-4).to_json())
    (run / "status.json").write_text(json.dumps({"status": "running"}))
    rows = []
    for s in range(1, 6):
        for p, cos in (("a.conv.weight", 1e-7), ("classifier.weight", -0.05)):
            rows.append([s, s / 5, 0.1, 2.0, 0.1, p, 100, 1.0, 0.1, 0.01, 0.01, cos, 0.01])
    rows.append([3, 0.6, 0.1, 2.0, 0.1, "a.conv.weight", 100, 1.5, 0.1, 0.01, 0.01, 1e-7, 0.01])  # re-logged
    _write_log(run / "dynamics.csv", rows)
    with open(run / "dynamics.csv", "a") as f:
        f.write("6,1.2,0.1,2.0,0.1,a.conv.we")  # the trainer is mid-write
    log = read_run(run)
    assert log.live and log.dynamics.params() == ["a.conv.weight", "classifier.weight"]
    t = log.dynamics.select(log.dynamics["param"] == "a.conv.weight")
    assert t["step"].tolist() == [1, 2, 3, 4, 5] and t["w_norm"][2] == 1.5
    rep = analyse_run(run, check_checkpoint=False)
    assert rep.live and rep.aggregate["scale_invariant"] == ["a.conv.weight"]
    write_report(rep, tmp_path / "out")
    with pytest.raises(BnlabError, match="matches no logged parameter"):
        analyse_run(run, layers=["layer9"], check_checkpoint=False)


def test_cos_stats_tiers() -> None:
    """exact: |cos| at rounding; approximate: small radial gradient against the step (BN eps); no: otherwise."""
    from bnlab.dynamics import cos_stats
    rng = np.random.default_rng(0)
    rel = np.full(500, 2e-2)
    exact = cos_stats(rng.normal(0, 1e-6, 500), rel)
    eps_broken = cos_stats(rng.normal(5e-4, 1e-4, 500), rel)  # radial ~2.5% of the step
    gamma = cos_stats(rng.normal(3e-2, 1e-2, 500), rel)
    strong = cos_stats(rng.normal(5e-3, 1e-4, 500), rel)  # small |cos| but 25% of the step
    assert (exact.invariant, exact.approximate) == (True, False)
    assert (eps_broken.invariant, eps_broken.approximate) == (False, True)
    assert (gamma.invariant, gamma.approximate) == (False, False)
    assert (strong.invariant, strong.approximate) == (False, False)
