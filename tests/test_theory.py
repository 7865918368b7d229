"""bnlab.theory against simulations of torch.optim.SGD on scale-invariant weights (bnlab.dynamics.simulate)."""
from __future__ import annotations

import numpy as np
import pytest

from bnlab import theory
from bnlab.dynamics.simulate import simulate_sphere
from bnlab.errors import BnlabError

WD = 2e-3


def test_nesterov_factor_formula() -> None:
    assert theory.nesterov_factor(0.9) == pytest.approx(1.1585, abs=1e-4)
    # k_N^2 = S2_nesterov / S2_heavy_ball, the derivation's identity
    for mu in (0.3, 0.5, 0.9, 0.99):
        ratio = theory.noise_gain(mu, True) / theory.noise_gain(mu, False)
        assert ratio == pytest.approx(theory.nesterov_factor(mu) ** 2, rel=1e-12)


@pytest.mark.parametrize("momentum,nesterov,lr", [(0.0, False, 0.05), (0.9, False, 0.05), (0.9, True, 0.05),
                                                  (0.5, True, 0.05)])
def test_equilibrium_angle_and_norm_vs_simulation(momentum: float, nesterov: bool, lr: float) -> None:
    """Start at the predicted norm; after 300 steps the RMS angle and mean ||w||^4 match within 1%."""
    n0 = theory.equilibrium_norm(lr, WD, momentum, 1.0)
    run = simulate_sphere(np.full(1500, lr), WD, momentum, nesterov, dim=256, rows=48, norm0=n0, seed=1)
    angle = np.sqrt(np.mean(run.angle[300:] ** 2))
    assert angle == pytest.approx(theory.equilibrium_angle(lr, WD, momentum, nesterov), rel=0.01)
    rel = np.sqrt(np.mean(run.rel_step[300:] ** 2))
    assert rel == pytest.approx(theory.equilibrium_rel_step(lr, WD, momentum, nesterov), rel=0.01)
    assert np.mean(run.norm[300:] ** 4) == pytest.approx(n0 ** 4, rel=0.01)


def test_plain_formulas() -> None:
    assert theory.equilibrium_angle(0.1, 5e-4) == pytest.approx(np.sqrt(2 * 0.1 * 5e-4))
    assert theory.equilibrium_angle(0.1, 5e-4, 0.9) == pytest.approx(np.sqrt(2 * 0.1 * 5e-4 / 1.9))
    assert theory.relaxation_steps(0.4, 5e-4, 0.9) == pytest.approx(125)
    with pytest.raises(BnlabError):
        theory.noise_gain(0.0, True)


def test_relaxation_time_vs_simulation() -> None:
    """||w||^4 approaches equilibrium like exp(-t / tau), tau = (1-mu) / (4 lr wd): fitted tau within 3%
    (steps 30..400; the first steps are skipped because the momentum buffer starts empty)."""
    lr, mu = 0.05, 0.9
    veq = theory.equilibrium_norm(lr, WD, mu, 1.0) ** 4
    run = simulate_sphere(np.full(400, lr), WD, mu, True, dim=256, rows=48, norm0=(0.6 * veq) ** 0.25, seed=2)
    v = np.mean(run.norm ** 4, axis=1)
    t = np.arange(1, 401)
    tau = -1 / np.polyfit(t[30:], np.log(veq - v[30:]), 1)[0]
    assert tau == pytest.approx(theory.relaxation_steps(lr, WD, mu), rel=0.03)


def test_lagged_prediction_under_schedule() -> None:
    """Linear warm-up then decay: the lagged recursion tracks ||w|| within 1% and the angle within 1%
    (50-step windows, after the momentum buffer's warm-up), where the instantaneous equilibrium is far off."""
    wd, mu = 1e-3, 0.9
    lrs = np.concatenate([np.linspace(0.02, 0.1, 600), np.linspace(0.1, 0.02, 600)])
    n0 = theory.equilibrium_norm(0.02, wd, mu, 1.0)
    run = simulate_sphere(lrs, wd, mu, True, dim=256, rows=48, norm0=n0, seed=3)
    v = theory.lagged_norm4(lrs, wd, mu, 1.0, n0 ** 4)
    assert np.abs(np.mean(run.norm ** 4, axis=1) ** 0.25 / v ** 0.25 - 1).max() < 0.01
    v_before = np.concatenate([[n0 ** 4], v[:-1]])
    pred = theory.lagged_angle(lrs, v_before, 1.0, mu, True)
    meas_w = np.sqrt(np.mean(run.angle.reshape(-1, 50, 48) ** 2, axis=(1, 2)))
    pred_w = np.sqrt(np.mean(pred.reshape(-1, 50) ** 2, axis=1))
    assert np.abs(meas_w[1:] / pred_w[1:] - 1).max() < 0.012
    inst = theory.equilibrium_angle(lrs.reshape(-1, 50).mean(1), wd, mu, True)
    assert np.abs(meas_w / inst - 1).max() > 0.2  # the lag matters: the instantaneous theory is not enough


def test_lagged_norm4_chunked_matches_loop() -> None:
    rng = np.random.default_rng(0)
    lrs = rng.uniform(0.05, 0.5, 3000)
    L = rng.uniform(0.5, 2.0, 3000)
    v = theory.lagged_norm4(lrs, 5e-3, 0.9, L, 2.0)
    ref, x = [], 2.0
    A = 10.0
    for lr, li in zip(lrs, L):
        x = x * (1 - 4 * lr * 5e-3 * A) + 2 * lr ** 2 * A ** 2 * li
        ref.append(x)
    np.testing.assert_allclose(v, ref, rtol=1e-9)
