"""Learning-rate schedules of the ImageNet experiments.

* ``piecewise_epochs``: the paper's schedule (App. C.2-C.3): multiply the
  learning rate by 0.1 at epochs 30, 60 and 80 of 90.
* ``RELEASED_PLATEAU``: the released code's Keras ``ReduceLROnPlateau`` on
  validation top-5 (factor 0.1, patience 5, ``min_delta`` 1e-4, cooldown 0) as a
  ``gmpjax.train.plateau.PlateauConfig``; the host loop
  (``gmpjax.train.host.train``) applies it once per epoch and checkpoints its state.
  The released code also stops after ``RELEASED_EARLY_STOP_PATIENCE`` epochs
  without improvement.

>>> s = piecewise_epochs(0.1, steps_per_epoch=10)
>>> [round(float(s(k)), 6) for k in (0, 299, 300, 600, 800)]
[0.1, 0.1, 0.01, 0.001, 0.0001]
"""

from __future__ import annotations

from collections.abc import Sequence

import optax

from gmpjax.train.plateau import PlateauConfig

__all__ = [
    "PAPER_BOUNDARIES",
    "piecewise_epochs",
    "RELEASED_PLATEAU",
    "RELEASED_EARLY_STOP_PATIENCE",
]

PAPER_BOUNDARIES: tuple[int, ...] = (30, 60, 80)
"""Epochs at which the paper multiplies the learning rate by 0.1 (90 epochs in total)."""


def piecewise_epochs(
    base_lr: float,
    steps_per_epoch: int,
    boundaries: Sequence[int] = PAPER_BOUNDARIES,
    factor: float = 0.1,
) -> optax.Schedule:
    """Step schedule ``lr(k) = base_lr * factor ** #{b in boundaries : k >= b * steps_per_epoch}``.

    Args:
      base_lr: initial learning rate (> 0).
      steps_per_epoch: optimizer steps per epoch (>= 1).
      boundaries: epochs at which the rate is multiplied by ``factor`` (increasing).
      factor: multiplier, 0.1 in the paper.
    """
    if not base_lr > 0:
        raise ValueError(f"base_lr must be > 0 (got {base_lr!r}).")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive int (got {steps_per_epoch!r}).")
    boundaries = tuple(int(b) for b in boundaries)
    if any(b < 0 for b in boundaries) or list(boundaries) != sorted(set(boundaries)):
        raise ValueError(f"boundaries must be strictly increasing non-negative epochs (got {boundaries!r}).")
    return optax.piecewise_constant_schedule(base_lr, {b * steps_per_epoch: factor for b in boundaries if b > 0})


RELEASED_PLATEAU = PlateauConfig(patience=5, factor=0.1, min_delta=1e-4)
"""The released ImageNet32 code's Keras ``ReduceLROnPlateau`` (monitor: validation top-5, maximised;
Keras' default ``min_delta`` 1e-4, cooldown 0); ``gmpjax.train.host.HostConfig(plateau=...)`` applies it."""
RELEASED_EARLY_STOP_PATIENCE: int = 10
"""Epochs without a validation top-5 gain before the released code stops (Keras ``EarlyStopping``, ``min_delta`` 0)."""
