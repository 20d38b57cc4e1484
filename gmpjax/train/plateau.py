"""Reduce-on-plateau learning-rate rule as a pure, vmappable state (Keras ``ReduceLROnPlateau`` semantics).

The state holds a ``scale`` (multiply the base learning rate by it), the best
monitored value so far (lower is better; pass ``-accuracy`` to maximise) and
the number of checks since the last improvement.  It is a pytree, so it works
inside ``jit``/``vmap``/``lax.scan``/``lax.while_loop``.  The learning rate
itself lives in an ``optax.inject_hyperparams`` state and is overwritten with
``set_learning_rate`` (for the training loss fed to every update,
``optax.contrib.reduce_on_plateau`` with ``make_train_step(..., pass_loss_as_value=True)``
does the same inside the optimizer).

>>> import jax.numpy as jnp
>>> p = plateau_init()
>>> for v in [1.0, 0.9, 0.9, 0.9]:
...     p = plateau_update(p, jnp.asarray(v), factor=0.1, patience=2)
>>> round(float(p.scale), 6), int(p.wait)
(0.1, 0)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import ArrayLike, DTypeLike

Array = jax.Array

__all__ = ["Plateau", "plateau_init", "plateau_update", "set_learning_rate"]


class Plateau(struct.PyTreeNode):
    """Reduce-on-plateau state.

    Attributes: ``scale`` learning-rate multiplier, ``best`` best value (lower is better), ``wait`` checks since
    improvement.
    """

    scale: Array
    best: Array
    wait: Array


def plateau_init(dtype: DTypeLike = jnp.float32) -> Plateau:
    """Scale 1, no best value yet (``inf``), no waiting."""
    return Plateau(jnp.ones((), dtype), jnp.asarray(jnp.inf, dtype), jnp.zeros((), jnp.int32))


def plateau_update(
    p: Plateau, value: ArrayLike, *, patience: int, factor: float = 0.1, min_delta: float = 0.0, min_scale: float = 0.0
) -> Plateau:
    """Record ``value`` (lower is better); multiply ``scale`` by ``factor`` after ``patience`` idle checks.

    Improvement means ``value < best - min_delta`` (Keras ``mode="min"``; Keras'
    default ``min_delta`` is 1e-4).  ``wait`` resets to 0 on improvement and
    after each reduction (Keras, ``cooldown=0``); ``scale`` never drops below ``min_scale``.
    """
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1) (got {factor!r}).")
    if isinstance(patience, int) and patience < 1:
        raise ValueError(f"patience must be >= 1 (got {patience!r}).")
    v = jnp.asarray(value).astype(p.best.dtype)
    improved = v < p.best - min_delta
    wait = jnp.where(improved, 0, p.wait + 1).astype(jnp.int32)
    reduce = wait >= patience
    scale = jnp.where(reduce, jnp.maximum(p.scale * factor, min_scale), p.scale).astype(p.scale.dtype)
    return Plateau(scale=scale, best=jnp.where(improved, v, p.best), wait=jnp.where(reduce, 0, wait).astype(jnp.int32))


def set_learning_rate(opt_state: Any, lr: ArrayLike) -> Any:
    """Return ``opt_state`` of an ``optax.inject_hyperparams(...)`` optimizer with ``learning_rate = lr``."""
    hp = getattr(opt_state, "hyperparams", None)
    if hp is None or "learning_rate" not in hp:
        raise TypeError(
            "set_learning_rate needs the state of optax.inject_hyperparams(opt)(learning_rate=...); "
            f"got {type(opt_state).__name__}."
        )
    return opt_state._replace(hyperparams={**hp, "learning_rate": jnp.asarray(lr).astype(hp["learning_rate"].dtype)})
