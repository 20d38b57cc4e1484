"""Reduce-on-plateau: ``optax.contrib.reduce_on_plateau`` driven by a monitored value (Keras semantics).

gmpjax has one plateau rule, optax's. ``plateau_update`` feeds it one monitored
value per check (an epoch's validation loss, say), outside the optimizer
chain, so the value can come from any split; the learning rate itself lives in
an ``optax.inject_hyperparams`` state and is set to ``base_lr * state.scale``
with ``set_learning_rate``.

With ``rtol = 0``, ``atol = min_delta``, ``cooldown = 0`` and
``accumulation_size = 1`` optax's rule is Keras ``ReduceLROnPlateau(mode="min")``:
a value improves when ``value < best - min_delta``; otherwise the wait count
grows, and when it reaches ``patience`` the scale is multiplied by ``factor``
(not below ``min_scale``) and the count restarts (tests compare the two on
random sequences). optax refuses ``atol = rtol = 0``; ``min_delta = 0`` is
therefore passed as the smallest positive normal float32, which leaves
``best - atol == best`` for every ``|best| > 1e-30``.

The state is a pytree, so it works inside ``jit``/``vmap``/``lax.while_loop``.
Lower is better; pass ``-accuracy`` to maximise.

>>> import jax.numpy as jnp
>>> p = plateau_init()
>>> for v in [1.0, 0.9, 0.9, 0.9]:
...     p = plateau_update(p, jnp.asarray(v), factor=0.1, patience=2)
>>> round(float(p.scale), 6), int(p.plateau_count)
(0.1, 0)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike, DTypeLike
from optax.contrib import ReduceLROnPlateauState

Array = jax.Array

__all__ = ["Plateau", "PlateauConfig", "plateau_init", "plateau_update", "set_learning_rate", "get_learning_rate"]

Plateau: TypeAlias = ReduceLROnPlateauState
"""The state: ``scale`` (learning-rate multiplier), ``best_value``, ``plateau_count`` (checks since improvement)."""

_TINY = float(np.finfo(np.float32).tiny)


@dataclasses.dataclass(frozen=True)
class PlateauConfig:
    """Keras ``ReduceLROnPlateau`` settings (``cooldown = 0``).

    Attributes:
      patience: checks without improvement before the scale is multiplied by ``factor`` (>= 1).
      factor: multiplier in (0, 1).
      min_delta: an improvement must beat the best value by more than this (>= 0).
      min_scale: the scale never drops below this.
    """

    patience: int
    factor: float = 0.1
    min_delta: float = 0.0
    min_scale: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"plateau patience must be an int >= 1 (got {self.patience!r}).")
        if not 0 < self.factor < 1:
            raise ValueError(f"plateau factor must be in (0, 1) (got {self.factor!r}).")
        if not self.min_delta >= 0:
            raise ValueError(f"plateau min_delta must be >= 0 (got {self.min_delta!r}).")
        if not self.min_scale >= 0:
            raise ValueError(f"plateau min_scale must be >= 0 (got {self.min_scale!r}).")


@functools.cache
def _rule(patience: int, factor: float, min_delta: float, min_scale: float) -> optax.GradientTransformationExtraArgs:
    return optax.contrib.reduce_on_plateau(
        factor=factor, patience=patience, rtol=0.0, atol=max(min_delta, _TINY), cooldown=0, min_scale=min_scale
    )


@functools.cache
def _update(patience: int, factor: float, min_delta: float, min_scale: float) -> Any:
    """The rule's update, jitted once per setting (host loops call it eagerly every evaluation)."""
    rule = _rule(patience, factor, min_delta, min_scale)

    def update(p: Plateau, value: Array) -> Plateau:
        # optax mixes its int32 count with float values; keep that inside optax under strict promotion
        with jax.numpy_dtype_promotion("standard"):
            return rule.update({}, p, value=value)[1]

    return jax.jit(update)


def plateau_init(dtype: DTypeLike = jnp.float32) -> Plateau:
    """Scale 1, no best value yet (``inf``), no waiting; values are compared in ``dtype``."""
    return _rule(1, 0.1, 0.0, 0.0).init(jnp.zeros((), dtype))


def plateau_update(
    p: Plateau, value: ArrayLike, *, patience: int, factor: float = 0.1, min_delta: float = 0.0, min_scale: float = 0.0
) -> Plateau:
    """Record ``value`` (lower is better) and return the new state (see the module docstring for the rule)."""
    cfg = PlateauConfig(patience=patience, factor=factor, min_delta=min_delta, min_scale=min_scale)
    update = _update(cfg.patience, float(cfg.factor), float(cfg.min_delta), float(cfg.min_scale))
    return update(p, jnp.asarray(value).astype(p.best_value.dtype))


def set_learning_rate(opt_state: Any, lr: ArrayLike) -> Any:
    """Return ``opt_state`` of an ``optax.inject_hyperparams(...)`` optimizer with ``learning_rate = lr``."""
    hp = getattr(opt_state, "hyperparams", None)
    if hp is None or "learning_rate" not in hp:
        raise TypeError(
            "set_learning_rate needs the state of optax.inject_hyperparams(opt)(learning_rate=...); "
            f"got {type(opt_state).__name__}. Build the optimizer as "
            "optax.inject_hyperparams(optax.adam)(learning_rate=lr) to use plateau decay."
        )
    return opt_state._replace(hyperparams={**hp, "learning_rate": jnp.asarray(lr).astype(hp["learning_rate"].dtype)})


def get_learning_rate(opt_state: Any) -> Array:
    """The ``learning_rate`` of an ``optax.inject_hyperparams(...)`` state (TypeError otherwise)."""
    hp = getattr(opt_state, "hyperparams", None)
    if hp is None or "learning_rate" not in hp:
        raise TypeError(
            "plateau decay needs an optax.inject_hyperparams(opt)(learning_rate=...) optimizer "
            f"(got a state of type {type(opt_state).__name__})."
        )
    return jnp.asarray(hp["learning_rate"])
