"""bnlab.dynamics.analysis on hand-made logs whose answers are known in closed form.

The logs follow the weight-decay theory exactly: ||w||^4 = v_t obeys the first-order recursion
v_t = v_{t-1} (1 - 4 lr wd A) + 2 lr^2 A^2 L with A = 1 / (1 - mu) (for a constant lr:
v_t = v_eq + (v_0 - v_eq) r^t), the gradient has ||g|| ||w|| = sqrt(L), and the angle per step is
lr sqrt(S2 L / ||w||^4) with S2 the momentum filter's noise gain (Nesterov (1+mu)^2 + mu^4/(1-mu^2),
heavy ball 1/(1-mu^2)). Every number the analysis reports is then derived here by hand from those
formulas, never by calling bnlab.theory: the lagged predictions must match the log (ratios 1), the
equilibrium ones are written out, and the step counts come from explicit loops.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bnlab.config import make_config
from bnlab.dynamics import analyse_run
from bnlab.dynamics.analysis import Hyper, _correlated

LR, WD, MU = 0.1, 5e-3, 0.9
L = 4e-4  # ||g||^2 ||w||^2
INV, CLF = "a.conv.weight", "classifier.weight"
STEPS_PER_EPOCH = 50


def s2(mu: float, nesterov: bool) -> float:
    return (1 + mu) ** 2 + mu ** 4 / (1 - mu ** 2) if nesterov else 1 / (1 - mu ** 2)


def norm4_path(lrs: np.ndarray, v0: float, mu: float = MU, wd: float = WD) -> np.ndarray:
    """v after each step (index t = after step t+1), by the recursion written as a plain loop."""
    a = 1 / (1 - mu)
    out, v = [], v0
    for lr in lrs:
        v = v * (1 - 4 * lr * wd * a) + 2 * lr ** 2 * a ** 2 * L
        out.append(v)
    return np.array(out)


def write_run(path: Path, lrs: np.ndarray, *, v0: float = 1.0, nesterov: bool = True, log_every: int = 1,
              schedule: str = "const", mu: float = MU, angle_scale: float = 1.0, wd: float = WD,
              status: str = "finished", path_lrs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A run directory whose log follows the theory; returns the per-step truth (steps 1..len(lrs)).

    The norms follow the recursion at `wd` (WD when wd is 0) under `path_lrs` (default: the logged lrs).
    """
    path.mkdir(parents=True)
    cfg = make_config("bn", lr=float(lrs.max()), weight_decay=wd, momentum=mu, nesterov=nesterov,
                      lr_schedule=schedule, log_every=log_every, dataset="synthetic", width=2)
    (path / "config.json").write_text(cfg.to_json())
    (path / "status.json").write_text(json.dumps({"status": status}))
    steps = np.arange(1, len(lrs) + 1)
    v_after = norm4_path(lrs if path_lrs is None else path_lrs, v0, mu, wd or WD)
    v_before = np.concatenate([[v0], v_after[:-1]])
    w_before, w_after = v_before ** 0.25, v_after ** 0.25
    g = math.sqrt(L) / w_before
    angle = angle_scale * (lrs if path_lrs is None else path_lrs) * np.sqrt(s2(mu, nesterov) * L / v_before)
    rel = angle.copy()  # a norm-preserving turn's chord ~ the angle; only its ratio to dw matters here
    dw = rel * w_before
    cos = 1e-8 * np.where(steps % 2 == 0, 1.0, -1.0)
    # a classifier that is not scale-invariant: |cos| far above rounding, same step sizes
    rows = []
    for i, s in enumerate(steps):
        if s % log_every:
            continue
        common = [s, f"{s / STEPS_PER_EPOCH:.6g}", f"{lrs[i]:.10g}", 2.0, 0.5]
        rows.append(common + [INV, 100] + [f"{x:.12g}" for x in (w_after[i], g[i], dw[i], rel[i], cos[i], angle[i])])
        rows.append(common + [CLF, 20] + [f"{x:.12g}" for x in (1.0, 0.1, 0.01, 0.01, -0.05, 0.01)])
    head = "step,epoch,lr,loss,acc,param,numel,w_norm,g_norm,dw_norm,rel_step,cos_wg,angle\n"
    (path / "dynamics.csv").write_text(head + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return {"step": steps, "lr": lrs, "v_after": v_after, "v_before": v_before, "angle": angle, "rel": rel}


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def window(x: np.ndarray, frac: float = 0.25) -> np.ndarray:
    n = len(x)
    return x[n - math.ceil(frac * n):]


def first_staying(steps: np.ndarray, ok: list[bool]) -> int | None:
    """First step from which ok holds to the end, by a plain backwards loop."""
    if not ok[-1]:
        return None
    i = len(ok) - 1
    while i > 0 and ok[i - 1]:
        i -= 1
    return int(steps[i])


def trailing_rms(x: np.ndarray, k: int) -> np.ndarray:
    return np.array([rms(x[max(0, i + 1 - k):i + 1]) for i in range(len(x))])


def angle_eq(lr: float, mu: float = MU, nesterov: bool = True) -> float:
    # the weight-decay post's form: sqrt(2 lr wd / (1 + mu)), times k_N for Nesterov
    k_n = math.sqrt((1 + mu) ** 3 * (1 - mu) + mu ** 4) if nesterov else 1.0
    return math.sqrt(2 * lr * WD / (1 + mu)) * k_n


@pytest.mark.parametrize("nesterov", [True, False])
def test_constant_lr_every_reported_number(tmp_path: Path, nesterov: bool) -> None:
    lrs = np.full(400, LR)
    t = write_run(tmp_path / "run", lrs, nesterov=nesterov)
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1)
    r = rep.layer(INV)
    assert r.scale_invariant and r.invariance == "exact" and r.logged_steps == 400 and r.last_step == 400
    assert r.w_norm_init == pytest.approx(1.0) and r.w_norm_final == pytest.approx(t["v_after"][-1] ** 0.25)
    assert r.lr_final == LR and r.numel == 100
    assert r.angle == pytest.approx(rms(window(t["angle"])), rel=1e-9)
    assert r.rel_step == pytest.approx(rms(window(t["rel"])), rel=1e-9)
    assert r.grad_scale == pytest.approx(L, rel=1e-9)
    # equilibrium predictions at the constant lr
    assert r.angle_pred == pytest.approx(angle_eq(LR, nesterov=nesterov), rel=1e-12)
    assert r.ratio == pytest.approx(r.angle / r.angle_pred, rel=1e-12)
    assert r.rel_step_pred == pytest.approx(2 * math.sin(angle_eq(LR, nesterov=nesterov) / 2), rel=1e-12)
    assert r.rel_step_ratio == pytest.approx(r.rel_step / r.rel_step_pred, rel=1e-12)
    v_eq = LR * L / (2 * WD * (1 - MU))
    assert r.norm_pred == pytest.approx(v_eq ** 0.25, rel=1e-9)
    assert r.relaxation_steps == pytest.approx((1 - MU) / (4 * LR * WD)) == pytest.approx(50)
    # the lagged predictions reproduce a log that follows the recursion: ratios 1
    assert r.norm_lagged_pred == pytest.approx((v_eq + (1 - v_eq) * (1 - 0.02) ** 400) ** 0.25, rel=1e-8)
    assert r.norm_ratio == pytest.approx(1.0, abs=1e-8)
    assert r.angle_lagged_pred == pytest.approx(r.angle, rel=1e-8) and r.ratio_lagged == pytest.approx(1, abs=1e-8)
    # step counts: the angle relative to the equilibrium, and to its own end value, within 15%
    ratio = t["angle"] / angle_eq(LR, nesterov=nesterov)
    assert r.steps_to_equilibrium == first_staying(t["step"], [abs(q - 1) <= 0.15 for q in ratio])
    end = t["angle"][-1]
    assert r.steps_to_settle == first_staying(t["step"], [abs(a / end - 1) <= 0.15 for a in t["angle"]])
    # by hand: angle/eq = (v_eq / v_{s-1})^(1/2) is within 15% once v_{s-1} <= v_eq / 0.85^2
    s_eq = 1 + math.ceil(math.log((v_eq / 0.85 ** 2 - v_eq) / (1 - v_eq)) / math.log(0.98))
    assert r.steps_to_equilibrium == s_eq
    assert r.pythagoras_residual is None  # only defined for plain SGD without weight decay
    c = rep.layer(CLF)
    assert not c.scale_invariant and c.invariance == "no" and c.median_abs_cos == pytest.approx(0.05)
    assert None is c.angle_pred is c.ratio is c.angle_lagged_pred is c.norm_lagged_pred is c.norm_ratio
    assert c.steps_to_equilibrium is None and c.steps_to_settle == 1 and c.relaxation_steps == pytest.approx(50)
    # aggregate over the invariant layers
    a = rep.aggregate
    assert a["scale_invariant"] == [INV] and a["not_scale_invariant"] == [CLF]
    assert a["ratio_mean"] == a["ratio_min"] == a["ratio_max"] == pytest.approx(r.ratio)
    assert a["angle_pred"] == r.angle_pred and a["angle_mean"] == pytest.approx(r.angle)
    assert a["norm_spread"] == pytest.approx(1.0) and a["angle_cv"] == pytest.approx(0.0)
    th = rep.theory
    assert th["noise_gain_S2"] == pytest.approx(s2(MU, nesterov))
    assert th["nesterov_factor"] == pytest.approx(math.sqrt(1.9 ** 3 * 0.1 + 0.9 ** 4) if nesterov else 1.0)
    assert th["angle_eq_final_lr"] == pytest.approx(r.angle_pred) and th["lr_final"] == LR
    assert th["relaxation_steps_final_lr"] == pytest.approx(50) and th["smooth_logged_steps"] == 1


def test_smoothing_window_and_default(tmp_path: Path) -> None:
    lrs = np.full(400, LR)
    t = write_run(tmp_path / "run", lrs)
    ratio = trailing_rms(t["angle"], 7) / angle_eq(LR)
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=7)
    r = rep.layer(INV)
    assert r.steps_to_equilibrium == first_staying(t["step"], [abs(q - 1) <= 0.15 for q in ratio])
    inv = rep.series["param"] == INV
    np.testing.assert_allclose(rep.series["angle_smooth"][inv], trailing_rms(t["angle"], 7), rtol=1e-9)
    np.testing.assert_allclose(rep.series["ratio"][inv], ratio, rtol=1e-9)
    np.testing.assert_allclose(rep.series["grad_scale"][inv], L, rtol=1e-9)
    np.testing.assert_allclose(rep.series["norm_lagged"][inv], t["v_after"] ** 0.25, rtol=1e-8)
    np.testing.assert_allclose(rep.series["angle_lagged"][inv], t["angle"], rtol=1e-8)
    np.testing.assert_allclose(rep.series["angle_eq"][inv], angle_eq(LR), rtol=1e-12)
    v_eq = LR * L / (2 * WD * (1 - MU))
    np.testing.assert_allclose(rep.series["norm_eq"][inv], v_eq ** 0.25, rtol=1e-9)
    assert np.isnan(rep.series["ratio"][~inv]).all() and np.isnan(rep.series["angle_eq"][~inv]).all()
    # default smoothing: one epoch of logged steps (50 here)
    assert analyse_run(tmp_path / "run", check_checkpoint=False).theory["smooth_logged_steps"] == STEPS_PER_EPOCH


def test_eq_tol_and_window_options(tmp_path: Path) -> None:
    lrs = np.full(400, LR)
    t = write_run(tmp_path / "run", lrs)
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1, eq_tol=0.05, window=0.5)
    r = rep.layer(INV)
    assert r.angle == pytest.approx(rms(t["angle"][200:]), rel=1e-9)
    ratio = t["angle"] / angle_eq(LR)
    assert r.steps_to_equilibrium == first_staying(t["step"], [abs(q - 1) <= 0.05 for q in ratio])
    assert rep.window == 0.5 and rep.eq_tol == 0.05
    one = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1, window=1e-6).layer(INV)
    assert one.angle == pytest.approx(t["angle"][-1], rel=1e-9)  # at least the last logged step


def test_log_every_two_interpolates_the_steps_between(tmp_path: Path) -> None:
    """Logged every 2nd step: the lagged recursion still runs over every optimizer step."""
    lrs = np.full(400, LR)
    t = write_run(tmp_path / "run", lrs, log_every=2)
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1)
    r = rep.layer(INV)
    assert r.logged_steps == 200 and r.w_norm_init == pytest.approx(t["v_before"][1] ** 0.25)
    assert r.norm_ratio == pytest.approx(1.0, abs=1e-8)
    assert r.ratio_lagged == pytest.approx(1.0, abs=1e-8)
    assert r.angle == pytest.approx(rms(window(t["angle"][1::2])), rel=1e-9)


def test_lagged_prediction_under_a_schedule(tmp_path: Path) -> None:
    """Warm-up then decay (as piecewise does, ending above 0): the log follows the recursion step by
    step, so the lagged predictions match it while the instantaneous equilibrium does not."""
    lrs = np.concatenate([np.linspace(0.02, 0.2, 200), np.linspace(0.2, 0.05, 200)])
    t = write_run(tmp_path / "run", lrs, schedule="piecewise")
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1)
    r = rep.layer(INV)
    assert r.norm_ratio == pytest.approx(1.0, abs=1e-7)
    assert r.angle_lagged_pred == pytest.approx(rms(window(t["angle"])), rel=1e-7)
    eq = rms(np.sqrt(2 * window(lrs) * WD / 1.9) * math.sqrt(1.9 ** 3 * 0.1 + 0.9 ** 4))
    assert r.angle_pred == pytest.approx(eq, rel=1e-9)
    assert abs(r.angle / r.angle_pred - 1) > 0.05  # the lag matters here
    assert r.relaxation_steps == pytest.approx((1 - MU) / (4 * 0.05 * WD))


def test_heavy_ball_log_and_bad_theory_range(tmp_path: Path) -> None:
    lrs = np.full(300, LR)
    write_run(tmp_path / "hb", lrs, nesterov=False, mu=0.5)
    r = analyse_run(tmp_path / "hb", check_checkpoint=False, smooth=1).layer(INV)
    assert r.norm_ratio == pytest.approx(1.0, abs=1e-8) and r.ratio_lagged == pytest.approx(1.0, abs=1e-8)
    assert r.angle_pred == pytest.approx(angle_eq(LR, mu=0.5, nesterov=False), rel=1e-12)
    assert r.relaxation_steps == pytest.approx(0.5 / (4 * LR * WD))
    # lr * wd beyond the small-step theory (4 lr wd / (1 - mu) >= 1): no lagged prediction, no crash
    write_run(tmp_path / "big", np.full(50, 30.0), wd=0.01, path_lrs=np.full(50, LR))
    big = analyse_run(tmp_path / "big", check_checkpoint=False, smooth=1).layer(INV)
    assert big.norm_lagged_pred is None and big.norm_ratio is None and big.angle_lagged_pred is None
    assert big.angle_pred == pytest.approx(math.sqrt(2 * 30.0 * 0.01 / 1.9) * math.sqrt(1.9 ** 3 * 0.1 + 0.9 ** 4))


def test_no_weight_decay_no_equilibrium(tmp_path: Path) -> None:
    lrs = np.full(100, LR)
    write_run(tmp_path / "run", lrs, wd=0.0)
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1)
    r = rep.layer(INV)
    assert r.scale_invariant and r.angle_pred is None and r.angle_lagged_pred is None and r.ratio is None
    assert r.relaxation_steps is None and r.steps_to_equilibrium is None and r.norm_pred is None
    assert rep.theory["relaxation_steps_final_lr"] is None and rep.theory["angle_eq_final_lr"] == 0.0
    assert "ratio_mean" not in rep.aggregate


# ---------------------------------------------------------------------------------------------------
# Schedules: the report compares with the lagged prediction, says so, and stays quiet numerically.

def test_schedule_compares_with_the_lagged_prediction(tmp_path: Path) -> None:
    lrs = np.concatenate([np.linspace(0.02, 0.2, 200), np.linspace(0.2, 0.05, 200)])
    t = write_run(tmp_path / "run", lrs, schedule="piecewise")
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1)
    r = rep.layer(INV)
    assert rep.compare_to == "lagged" and rep.summary()["compare_to"] == "lagged"
    assert r.angle_ref == r.angle_lagged_pred and r.ratio == pytest.approx(1.0, abs=1e-7)
    assert r.rel_step_pred == pytest.approx(rms(2 * np.sin(window(t["angle"]) / 2)), rel=1e-7)
    assert r.steps_to_equilibrium == 1  # the log follows the lagged prediction from its first step
    inv = rep.series["param"] == INV
    np.testing.assert_allclose(rep.series["ratio"][inv], 1.0, atol=1e-7)
    np.testing.assert_allclose(rep.series["angle_ref"][inv], t["angle"], rtol=1e-7)
    assert rep.aggregate["ratio_mean"] == pytest.approx(1.0, abs=1e-7)
    assert rep.aggregate["angle_ref"] == r.angle_lagged_pred
    # a constant lr keeps comparing with the equilibrium
    write_run(tmp_path / "const", np.full(400, LR))
    const = analyse_run(tmp_path / "const", check_checkpoint=False, smooth=1)
    assert const.compare_to == "equilibrium" and const.layer(INV).angle_ref == const.layer(INV).angle_pred


def test_schedule_ending_at_lr_zero_no_runtime_warning(tmp_path: Path) -> None:
    """DavidNet's piecewise schedule ends at lr 0: no equilibrium there, no 'angle_eq 0 at lr 0' line, no
    divide-by-zero warnings, and the table says what the predictions are."""
    import warnings

    from bnlab.dynamics import format_table

    lrs = np.concatenate([np.linspace(0.0, 0.2, 100)[1:], np.linspace(0.2, 0.0, 301)])
    write_run(tmp_path / "run", lrs, schedule="piecewise", log_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        rep = analyse_run(tmp_path / "run", check_checkpoint=False)
        text = format_table(rep)
    assert rep.theory["lr_final"] == 0.0 and rep.theory["relaxation_steps_final_lr"] is None
    assert "lagged prediction under the piecewise lr schedule" in text and "ends at lr 0" in text
    assert "angle_eq 0" not in text and "rad/step at lr 0 " not in text
    r = rep.layer(INV)
    assert r.ratio is not None and math.isfinite(r.ratio) and r.relaxation_steps is None


def test_short_run_warning(tmp_path: Path) -> None:
    """tau = (1 - mu) / (4 lr wd) = 50 steps here: 40 steps are 0.8 relaxation times -> one warning line;
    400 steps are 8 -> none."""
    from bnlab.dynamics import format_table

    write_run(tmp_path / "short", np.full(40, LR))
    short = analyse_run(tmp_path / "short", check_checkpoint=False)
    assert short.relaxation_times == pytest.approx(40 / 50)
    assert len(short.warnings) == 1 and "40 steps are 0.8 relaxation times" in short.warnings[0]
    lines = [x for x in format_table(short).splitlines() if x.startswith("warning:")]
    assert lines == [f"warning: {short.warnings[0]}"]
    assert short.summary()["warnings"] == short.warnings
    write_run(tmp_path / "long", np.full(400, LR))
    long = analyse_run(tmp_path / "long", check_checkpoint=False)
    assert long.relaxation_times == pytest.approx(8.0) and long.warnings == []
    assert "warning" not in format_table(long)
    # under a schedule: the sum of 4 lr wd / (1 - mu) over the steps (log every 2nd step: interpolated)
    lrs = np.linspace(0.02, 0.2, 100)
    write_run(tmp_path / "ramp", lrs, schedule="piecewise", log_every=2)
    ramp = analyse_run(tmp_path / "ramp", check_checkpoint=False)
    lr_of_step = np.interp(np.arange(1, 101), np.arange(2, 101, 2), lrs[1::2])  # step 1 is before the first log
    assert ramp.relaxation_times == pytest.approx(float(np.sum(4 * lr_of_step * WD / (1 - MU))), rel=1e-9)
    write_run(tmp_path / "nowd", np.full(40, LR), wd=0.0)
    assert analyse_run(tmp_path / "nowd", check_checkpoint=False).warnings == []


def test_cli_on_a_scheduled_run_prints_no_runtime_warning(tmp_path: Path) -> None:
    import subprocess
    import sys

    from bnlab.checkpoint import save_checkpoint
    from bnlab.models import build_model

    lrs = np.concatenate([np.linspace(0.0, 0.2, 20)[1:], np.linspace(0.2, 0.0, 41)])
    write_run(tmp_path / "run", lrs, schedule="piecewise")
    # a checkpoint too, so the default Euler-identity check runs (zero BN biases: no direction, no warning)
    cfg = make_config("bn", width=2, dataset="synthetic")
    save_checkpoint(tmp_path / "run" / "last.pt", {"config": cfg.to_dict(),
                                                   "model": build_model(cfg.model).state_dict()})
    p = subprocess.run([sys.executable, "-m", "bnlab", "dynamics", str(tmp_path / "run"),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "Warning" not in p.stderr and "divide" not in p.stderr, p.stderr
    assert "lagged prediction under the piecewise lr schedule" in p.stdout
    assert sum(line.startswith("warning: short run") for line in p.stdout.splitlines()) == 1
    summary = json.loads((tmp_path / "out" / "dynamics_summary.json").read_text())
    assert summary["compare_to"] == "lagged" and summary["relaxation_times"] < 3


# ---------------------------------------------------------------------------------------------------
# Per-channel summaries, layer selection, the Euler-identity cross-check, the radial part of the steps.

def write_channels(path: Path, steps: np.ndarray, angles: list[float], cos: list[float]) -> None:
    """Channel rows of INV (channel k turns by angles[k] every step, |cos| = cos[k]), written unsorted."""
    rows = []
    for k, (a, c) in enumerate(zip(angles, cos)):
        for s in steps:
            rows.append([s, INV, k, f"{1.0 + 0.01 * k + 1e-4 * s:.10g}", 0.1, 0.01, f"{c * (-1) ** s:.6g}", a])
    rows = rows[::-1]  # the reader sorts by (param, channel, step)
    head = "step,param,channel,w_norm,g_norm,dw_norm,cos_wg,angle\n"
    (path / "dynamics_channels.csv").write_text(head + "".join(",".join(map(str, r)) + "\n" for r in rows))


def test_channel_summary_by_hand(tmp_path: Path) -> None:
    lrs = np.concatenate([np.full(100, 0.05), np.full(100, 0.2)])  # the lr per row comes from the main log
    write_run(tmp_path / "run", lrs, schedule="piecewise", log_every=2)
    steps = np.arange(2, 201, 2)
    write_channels(tmp_path / "run", steps, angles=[0.01, 0.02, 0.04], cos=[1e-7, 2e-6, 0.05])
    rep = analyse_run(tmp_path / "run", channels=True, check_checkpoint=False, window=0.25, layers=[INV])
    ch = rep.channels
    assert ch["param"].tolist() == [INV] * 3 and ch["channel"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(ch["median_abs_cos"], [1e-7, 2e-6, 0.05], rtol=1e-6)
    assert ch["scale_invariant"].tolist() == [1, 1, 0]
    np.testing.assert_allclose(ch["angle"], [0.01, 0.02, 0.04], rtol=1e-12)
    # final window: the last ceil(0.25 * 100) = 25 logged steps, all at lr 0.2
    np.testing.assert_allclose(ch["angle_pred"], angle_eq(0.2), rtol=1e-12)
    np.testing.assert_allclose(ch["ratio"], np.array([0.01, 0.02, 0.04]) / angle_eq(0.2), rtol=1e-12)
    np.testing.assert_allclose(ch["w_norm_final"], [1.0 + 0.01 * k + 0.02 for k in range(3)], rtol=1e-9)
    # a window reaching into the lr 0.05 half: the RMS of the equilibrium angles of the rows in it
    half = analyse_run(tmp_path / "run", channels=True, check_checkpoint=False, window=0.8).channels
    lr_rows = np.where(steps[-80:] <= 100, 0.05, 0.2)
    pred = math.sqrt(np.mean([angle_eq(x) ** 2 for x in lr_rows]))
    np.testing.assert_allclose(half["angle_pred"], pred, rtol=1e-12)
    # a selection without channel rows
    from bnlab.errors import BnlabError
    with pytest.raises(BnlabError, match="no rows for the selected layers"):
        analyse_run(tmp_path / "run", channels=True, check_checkpoint=False, layers=[CLF])
    write_run(tmp_path / "nowd", np.full(50, LR), wd=0.0)
    write_channels(tmp_path / "nowd", np.arange(1, 51), angles=[0.01], cos=[1e-7])
    nowd = analyse_run(tmp_path / "nowd", channels=True, check_checkpoint=False).channels
    assert np.isnan(nowd["angle_pred"]).all() and np.isnan(nowd["ratio"]).all()


def test_layer_selection_and_window_errors(tmp_path: Path) -> None:
    from bnlab.dynamics.analysis import match_layers
    from bnlab.errors import BnlabError

    params = ["a.conv.weight", "a.norm.weight", "ab.conv.weight", "classifier.weight"]
    assert match_layers(params, None) == params
    assert match_layers(params, ["a"]) == ["a.conv.weight", "a.norm.weight"]  # module prefix, not "ab"
    assert match_layers(params, ["classifier.weight", "*.conv.*"]) == ["a.conv.weight", "ab.conv.weight",
                                                                      "classifier.weight"]
    with pytest.raises(BnlabError, match="matches no logged parameter"):
        match_layers(params, ["layer9"])
    write_run(tmp_path / "run", np.full(20, LR))
    for w in (0.0, 1.5):
        with pytest.raises(BnlabError, match="--window must be in"):
            analyse_run(tmp_path / "run", check_checkpoint=False, window=w)
    whole = analyse_run(tmp_path / "run", check_checkpoint=False, window=1.0, smooth=1).layer(INV)
    assert whole.logged_steps == 20


def test_checkpoint_verdict_is_reported_beside_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bnlab.dynamics.analysis as analysis

    write_run(tmp_path / "run", np.full(100, LR))
    assert analysis.checkpoint_cos(tmp_path / "run") is None  # no checkpoint there
    (tmp_path / "run" / "final.pt").write_bytes(b"not a checkpoint")
    assert analysis.checkpoint_cos(tmp_path / "run") is None  # unreadable: the log stands alone
    monkeypatch.setattr(analysis, "checkpoint_cos", lambda run_dir: {INV: 0.3, CLF: 1e-6})
    rep = analyse_run(tmp_path / "run", smooth=1)
    assert rep.layer(INV).checkpoint_abs_cos == 0.3 and rep.layer(CLF).checkpoint_abs_cos == 1e-6
    assert rep.aggregate["checkpoint_disagrees"] == [INV, CLF]  # both verdicts flip at the same threshold
    monkeypatch.setattr(analysis, "checkpoint_cos", lambda run_dir: {INV: 1e-6, CLF: 0.3})
    assert analyse_run(tmp_path / "run", smooth=1).aggregate["checkpoint_disagrees"] == []


def test_real_checkpoint_euler_identity(tmp_path: Path) -> None:
    """A BN net's conv weights are scale-invariant by construction: |cos(w, grad)| ~ 0 in float64 on the
    checkpoint; the BN affine parameters and the classifier are not."""
    import torch

    from bnlab.checkpoint import save_checkpoint
    from bnlab.dynamics.analysis import checkpoint_cos
    from bnlab.models import build_model

    cfg = make_config("bn", width=2, dataset="synthetic")
    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "last.pt", {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    cos = checkpoint_cos(run)
    assert cos is not None and max(v for k, v in cos.items() if k.endswith("conv.weight")) < 1e-4  # BN eps: ~1e-6
    assert cos["classifier.weight"] > 1e-3


def test_radial_share_and_pythagoras(tmp_path: Path) -> None:
    """Plain SGD without weight decay on an invariant tensor: |w_a|^2 = |w_b|^2 + |dw|^2 (residual 0,
    radial cos 0). A log where every step shrinks the norm radially by 1% has radial cos -dw/(2 w)... by hand."""
    path = tmp_path / "pyth"
    path.mkdir()
    cfg = make_config("bn", lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False, lr_schedule="const",
                      dataset="synthetic", width=2)
    (path / "config.json").write_text(cfg.to_json())
    head = "step,epoch,lr,loss,acc,param,numel,w_norm,g_norm,dw_norm,rel_step,cos_wg,angle\n"
    rows, w = [], 1.0
    for s in range(1, 51):
        dw = 0.02 * w
        w_after = math.sqrt(w * w + dw * dw)
        rows.append(f"{s},{s / 10},0.1,2,0.5,{INV},10,{w_after:.15g},0.2,{dw:.15g},{dw / w:.15g},1e-9,0.02\n")
        w = w_after
    (path / "dynamics.csv").write_text(head + "".join(rows))
    r = analyse_run(path, check_checkpoint=False).layer(INV)
    assert r.pythagoras_residual == pytest.approx(0, abs=1e-9) and r.radial_cos == pytest.approx(0, abs=1e-9)
    # a pure turn (norm kept) has residual (|w_a|^2 - |w_b|^2 - |dw|^2) / |dw|^2 = -1
    turn = "".join(f"{s},{s / 10},0.1,2,0.5,{INV},10,1,0.2,0.02,0.02,1e-9,0.02\n" for s in range(1, 51))
    (path / "dynamics.csv").write_text(head + turn)
    assert analyse_run(path, check_checkpoint=False).layer(INV).pythagoras_residual == pytest.approx(1.0)
    (path / "dynamics.csv").write_text(head + "".join(rows))
    assert r.angle_pred is None and r.relaxation_steps is None
    assert r.w_norm_final == pytest.approx(w) and r.w_norm_init == pytest.approx(1.0)
    # weight decay on: the log that follows the theory has norms shrinking from 1 towards equilibrium
    t = write_run(tmp_path / "wd", np.full(100, LR))
    r = analyse_run(tmp_path / "wd", check_checkpoint=False, smooth=1).layer(INV)
    wb, wa = t["v_before"] ** 0.25, t["v_after"] ** 0.25
    dw = t["rel"] * wb
    assert r.radial_cos == pytest.approx(float(np.median((wa ** 2 - wb ** 2 - dw ** 2) / (2 * wb * dw))), rel=1e-6)
    assert r.pythagoras_residual is None and r.radial_cos < 0


def test_approximately_invariant_tier_gets_the_theory_flagged(tmp_path: Path) -> None:
    from bnlab.dynamics import format_table

    t = write_run(tmp_path / "run", np.full(200, LR))
    text = (tmp_path / "run" / "dynamics.csv").read_text().replace(",1e-08,", ",0.0005,").replace(",-1e-08,",
                                                                                                    ",0.0005,")
    (tmp_path / "run" / "dynamics.csv").write_text(text)
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1)
    r = rep.layer(INV)
    assert r.invariance == "approximate" and not r.scale_invariant and r.angle_pred is not None
    assert rep.aggregate["approximately_invariant"] == {INV: r.ratio}
    assert rep.aggregate["scale_invariant"] == [] and "ratio_mean" not in rep.aggregate
    assert r.ratio == pytest.approx(rms(window(t["angle"])) / angle_eq(LR), rel=1e-9)
    table = format_table(rep)
    assert "approximately invariant (~" in table and f"{INV} {r.ratio:.3f}" in table


def test_status_and_live_flag(tmp_path: Path) -> None:
    write_run(tmp_path / "live", np.full(30, LR), status="running")
    assert analyse_run(tmp_path / "live", check_checkpoint=False).live
    write_run(tmp_path / "gone", np.full(30, LR))
    (tmp_path / "gone" / "status.json").unlink()
    rep = analyse_run(tmp_path / "gone", check_checkpoint=False)
    assert rep.status == "unknown" and not rep.live


# ---------------------------------------------------------------------------------------------------
# The report's record and per-step series: their fields are what files and figures read.

SUMMARY_KEYS = {"run_dir", "status", "live", "hyper", "window", "eq_tol", "theory", "compare_to", "lr_schedule",
                "relaxation_times", "warnings", "aggregate", "layers"}
THEORY_KEYS = {"noise_gain_S2", "nesterov_factor", "lr_final", "angle_eq_final_lr", "rel_step_eq_final_lr",
               "relaxation_steps_final_lr", "smooth_logged_steps"}
PREDICTED = ("angle_eq", "angle_lagged", "norm_eq", "norm_lagged", "angle_ref", "ratio")


def test_report_record_and_series_columns(tmp_path: Path) -> None:
    from dataclasses import asdict

    t = write_run(tmp_path / "run", np.full(200, LR))
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1, window=0.5, eq_tol=0.2)
    summary = rep.summary()
    assert set(summary) == SUMMARY_KEYS
    assert (summary["run_dir"], summary["status"], summary["live"]) == (str(tmp_path / "run"), "finished", False)
    assert (summary["window"], summary["eq_tol"], summary["lr_schedule"]) == (0.5, 0.2, "const")
    assert summary["hyper"] == asdict(rep.hyper) and summary["hyper"]["wd"] == WD
    assert summary["relaxation_times"] == pytest.approx(200 / 50) and summary["warnings"] == rep.warnings
    assert summary["aggregate"] == rep.aggregate and summary["theory"] == rep.theory
    assert summary["layers"] == [asdict(r) for r in rep.layers] and [r["param"] for r in summary["layers"]] == [
        INV, CLF]
    assert set(rep.theory) == THEORY_KEYS
    assert rep.theory["rel_step_eq_final_lr"] == pytest.approx(2 * math.sin(angle_eq(LR) / 2), rel=1e-12)
    with pytest.raises(KeyError, match="no.such"):
        rep.layer("no.such")
    r, c = rep.layer(INV), rep.layer(CLF)
    assert r.p90_abs_cos == pytest.approx(1e-8) and c.p90_abs_cos == pytest.approx(0.05)
    assert c.norm_pred is None and c.angle_ref is None  # no theory for a tensor that is not scale-invariant
    # per-step series: both tensors' logged steps, the theory's columns NaN where it does not apply
    se = rep.series
    assert set(se) == {"step", "epoch", "lr", "param", "scale_invariant", "w_norm", "angle", "rel_step", "cos_wg",
                       "angle_smooth", "grad_scale", *PREDICTED}
    inv = se["param"] == INV
    assert inv.sum() == 200 and (se["param"][~inv] == CLF).all()
    np.testing.assert_array_equal(se["step"][inv], t["step"])
    np.testing.assert_allclose(se["epoch"][inv], t["step"] / STEPS_PER_EPOCH, rtol=1e-6)
    np.testing.assert_allclose(se["lr"], LR)
    assert se["scale_invariant"][inv].tolist() == [1] * 200 and se["scale_invariant"][~inv].tolist() == [0] * 200
    np.testing.assert_allclose(se["w_norm"][inv], t["v_after"] ** 0.25, rtol=1e-9)
    np.testing.assert_allclose(se["angle"][inv], t["angle"], rtol=1e-9)
    np.testing.assert_allclose(se["rel_step"][inv], t["rel"], rtol=1e-9)
    np.testing.assert_allclose(np.abs(se["cos_wg"][inv]), 1e-8, rtol=1e-9)
    np.testing.assert_allclose(se["angle_smooth"][inv], t["angle"], rtol=1e-9)  # smooth=1
    np.testing.assert_allclose(se["grad_scale"][inv], L, rtol=1e-9)
    for key in PREDICTED:
        assert np.isfinite(se[key][inv]).all() and np.isnan(se[key][~inv]).all(), key
    np.testing.assert_allclose(se["angle_eq"][inv], angle_eq(LR), rtol=1e-12)
    np.testing.assert_allclose(se["ratio"][inv], t["angle"] / angle_eq(LR), rtol=1e-9)


def test_no_weight_decay_series_has_no_predictions(tmp_path: Path) -> None:
    write_run(tmp_path / "run", np.full(60, LR), wd=0.0)
    se = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1).series
    for key in PREDICTED:
        assert np.isnan(se[key]).all(), key


def test_a_log_without_numel_and_epoch_columns(tmp_path: Path) -> None:
    write_run(tmp_path / "run", np.full(40, LR))
    lines = (tmp_path / "run" / "dynamics.csv").read_text().splitlines()
    cut = [",".join(v for i, v in enumerate(line.split(",")) if i not in (1, 6)) for line in lines]
    assert "numel" in lines[0] and "epoch" in lines[0] and "numel" not in cut[0] and "epoch" not in cut[0]
    (tmp_path / "run" / "dynamics.csv").write_text("\n".join(cut) + "\n")
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1)
    assert rep.layer(INV).numel == -1 and rep.layer(INV).scale_invariant
    assert rep.series["epoch"].dtype == np.float64 and np.isnan(rep.series["epoch"]).all()


def test_default_smoothing_is_about_an_epoch_within_bounds() -> None:
    from bnlab.dynamics.analysis import _default_smooth

    def table(steps: np.ndarray, per_epoch: float | None) -> dict:
        return {"step": steps} if per_epoch is None else {"step": steps, "epoch": steps / per_epoch}

    many = np.arange(1, 1001)
    assert _default_smooth(table(many, 100), 1) == 100  # one epoch of logged steps
    assert _default_smooth(table(many[3::4], 100), 4) == 25  # logged every 4th step
    assert _default_smooth(table(many, None), 1) == 50  # no epoch column: 50 steps
    assert _default_smooth(table(many, 2), 1) == 5  # at least 5 (a few momentum memories)
    assert _default_smooth(table(many[:100], 100), 1) == 20  # at most a fifth of the logged steps
    assert _default_smooth(table(many[:20], 100), 1) == 5  # ... but never below 5
    gap = np.concatenate([many[:999], [5000]])  # a late logged step: the last one sets the epoch length
    assert _default_smooth(table(gap, 100), 1) == 100


def test_step_helpers_at_their_edges() -> None:
    import warnings

    from bnlab.dynamics.analysis import _nanmean, _nanmedian, _rms, first_step_staying_within

    steps = np.array([3, 5, 7])
    assert first_step_staying_within(steps[:1], np.array([True])) == 3
    assert first_step_staying_within(steps[:1], np.array([False])) is None
    assert first_step_staying_within(steps, np.array([True, False, True])) == 7
    assert first_step_staying_within(steps, np.array([False, True, True])) == 5
    assert first_step_staying_within(steps[:0], np.array([], dtype=bool)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" from numpy
        for f in (_rms, _nanmedian, _nanmean):
            assert math.isnan(f(np.array([np.nan]))) and math.isnan(f(np.array([])))
    assert _rms(np.array([3.0, np.inf, -4.0])) == pytest.approx(math.sqrt(12.5))
    assert _nanmedian(np.array([1.0, np.nan, 5.0, 2.0])) == 2.0 and _nanmean(np.array([1.0, np.nan, 2.0])) == 1.5


def test_runs_that_stop_moving_give_no_numpy_warnings(tmp_path: Path) -> None:
    """Steps of size 0 (lr 0 at the end of a schedule; a channel that does not turn) must not flood the
    console: 0/0 and x/0 in the ratios are expected there and stay NaN/inf, silently."""
    import warnings

    lrs = np.concatenate([np.full(60, LR), np.zeros(60)])
    write_run(tmp_path / "run", lrs, schedule="piecewise")
    write_channels(tmp_path / "run", np.arange(1, 121), angles=[0.0, 0.01], cos=[1e-7, 1e-7])
    path = tmp_path / "sgd"  # plain SGD without weight decay: the Pythagoras residual, with zero steps
    path.mkdir()
    cfg = make_config("bn", lr=0.1, weight_decay=0.0, momentum=0.0, nesterov=False, lr_schedule="const",
                      dataset="synthetic", width=2)
    (path / "config.json").write_text(cfg.to_json())
    head = "step,epoch,lr,loss,acc,param,numel,w_norm,g_norm,dw_norm,rel_step,cos_wg,angle\n"
    rows = [f"{s},{s / 10},0.1,2,0.5,{INV},10,1.0,0.2,0,0,1e-9,0\n" for s in range(1, 21)]
    (path / "dynamics.csv").write_text(head + "".join(rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = analyse_run(tmp_path / "run", channels=True, check_checkpoint=False, smooth=1, window=0.25)
        still = analyse_run(path, check_checkpoint=False).layer(INV)
    assert rep.channels["ratio"][0] != rep.channels["ratio"][0]  # 0/0: NaN
    assert rep.channels["ratio"][1] == math.inf  # turning at lr 0: no finite prediction
    assert still.pythagoras_residual is None and math.isnan(still.radial_cos)
    assert still.w_norm_init == 1.0  # no step: the norm before is the norm after


def test_the_lagged_prediction_reproduces_every_logged_step(tmp_path: Path) -> None:
    # the log follows the recursion from ||w_0|| = 1: the lagged angle equals the logged one at every step,
    # the first included (it uses the initial norm)
    t = write_run(tmp_path / "run", np.full(150, LR), v0=2.0)
    se = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1).series
    inv = se["param"] == INV
    np.testing.assert_allclose(se["angle_lagged"][inv], t["angle"], rtol=1e-8)
    np.testing.assert_allclose(se["norm_lagged"][inv], t["v_after"] ** 0.25, rtol=1e-8)
    np.testing.assert_allclose(se["norm_eq"][inv], (LR * L / (2 * WD * (1 - MU))) ** 0.25, rtol=1e-9)


def test_options_and_record_fields_that_steer_the_theory(tmp_path: Path) -> None:
    from bnlab.dynamics.analysis import EQUILIBRIUM, LAGGED, Hyper

    assert Hyper.of(make_config("bn", momentum=0.9, nesterov=True, dataset="synthetic")).nesterov is True
    # the |cos| threshold of scale invariance is the caller's
    write_run(tmp_path / "run", np.full(100, LR), schedule="piecewise")
    strict = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1, cos_tol=1e-9)
    assert not strict.layer(INV).scale_invariant and strict.compare_to == LAGGED
    # a schedule without weight decay has no lagged theory to compare with
    write_run(tmp_path / "nowd", np.full(100, LR), schedule="piecewise", wd=0.0)
    nowd = analyse_run(tmp_path / "nowd", check_checkpoint=False, smooth=1)
    assert nowd.compare_to == EQUILIBRIUM and nowd.layer(INV).pythagoras_residual is None  # momentum 0.9
    # the default smoothing counts logged steps: logged every 2nd step, an epoch is 25 of them
    write_run(tmp_path / "every2", np.full(400, LR), log_every=2)
    assert analyse_run(tmp_path / "every2", check_checkpoint=False).theory["smooth_logged_steps"] == 25


def test_short_run_warning_from_three_relaxation_times_on(tmp_path: Path) -> None:
    # lr 1/2, wd 1/16, momentum 1/2: each step is 4 lr wd / (1 - mu) = 1/4 relaxation time, exactly
    for steps, warned in ((12, False), (11, True)):
        write_run(tmp_path / f"r{steps}", np.full(steps, 0.5), wd=0.0625, mu=0.5)
        rep = analyse_run(tmp_path / f"r{steps}", check_checkpoint=False, smooth=1)
        assert rep.relaxation_times == steps / 4 and bool(rep.warnings) is warned


def test_steps_to_settle_use_the_final_value(tmp_path: Path) -> None:
    # a jump at the very last step: nothing before it is within 15% of the final angle
    write_run(tmp_path / "run", np.concatenate([np.full(199, LR), [2.0 * LR]]))
    assert analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1).layer(INV).steps_to_settle == 200


def test_aggregate_over_several_invariant_layers(tmp_path: Path) -> None:
    from dataclasses import replace

    from bnlab.dynamics.analysis import aggregate

    write_run(tmp_path / "run", np.full(100, LR))
    r = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1).layer(INV)
    layers = [replace(r, param="a", angle=0.01, w_norm_final=1.0), replace(r, param="b", angle=0.03, w_norm_final=4.0)]
    agg = aggregate(layers)
    assert agg["angle_mean"] == pytest.approx(0.02) and agg["angle_cv"] == pytest.approx(0.5)
    assert (agg["norm_min"], agg["norm_max"], agg["norm_spread"]) == (1.0, 4.0, 4.0)
    assert aggregate([replace(layers[0], w_norm_final=0.0), layers[1]])["norm_spread"] is None
    assert aggregate([replace(layer, angle=0.0) for layer in layers])["angle_cv"] is None


def test_channel_groups_medians_and_types(tmp_path: Path) -> None:
    """Two tensors' channels, |cos| and angles varying along the steps: medians and final windows per group."""
    write_run(tmp_path / "run", np.full(39, LR))
    rows = []
    for param in (INV, CLF):
        for ch in range(2):
            for s in range(1, 40):
                cos = ((s * 17) % 39 + 1) * 1e-7 * (ch + 1)  # |cos| takes each of 1..39 (x ch + 1) e-7 once
                rows.append(f"{s},{param},{ch},1.0,0.1,0.01,{cos:.6g},{0.001 * s * (ch + 1):.10g}\n")
    head = "step,param,channel,w_norm,g_norm,dw_norm,cos_wg,angle\n"
    (tmp_path / "run" / "dynamics_channels.csv").write_text(head + "".join(rows))
    ch = analyse_run(tmp_path / "run", channels=True, check_checkpoint=False, window=0.025).channels
    assert ch["param"].tolist() == [INV, INV, CLF, CLF] and ch["channel"].tolist() == [0, 1, 0, 1]
    assert ch["channel"].dtype.kind == "i" and ch["scale_invariant"].dtype.kind == "i"
    np.testing.assert_allclose(ch["median_abs_cos"], [20e-7, 40e-7] * 2, rtol=1e-6)  # the 20th of 39
    # window 0.025 of 39 steps: the last step alone
    np.testing.assert_allclose(ch["angle"], [0.039, 0.078] * 2, rtol=1e-9)


def test_checkpoint_lookup_final_first_then_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import bnlab.dynamics.analysis as analysis
    from bnlab.checkpoint import save_checkpoint
    from bnlab.models import build_model

    cfg = make_config("bn", width=2, dataset="synthetic")
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    save_checkpoint(run / "final.pt", {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    assert analysis.checkpoint_cos(run) is not None  # final.pt alone
    (run / "final.pt").write_bytes(b"being replaced")
    torch.manual_seed(0)
    save_checkpoint(run / "last.pt", {"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()})
    assert analysis.checkpoint_cos(run) is not None  # an unreadable final.pt: last.pt is next
    write_run(tmp_path / "logged", np.full(50, LR))
    asked = []
    monkeypatch.setattr(analysis, "checkpoint_cos", lambda run_dir: asked.append(run_dir) or {INV: 0.5})
    assert analyse_run(tmp_path / "logged", check_checkpoint=False).layer(INV).checkpoint_abs_cos is None
    assert asked == []
    assert analyse_run(tmp_path / "logged").layer(INV).checkpoint_abs_cos == 0.5
    assert asked == [tmp_path / "logged"]


def write_gradcorr(path: Path, steps: np.ndarray, rho: dict[str, list[float]], early: list[float] | None = None,
                   from_step: int = 0) -> None:
    """dynamics_gradcorr.csv: per tensor the lags `rho` at every step >= from_step, `early` before it."""
    k = len(next(iter(rho.values())))
    lines = ["step,param," + ",".join(f"gcos_{i}" for i in range(1, k + 1))]
    for s in steps:
        for name, r in rho.items():
            vals = r if s >= from_step or early is None else early
            lines.append(f"{s},{name}," + ",".join("" if math.isnan(v) else f"{v:.12g}" for v in vals))
    (path / "dynamics_gradcorr.csv").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("nesterov", [True, False])
def test_the_logged_autocorrelation_corrects_the_prediction(tmp_path: Path, nesterov: bool) -> None:
    """rho from the final window only (other values before it), the correction factor is theory's for that rho
    (Nesterov moves, heavy ball does not), ratio_corr = ratio / factor; no theory, no correction."""
    lrs = np.full(400, LR)
    t = write_run(tmp_path / "run", lrs, nesterov=nesterov)
    rho = [-0.4, 0.1, 0.0]
    write_gradcorr(tmp_path / "run", t["step"], {INV: rho, CLF: rho}, early=[0.9, 0.8, 0.7], from_step=301)
    rep = analyse_run(tmp_path / "run", check_checkpoint=False, smooth=1)
    r = rep.layer(INV)
    assert r.grad_autocorr == pytest.approx(rho, abs=1e-12)
    # the factor by the derivation's sums written out (tests/test_theory.py checks those against simulation)
    a = np.array([(1 + MU if k == 0 else MU ** (k + 1)) if nesterov else MU ** k for k in range(400)])
    full = np.concatenate([[1.0], rho])
    corr = lambda m: full[abs(m)] if abs(m) < len(full) else 0.0  # noqa: E731
    S = sum(a[j] * a[k] * corr(j - k) for j in range(400) for k in range(max(0, j - 4), min(400, j + 4)))
    u = [sum(a[j] * corr(m - j) for j in range(max(0, m - 3), min(400, m + 4))) for m in range(400)]
    C = sum(a[k] * sum(u[:k]) for k in range(1, 400))
    factor = math.sqrt((S / (S + 2 * C)) / ((1 - MU) * s2(MU, nesterov)) / (1 - MU))
    assert r.corr_factor == pytest.approx(factor, rel=1e-9)
    assert (r.corr_factor > 1.05) if nesterov else (r.corr_factor == pytest.approx(1.0, abs=1e-9))
    assert r.ratio_corr == pytest.approx(r.ratio / r.corr_factor, rel=1e-12)
    # the norm: ||w||^4 at equilibrium scales with S_rho + 2 C_rho (A^2 uncorrelated), for either filter
    assert r.norm_corr_factor == pytest.approx(((S + 2 * C) / (1 / (1 - MU)) ** 2) ** 0.25, rel=1e-9)
    assert r.norm_corr_factor < 0.97  # anticorrelated lag 1: less drive, a smaller norm
    assert r.norm_ratio_corr == pytest.approx(r.norm_ratio / r.norm_corr_factor, rel=1e-12)
    c = rep.layer(CLF)
    assert c.grad_autocorr == pytest.approx(rho) and c.corr_factor is None and c.ratio_corr is None
    assert c.norm_corr_factor is None and c.norm_ratio_corr is None


def test_no_autocorrelation_where_the_window_has_none(tmp_path: Path) -> None:
    """Without the file, or with a lag that is NaN all through the final window, nothing is corrected."""
    lrs = np.full(200, LR)
    t = write_run(tmp_path / "a", lrs)
    r = analyse_run(tmp_path / "a", check_checkpoint=False).layer(INV)
    assert r.grad_autocorr is None and r.corr_factor is None and r.ratio_corr is None
    t = write_run(tmp_path / "b", lrs)
    write_gradcorr(tmp_path / "b", t["step"], {INV: [0.2, math.nan], CLF: [0.2, math.nan]})
    r = analyse_run(tmp_path / "b", check_checkpoint=False).layer(INV)
    assert r.grad_autocorr is None and r.corr_factor is None and r.ratio_corr is None
    assert r.norm_corr_factor is None and r.norm_ratio_corr is None


def test_a_dozen_lags_come_back_in_lag_order_each_tensor_its_own(tmp_path: Path) -> None:
    """gcos_10.. sort after gcos_9 (by number, not as text), and each tensor reads only its own rows."""
    t = write_run(tmp_path / "run", np.full(200, LR))
    inv = [0.01 * k * (-1) ** k for k in range(1, 13)]
    clf = [0.5 * v for v in inv]
    write_gradcorr(tmp_path / "run", t["step"], {INV: inv, CLF: clf})
    rep = analyse_run(tmp_path / "run", check_checkpoint=False)
    assert rep.layer(INV).grad_autocorr == pytest.approx(inv, abs=1e-12)
    assert rep.layer(CLF).grad_autocorr == pytest.approx(clf, abs=1e-12)


def test_a_run_of_one_logged_step_is_analysed(tmp_path: Path) -> None:
    write_run(tmp_path / "run", np.full(1, LR))
    r = analyse_run(tmp_path / "run", check_checkpoint=False).layer(INV)
    assert (r.numel, r.logged_steps) == (100, 1)


def test_the_correction_leaves_a_missing_ratio_missing() -> None:
    """Where the window has no prediction (lr 0 at the end of a schedule: ratio None), only the factors exist."""
    hyper = Hyper(wd=WD, momentum=MU, nesterov=True)
    out = _correlated([-0.3], None, None, hyper, True)
    assert out["ratio_corr"] is None and out["norm_ratio_corr"] is None
    assert out["corr_factor"] > 1 and 0 < out["norm_corr_factor"] < 1
    both = _correlated([-0.3], 1.2, 0.9, hyper, True)
    assert both["ratio_corr"] == pytest.approx(1.2 / out["corr_factor"])
    assert both["norm_ratio_corr"] == pytest.approx(0.9 / out["norm_corr_factor"])
