"""bnlab.theory against simulations of torch.optim.SGD on scale-invariant weights (bnlab.dynamics.simulate)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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


def test_defaults_and_closed_forms_by_hand() -> None:
    """Each formula at hand-picked numbers, with the defaults (plain SGD) and a gradient scale L != 1."""
    assert theory.noise_gain() == 1.0 and theory.noise_gain(0.5) == pytest.approx(1 / 0.75)
    assert theory.noise_gain(0.5, True) == pytest.approx(1.5 ** 2 + 0.5 ** 4 / 0.75)
    assert theory.filter_sum(0.75) == pytest.approx(4.0)
    assert theory.equilibrium_rel_step(0.1, 5e-4) == pytest.approx(2 * np.sin(np.sqrt(1e-4) / 2), rel=1e-12)
    assert theory.relaxation_steps(0.1, 5e-4) == pytest.approx(5000.0)
    # ||w||^4 = lr L / (2 wd (1 - mu)): L = 4, lr 0.1, wd 1e-3, mu 0.5 -> 400
    assert theory.equilibrium_norm(0.1, 1e-3, 0.5, 4.0) == pytest.approx(400 ** 0.25)
    # theta = lr sqrt(S2 L / ||w||^4): S2 = 1 (plain), L = 4, ||w||^4 = 2 -> 0.1 sqrt(2)
    assert theory.lagged_angle(np.array([0.1]), np.array([2.0]), 4.0, 0.0, False)[0] == pytest.approx(0.1 * 2 ** 0.5)
    s2 = theory.noise_gain(0.5, True)
    assert theory.lagged_angle(0.1, 2.0, 4.0, 0.5, True) == pytest.approx(0.1 * np.sqrt(s2 * 2))
    # integer inputs are numbers, not integer arrays: one step from v = 1 at lr 1, wd 1e-3, mu 0, L 1
    v = theory.lagged_norm4(np.array([1, 1]), 1e-3, 0.0, 1, 1)
    assert v[0] == pytest.approx(1 * (1 - 4e-3) + 2) and v[1] == pytest.approx(v[0] * (1 - 4e-3) + 2)
    assert theory.lagged_norm4(np.array([]), 1e-3, 0.9, 1.0, 1.0).shape == (0,)


def test_momentum_range_and_small_step_limit() -> None:
    for mu in (-0.1, 1.0, 1.5):
        with pytest.raises(BnlabError, match="momentum must be in"):
            theory.noise_gain(mu)
    # 4 lr wd / (1 - mu) >= 1: no small-step theory, even exactly at 1
    for lr in (0.25, 0.3):
        with pytest.raises(BnlabError, match="too large"):
            theory.lagged_norm4(np.array([0.01, lr]), 1.0, 0.0, 1.0, 1.0)


def test_zero_lr_or_wd_give_infinities_quietly() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a schedule ending at lr 0 must not print divide-by-zero warnings
        assert theory.relaxation_steps(0.0, 5e-4, 0.9) == np.inf
        assert theory.equilibrium_norm(0.1, 0.0, 0.9, 1.0) == np.inf
        assert theory.equilibrium_angle(0.0, 5e-4, 0.9, True) == 0.0


def test_lagged_norm4_extreme_decay_and_long_runs() -> None:
    """Chunked cumulative products stay finite where one exp(-cumsum(log decay)) would overflow."""
    def loop(lrs, wd, mu, L, v):
        a, out = 1 / (1 - mu), []
        for lr in lrs:
            v = v * (1 - 4 * lr * wd * a) + 2 * lr ** 2 * a ** 2 * L
            out.append(v)
        return np.array(out)

    # the strongest decay float64 allows: 2^-52 per step (log -36), so chunks of a few steps only
    lrs = np.full(100, (1 - 2.0 ** -52) / 4)
    np.testing.assert_allclose(theory.lagged_norm4(lrs, 1.0, 0.0, 1.0, 3.0), loop(lrs, 1.0, 0.0, 1.0, 3.0), rtol=1e-9)
    # 20000 steps at 4 lr wd A = 0.1: the total log decay is -2100, far beyond exp's range
    lrs = np.full(20000, 0.5)
    got = theory.lagged_norm4(lrs, 5e-3, 0.9, 2.0, 7.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, loop(lrs, 5e-3, 0.9, 2.0, 7.0), rtol=1e-9)


def _diverges(eta_lambda: float, momentum: float, nesterov: bool) -> bool:
    """torch SGD on f(x) = x²/2 (curvature 1) with lr eta_lambda: does |x| grow?"""
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([x], lr=eta_lambda, momentum=momentum, nesterov=nesterov)
    for _ in range(4000):
        opt.zero_grad()
        (0.5 * x ** 2).sum().backward()
        opt.step()
    return bool(x.abs() > 1)


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True), (0.5, True)])
def test_stability_threshold_matches_simulated_sgd(momentum: float, nesterov: bool) -> None:
    t = theory.stability_threshold(momentum, nesterov)
    assert not _diverges(t * 0.995, momentum, nesterov)
    assert _diverges(t * 1.005, momentum, nesterov)


def test_stability_threshold_defaults_and_domain() -> None:
    assert theory.stability_threshold() == 2.0  # plain SGD
    with pytest.raises(BnlabError, match="momentum must be in"):
        theory.stability_threshold(1.0)
    with pytest.raises(BnlabError, match="Nesterov needs momentum"):
        theory.stability_threshold(0.0, nesterov=True)


# -- correlated gradients: the prediction when cos(g_t, g_{t-k}) != 0 ----------------------------------------

def _filter_sums_by_hand(mu: float, nesterov: bool, rho: list[float], n: int = 600) -> tuple[float, float]:
    """S_rho and C_rho as the double and triple sums of the derivation, written out with loops (the truth the
    vectorised `correlation_sums` is checked against)."""
    a = [(1 + mu if k == 0 else mu ** (k + 1)) if nesterov else mu ** k for k in range(n)]
    r = lambda m: rho[abs(m)] if abs(m) < len(rho) else 0.0  # noqa: E731
    S = sum(a[j] * a[k] * r(j - k) for j in range(n) for k in range(max(0, j - len(rho)), min(n, j + len(rho))))
    u = [sum(a[j] * r(m - j) for j in range(max(0, m - len(rho) + 1), min(n, m + len(rho)))) for m in range(n)]
    C = sum(a[k] * sum(u[:k]) for k in range(1, n))
    return S, C


@pytest.mark.parametrize("mu,nesterov,rho", [(0.9, True, [1.0, -0.4]), (0.9, False, [1.0, 0.3, -0.2]),
                                             (0.5, True, [1.0, 0.6, 0.36, 0.2]), (0.0, False, [1.0, 0.5])])
def test_correlation_sums_equal_the_derivations_sums(mu: float, nesterov: bool, rho: list[float]) -> None:
    S, C = theory.correlation_sums(mu, nesterov, np.array(rho))
    S_ref, C_ref = _filter_sums_by_hand(mu, nesterov, rho, n=300 if mu else 8)
    assert S == pytest.approx(S_ref, rel=1e-10)
    assert C == pytest.approx(C_ref, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("mu,nesterov", [(0.0, False), (0.5, False), (0.9, False), (0.5, True), (0.9, True)])
def test_uncorrelated_gradients_give_the_equilibrium_angle(mu: float, nesterov: bool) -> None:
    """rho = [1]: S_rho = S2, S_rho + 2 C_rho = A^2, and the angle is `equilibrium_angle`."""
    S, C = theory.correlation_sums(mu, nesterov, np.array([1.0]))
    assert S == pytest.approx(theory.noise_gain(mu, nesterov), rel=1e-12)
    assert S + 2 * C == pytest.approx(theory.filter_sum(mu) ** 2, rel=1e-12)
    assert theory.correlated_angle(0.3, 1e-3, mu, nesterov, np.array([1.0])) == pytest.approx(
        theory.equilibrium_angle(0.3, 1e-3, mu, nesterov), rel=1e-12)
    assert theory.correlation_factor(mu, nesterov, np.array([1.0])) == pytest.approx(1.0, rel=1e-12)


def test_a_constant_gradient_direction_in_closed_form() -> None:
    """rho_k = 1 for all k (long-range correlation): S = A^2, C = A sum_k k a_k, so
    theta^2 = 2 eta lambda A / (1 + 2 sum_k k a_k / A): heavy ball 2 eta lambda / (1 + mu) (as uncorrelated),
    Nesterov 2 eta lambda A / (1 + 2 mu^2 A)."""
    mu, lr, wd = 0.9, 0.2, 1e-3
    rho = np.ones(400)
    A = 1 / (1 - mu)
    assert theory.correlated_angle(lr, wd, mu, False, rho) == pytest.approx(np.sqrt(2 * lr * wd / (1 + mu)), rel=1e-6)
    assert theory.correlated_angle(lr, wd, mu, True, rho) == pytest.approx(
        np.sqrt(2 * lr * wd * A / (1 + 2 * mu ** 2 * A)), rel=1e-6)


def test_heavy_balls_angle_does_not_depend_on_the_correlation() -> None:
    """Any autocorrelation (here random positive-definite ones: the normalised autocorrelation of a random
    filter's output) leaves heavy ball's angle at sqrt(2 eta lambda / (1 + mu)); Nesterov's moves."""
    gen = np.random.default_rng(0)
    moved = []
    for _ in range(5):
        h = gen.normal(size=6)
        ac = np.correlate(h, h, "full")[len(h) - 1:]
        rho = ac / ac[0]
        for mu in (0.5, 0.9):
            assert theory.correlation_factor(mu, False, rho) == pytest.approx(1.0, abs=1e-9)
        moved.append(abs(theory.correlation_factor(0.9, True, rho) - 1))
    assert max(moved) > 0.02


@pytest.mark.parametrize("corr", [-0.5, 0.5])
def test_correlated_angle_vs_simulation(corr: float) -> None:
    """torch's Nesterov on AR(1)-correlated gradient noise (cos(g_t, g_{t-k}) ~ c^k): the measured RMS angle
    and mean ||w||^4 match the correlated prediction within 1.5% where the uncorrelated one is >= 4% off."""
    lr, wd, mu = 0.05, WD, 0.9
    rho = corr ** np.arange(60)
    S, C = theory.correlation_sums(mu, True, rho)
    A = theory.filter_sum(mu)
    v_eq = lr * 1.0 * (S + 2 * C) / (2 * wd * A)  # ||w||^4 at the correlated equilibrium (L = 1)
    run = simulate_sphere(np.full(1500, lr), wd, mu, True, dim=256, rows=48, norm0=v_eq ** 0.25, seed=4,
                          grad_corr=corr)
    angle = np.sqrt(np.mean(run.angle[300:] ** 2))
    pred = theory.correlated_angle(lr, wd, mu, True, rho)
    assert angle == pytest.approx(pred, rel=0.015)
    assert abs(angle / theory.equilibrium_angle(lr, wd, mu, True) - 1) >= 0.04
    assert np.mean(run.norm[300:] ** 4) == pytest.approx(v_eq, rel=0.015)
    v_plain = theory.equilibrium_norm(lr, wd, mu, 1.0) ** 4
    assert theory.correlation_norm_factor(mu, True, rho) == pytest.approx((v_eq / v_plain) ** 0.25, rel=1e-12)


@pytest.mark.parametrize("rho", [[], [0.9, 0.1], [1.0, float("nan")], [[1.0]]])
def test_a_bad_autocorrelation_is_refused(rho: list) -> None:
    with pytest.raises(BnlabError, match="rho must be"):
        theory.correlation_sums(0.9, True, np.array(rho))


def test_the_filter_refuses_nesterov_without_momentum() -> None:
    with pytest.raises(BnlabError, match="Nesterov needs momentum > 0"):
        theory.filter_coefficients(0.0, True, 4)
    assert theory.filter_coefficients(0.0, False, 3) == pytest.approx([1.0, 0.0, 0.0])
    assert theory.filter_coefficients(0.5, True, 3) == pytest.approx([1.5, 0.25, 0.125])
