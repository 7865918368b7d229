"""A small procedurally generated 10-class image task, for tests and offline smoke runs.

Class c is an oriented sinusoidal grating (orientation c*18 degrees, two frequencies) with a
class colour tint, random phase, contrast and Gaussian noise. Learnable by a small conv net in a
few epochs but not trivially (noise, random phase), so "above chance" means something.
"""
from __future__ import annotations

import numpy as np


def make_synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    rng.shuffle(y)
    theta = y * (np.pi / 10)
    freq = np.where(y % 2 == 0, 0.35, 0.6) + rng.normal(0, 0.03, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    contrast = rng.uniform(0.5, 1.0, n)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    proj = (np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy)
    grating = np.sin(freq[:, None, None] * proj + phase[:, None, None]) * contrast[:, None, None]
    tint_rng = np.random.default_rng(1234)  # class colours are part of the task, not of the seed
    tint = tint_rng.uniform(0.4, 1.0, (10, 3))
    img = 0.5 + 0.4 * grating[:, None] * tint[y][:, :, None, None]
    img = img + rng.normal(0, 0.15, img.shape)
    x = np.clip(img * 255, 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)
