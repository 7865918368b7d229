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
