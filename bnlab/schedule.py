"""Learning-rate schedules, evaluated per optimizer step at fractional epochs."""
from __future__ import annotations

import numpy as np

from .config import TrainConfig


def lr_at(config: TrainConfig, epoch: float) -> float:
    """The learning rate at fractional epoch `epoch` (the end of the step being taken).

    - piecewise: linear interpolation of lr * lr_mults over lr_knots (DavidNet: [0,5,24] -> [0,0.4,0]),
      held constant beyond the last knot;
    - exp: lr * 2^(epoch/2), the batch-norm post's LR stress test, raised every step;
    - const: lr.
    """
    if config.lr_schedule == "const":
        return config.lr
    if config.lr_schedule == "exp":
        return config.lr * 2.0 ** (epoch / 2.0)
    knots, mults = config.knots()
    return config.lr * float(np.interp(epoch, knots, mults))
