"""Learning-rate schedules of the ImageNet experiments.

* ``piecewise_epochs``: the paper's schedule (App. C.2-C.3): multiply the
  learning rate by 0.1 at epochs 30, 60 and 80 of 90.
* ``released_plateau_update``: the released code's Keras ``ReduceLROnPlateau``
  on validation top-5 (factor 0.1, patience 5, ``min_delta`` 1e-4, cooldown 0),
  built on ``gmpjax.train.plateau``, updated once per epoch; its state is saved
  in checkpoints with ``plateau_to_json``. The released code also stops after
  ``RELEASED_EARLY_STOP_PATIENCE`` epochs without improvement.

>>> s = piecewise_epochs(0.1, steps_per_epoch=10)
>>> [round(float(s(k)), 6) for k in (0, 299, 300, 600, 800)]
[0.1, 0.1, 0.01, 0.001, 0.0001]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypedDict

import jax.numpy as jnp
import optax

from gmpjax.train.plateau import Plateau, plateau_init, plateau_update

__all__ = [
    "PAPER_BOUNDARIES",
    "piecewise_epochs",
    "RELEASED_PLATEAU",
    "RELEASED_EARLY_STOP_PATIENCE",
    "released_plateau_update",
    "plateau_to_json",
    "plateau_from_json",
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


class _PlateauSettings(TypedDict):
    patience: int
    factor: float
    min_delta: float


RELEASED_PLATEAU: _PlateauSettings = {"patience": 5, "factor": 0.1, "min_delta": 1e-4}
"""Keras ReduceLROnPlateau settings of the released ImageNet32 code (monitor: validation top-5, maximised)."""
RELEASED_EARLY_STOP_PATIENCE: int = 10
"""Epochs without a top-5 improvement after which the released code stops (EarlyStopping patience)."""


def released_plateau_update(p: Plateau, top5: float) -> tuple[Plateau, bool]:
    """One epoch of the released schedule: ``gmpjax.train.plateau`` on ``-top5`` (Keras ``mode="max"``).

    Returns the new state and whether ``top5`` improved on the best so far by more than ``min_delta``.

    >>> p = plateau_init()
    >>> for v in [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]:
    ...     p, improved = released_plateau_update(p, v)
    >>> round(float(p.scale), 6), improved
    (0.1, False)
    """
    new = plateau_update(p, -float(top5), **RELEASED_PLATEAU)
    return new, bool(new.best < p.best)


def plateau_to_json(p: Plateau) -> dict[str, Any]:
    """The plateau state as a JSON dict (for checkpoint ``extra``)."""
    best = float(p.best)
    return {"scale": float(p.scale), "best": best if math.isfinite(best) else None, "wait": int(p.wait)}


def plateau_from_json(d: dict[str, Any]) -> Plateau:
    """Inverse of ``plateau_to_json``."""
    p = plateau_init()
    return p.replace(
        scale=jnp.asarray(d["scale"], p.scale.dtype),
        best=p.best if d["best"] is None else jnp.asarray(d["best"], p.best.dtype),
        wait=jnp.asarray(d["wait"], jnp.int32),
    )
