"""Spherical-motion theory of scale-invariant weights under SGD + weight decay.

See docs/background.md ("The weight-decay post") for where it comes from.

Setting: a weight tensor w followed by BN, so the loss is invariant to its scale. Then (Euler)
the loss gradient g is orthogonal to w and ``||g|| = sqrt(L) / ||w||`` with ``L = E ||g||^2 ||w||^2``
independent of the scale. The optimizer is ``torch.optim.SGD`` with weight decay lambda added to the
gradient *before* momentum mu (torch semantics)::

    d_t = g_t + lambda w_t;   b_t = mu b_{t-1} + d_t;   w_{t+1} = w_t - eta s_t,
    s_t = b_t                 (heavy ball)
    s_t = d_t + mu b_t        (Nesterov, torch's form)

Both are linear filters of past d's, ``s_t = sum_k a_k d_{t-k}`` with
heavy ball ``a_k = mu^k`` and Nesterov ``a_0 = 1 + mu, a_k = mu^(k+1) (k >= 1)``. Two sums decide
everything::

    A  = sum_k a_k   = 1 / (1 - mu)                            (both)
    S2 = sum_k a_k^2 = 1 / (1 - mu^2)                          (heavy ball)
                     = (1 + mu)^2 + mu^4 / (1 - mu^2)          (Nesterov)

Derivation (first order in eta*lambda, gradients uncorrelated between steps, w nearly constant over
the 1/(1-mu) steps of the momentum memory):

* Tangential step: ``||s_t||^2 = S2 ||g||^2``, so the *angle* between w_t and w_{t+1} is
  ``theta^2 = eta^2 S2 L / ||w||^4``.
* Radial balance: ``||w_{t+1}||^2 - ||w_t||^2 = -2 eta <w_t, s_t> + eta^2 ||s_t||^2``. The decay part of
  ``<w_t, s_t>`` is ``lambda A ||w||^2``. A past gradient g_{t-k} is orthogonal to w_{t-k}, not to w_t:
  ``<w_t, g_{t-k}> = -eta ||g||^2 (a_0 + ... + a_{k-1})``. Summing, with
  ``sum_{k>=1} a_k (a_0+...+a_{k-1}) = (A^2 - S2) / 2``, gives per step
  ``d||w||^2 = -2 eta lambda A ||w||^2 + eta^2 A^2 L / ||w||^2`` -- the momentum cross terms turn the
  S2 of the noise into A^2.
* Equilibrium norm: ``||w||^4 = eta A L / (2 lambda) = eta L / (2 lambda (1 - mu))`` (any filter).
* Equilibrium angle per step: ``theta^2 = 2 eta lambda (1 - mu) S2``:
  plain SGD ``sqrt(2 eta lambda)``; heavy ball ``sqrt(2 eta lambda / (1 + mu))``; Nesterov that times
  ``k_N(mu) = sqrt((1 + mu)^3 (1 - mu) + mu^4)`` (1.1585 at mu = 0.9). Independent of L: every
  scale-invariant layer turns by the same angle per step whatever its gradient scale.
* Relaxation: ``v = ||w||^4`` obeys ``v_{t+1} = v_t - 4 eta_t lambda A v_t + 2 eta_t^2 A^2 L_t``, so it
  relaxes to equilibrium exponentially with time constant ``(1 - mu) / (4 eta lambda)`` steps.
  Under a time-varying lr the same recursion gives the *lagged* equilibrium (`lagged_norm4`).
* Correlated gradients: when cos(g_t, g_{t-k}) = rho_k is not zero, the same two sums become S_rho and
  S_rho + 2 C_rho (`correlation_sums`) and the angle ``theta^2 = 2 eta lambda A S_rho / (S_rho + 2 C_rho)``
  (`correlated_angle`). For heavy ball this is 2 eta lambda / (1 + mu) whatever rho is; for torch's Nesterov
  an oscillating gradient (rho_1 < 0) raises it (rho_1 = -0.4 alone: x1.16 at mu = 0.9).

Which quantity each prediction is for: ``theta`` is the angular update between w_t and w_{t+1} (the
log's ``angle``). The log's ``rel_step = ||w_{t+1} - w_t|| / ||w_t||`` also contains the radial part;
at a stationary norm it equals ``2 sin(theta / 2)`` (`equilibrium_rel_step`), the same to O(theta^3).
All formulas are checked against a simulation with ``torch.optim.SGD`` in ``tests/test_theory.py``.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import BnlabError


def _check(momentum: float, nesterov: bool) -> None:
    if not 0 <= momentum < 1:
        raise BnlabError(f"momentum must be in [0, 1), got {momentum}")
    if nesterov and momentum == 0:
        raise BnlabError("Nesterov needs momentum > 0")


def filter_sum(momentum: float) -> float:
    """A = sum of the momentum filter's coefficients = 1 / (1 - mu): the gain on a constant gradient."""
    return 1.0 / (1.0 - momentum)


def noise_gain(momentum: float = 0.0, nesterov: bool = False) -> float:
    """S2 = sum of the squared filter coefficients: the gain on uncorrelated gradient noise."""
    _check(momentum, nesterov)
    mu = momentum
    if nesterov:
        return (1 + mu) ** 2 + mu ** 4 / (1 - mu ** 2)
    return 1.0 / (1 - mu ** 2)


def nesterov_factor(momentum: float) -> float:
    """k_N(mu) = sqrt((1+mu)^3 (1-mu) + mu^4): Nesterov's equilibrium angle over heavy ball's."""
    mu = momentum
    return math.sqrt((1 + mu) ** 3 * (1 - mu) + mu ** 4)


def equilibrium_angle(lr: float | np.ndarray, wd: float | np.ndarray, momentum: float = 0.0,
                      nesterov: bool = False) -> float | np.ndarray:
    """Angle (radians) between w_t and w_{t+1} at equilibrium: sqrt(2 eta lambda (1 - mu) S2)."""
    return np.sqrt(2 * np.asarray(lr) * np.asarray(wd) * (1 - momentum) * noise_gain(momentum, nesterov))


def equilibrium_rel_step(lr: float | np.ndarray, wd: float | np.ndarray, momentum: float = 0.0,
                         nesterov: bool = False) -> float | np.ndarray:
    """||w_{t+1} - w_t|| / ||w_t|| at equilibrium: the chord 2 sin(theta/2) of a norm-preserving turn."""
    return 2 * np.sin(equilibrium_angle(lr, wd, momentum, nesterov) / 2)


def equilibrium_norm(lr: float | np.ndarray, wd: float | np.ndarray, momentum: float,
                     grad_scale: float | np.ndarray) -> float | np.ndarray:
    """Equilibrium ||w|| = (eta L / (2 lambda (1 - mu)))^(1/4), L = E ||g||^2 ||w||^2 (`grad_scale`)."""
    wd = np.asarray(wd, dtype=float)
    with np.errstate(divide="ignore"):
        return (np.asarray(lr) * np.asarray(grad_scale) / (2 * wd * (1 - momentum))) ** 0.25


def relaxation_steps(lr: float | np.ndarray, wd: float | np.ndarray, momentum: float = 0.0) -> float | np.ndarray:
    """Time constant (optimizer steps) of ||w||^4's exponential approach to equilibrium: (1-mu)/(4 eta lambda)."""
    with np.errstate(divide="ignore"):
        return (1 - momentum) / (4 * np.asarray(lr) * np.asarray(wd, dtype=float))


def lagged_norm4(lrs: np.ndarray, wd: float, momentum: float, grad_scale: np.ndarray | float,
                 norm4_0: float) -> np.ndarray:
    """||w||^4 after each step under the lr sequence `lrs`, from ||w||^4 = `norm4_0` before the first.

    The recursion v <- v (1 - 4 eta lambda A) + 2 eta^2 A^2 L: the lagged equilibrium under a
    schedule (it trails the instantaneous equilibrium by ~`relaxation_steps`). `grad_scale` L may vary
    per step (the measured ||g||^2 ||w||^2). Solved in closed form as a linear recurrence with
    cumulative products, so it is vectorised over steps.
    """
    lrs = np.asarray(lrs, dtype=float)
    L = np.broadcast_to(np.asarray(grad_scale, dtype=float), lrs.shape)
    A = filter_sum(momentum)
    decay = 1 - 4 * lrs * wd * A
    if np.any(decay <= 0):
        raise BnlabError("lr * wd too large for the small-step theory (4 lr wd / (1 - mu) >= 1)")
    drive = 2 * lrs ** 2 * A ** 2 * L
    # v_t = P_t (v_0 + sum_{s<=t} drive_s / P_s), P_t = prod_{s<=t} decay_s. Vectorised per chunk;
    # chunks keep |log P| below ~300 so exp() neither overflows nor underflows on long runs.
    logd = np.log(decay)
    chunk = max(1, int(300 / max(float(-logd.min(initial=0.0)), 1e-12)))
    out = np.empty_like(lrs)
    v = float(norm4_0)
    for i in range(0, len(lrs), chunk):
        logp = np.cumsum(logd[i:i + chunk])
        out[i:i + chunk] = np.exp(logp) * (v + np.cumsum(drive[i:i + chunk] * np.exp(-logp)))
        v = out[min(i + chunk, len(lrs)) - 1]
    return out


def lagged_angle(lrs: np.ndarray, norm4: np.ndarray, grad_scale: np.ndarray | float, momentum: float,
                 nesterov: bool) -> np.ndarray:
    """Angle per step predicted from a norm trajectory: theta^2 = eta^2 S2 L / ||w||^4."""
    return np.asarray(lrs) * np.sqrt(noise_gain(momentum, nesterov) * np.asarray(grad_scale) / np.asarray(norm4))


def filter_coefficients(momentum: float, nesterov: bool, length: int) -> np.ndarray:
    """The first `length` coefficients a_k of the momentum filter s_t = sum_k a_k d_{t-k}."""
    _check(momentum, nesterov)
    k = np.arange(length, dtype=float)
    a = momentum ** k
    if nesterov:
        a = momentum ** (k + 1)
        a[0] = 1 + momentum
    return a


def correlation_sums(momentum: float, nesterov: bool, rho: np.ndarray) -> tuple[float, float]:
    """(S_rho, C_rho): the noise gain and the momentum cross term when successive gradients correlate.

    `rho` is the gradients' autocorrelation rho_0 = 1, rho_1, ..., rho_K (cos(g_t, g_{t-k}), zero beyond K).
    S_rho = sum_{j,k} a_j a_k rho_|j-k| is E||s_t||^2 / ||g||^2 (the tangential step), and
    C_rho = sum_{k>=1} a_k sum_{m=1..k} sum_j a_j rho_|k-m-j| collects <w_t, g_{t-k}> = -eta sum_m <s_{t-m},
    g_{t-k}> (first order). Uncorrelated (rho = [1]): S_rho = S2 and S_rho + 2 C_rho = A^2.
    """
    rho = np.asarray(rho, dtype=float)
    if rho.ndim != 1 or len(rho) == 0 or not np.all(np.isfinite(rho)) or rho[0] != 1:
        raise BnlabError("rho must be a finite autocorrelation sequence starting with rho_0 = 1")
    # long enough for the filter's tail to vanish in float64 (mu^n < 1e-17), plus the correlation's reach
    n = len(rho) + 2 + (int(math.ceil(-39.2 / math.log(momentum))) if momentum > 0 else 1)
    a = filter_coefficients(momentum, nesterov, n)
    sym = np.concatenate([rho[:0:-1], rho])  # rho_-K .. rho_K
    u = np.convolve(a, sym)[len(rho) - 1:len(rho) - 1 + n]  # u_m = sum_j a_j rho_|m-j|, m = 0..n-1
    S = float(a @ u)
    prefix = np.concatenate([[0.0], np.cumsum(u)[:-1]])  # sum_{m<k} u_m
    C = float(a @ prefix)
    return S, C


def correlated_angle(lr: float | np.ndarray, wd: float | np.ndarray, momentum: float, nesterov: bool,
                     rho: np.ndarray) -> float | np.ndarray:
    """Equilibrium angle per step when successive gradients correlate (`correlation_sums`):
    theta^2 = 2 eta lambda A S_rho / (S_rho + 2 C_rho); with rho = [1] it is `equilibrium_angle`.

    Heavy ball's (and plain SGD's) angle does not depend on rho at all; torch's Nesterov's does: positively
    correlated gradients turn it less, anticorrelated ones (an oscillation) more (tests/test_theory.py).
    """
    S, C = correlation_sums(momentum, nesterov, rho)
    return np.sqrt(2 * np.asarray(lr) * np.asarray(wd) * filter_sum(momentum) * S / (S + 2 * C))


def correlation_norm_factor(momentum: float, nesterov: bool, rho: np.ndarray) -> float:
    """The correlated equilibrium ||w|| over the uncorrelated one: ((S_rho + 2 C_rho) / A^2)^(1/4), from
    ||w||^4 = eta L (S_rho + 2 C_rho) / (2 lambda A) (for heavy ball too, whose angle does not move)."""
    S, C = correlation_sums(momentum, nesterov, rho)
    return float(((S + 2 * C) / filter_sum(momentum) ** 2) ** 0.25)


def correlation_factor(momentum: float, nesterov: bool, rho: np.ndarray) -> float:
    """correlated_angle / equilibrium_angle: how much the gradients' autocorrelation moves the prediction."""
    return float(correlated_angle(1.0, 1.0, momentum, nesterov, rho) / equilibrium_angle(1.0, 1.0, momentum, nesterov))


def stability_threshold(momentum: float = 0.0, nesterov: bool = False) -> float:
    """The largest η·λ for which torch SGD on a quadratic of curvature λ does not diverge.

    Plain SGD 2; heavy ball 2(1 + μ); Nesterov (torch's form) 2(1 + μ)/(1 + 2μ) (1.357 at μ = 0.9).
    Training at the largest stable lr drives the top Hessian eigenvalue towards threshold/η (the
    "edge of stability", Cohen et al. 2021).
    """
    _check(momentum, nesterov)
    if nesterov:
        return 2 * (1 + momentum) / (1 + 2 * momentum)
    return 2 * (1 + momentum)
