"""The training rules both loops apply: early stopping, plateau decay of the learning rate, restore.

One frozen ``Rules`` says what is watched and what happens, one ``RuleState`` (a pytree)
carries it between checks and one ``rules_update`` advances it; the compiled loop
(``gmpjax.train.loop``, one check per epoch, inside ``jit``/``vmap``) and the host loop
(``gmpjax.train.host``, one check per evaluation, eagerly) both call them, so the two
cannot disagree.

* Early stopping: Keras ``EarlyStopping``: a value improves when
  ``value < best - min_delta`` (after negation for ``mode="max"``; a non-finite value
  never improves); after ``patience`` checks without improvement the run stops
  (``patience=None``: never, encoded as ``NEVER`` checks).
* Plateau decay: ``PlateauConfig`` (Keras ``ReduceLROnPlateau``, optax's rule,
  ``gmpjax.train.plateau``): the learning rate becomes ``base_lr * scale``.
* Restore: which parameters a run returns: the best (``"always"``), the best only when
  early stopping fired (``"if_stopped"``, Keras ``restore_best_weights``) or the last
  (``"never"``, the default: Keras' default, and it keeps no copy of the parameters).
  A run that never saw a finite value has no best parameters and returns the last.

>>> import jax.numpy as jnp
>>> r = Rules(monitor="val", patience=2)
>>> s = rules_init(r, params=jnp.zeros(()))
>>> for t, v in enumerate([3.0, 2.0, 2.5, 2.4], start=1):
...     s = rules_update(r, s, jnp.asarray(v), jnp.asarray(float(t)), t)
>>> bool(s.stopping.stopped), int(s.stopping.best_step), float(best_value(r, s))
(True, 2, 2.0)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import ArrayLike, DTypeLike

from gmpjax.train.engine import EarlyStopping, early_stopping_init, early_stopping_update
from gmpjax.train.plateau import Plateau, PlateauConfig, plateau_init, plateau_update

Array = jax.Array
PyTree = Any

__all__ = [
    "NEVER",
    "RESTORE",
    "PlateauConfig",
    "Rules",
    "RuleState",
    "best_value",
    "decayed_lr",
    "rules_init",
    "rules_update",
    "use_best",
]

RESTORE = ("always", "if_stopped", "never")
"""The values of ``Rules.restore``: the best parameters always, only when early stopping fired, or never."""
NEVER = 2**31 - 1
"""The patience of ``patience=None``: no int32 wait count reaches it, so early stopping never fires."""


@dataclasses.dataclass(frozen=True)
class Rules:
    """Early stopping, plateau decay and restore (frozen and hashable, so ``jit`` closes over it).

    Attributes:
      monitor: the metric watched: a key of the evaluation's output (or, in the compiled
        loop with ``monitor_split=None``, of the train step's metrics).
      mode: ``"min"`` or ``"max"`` (the value is negated internally for ``"max"``).
      patience: checks (epochs, evaluations) without improvement before early stopping
        fires; ``None``: never.
      min_delta: early stopping's improvement threshold (>= 0).
      restore: the parameters a run returns: ``"always"`` the best, ``"if_stopped"`` the
        best only when early stopping fired, ``"never"`` the last.
      plateau: plateau decay of the learning rate (``None``: constant); needs an
        ``optax.inject_hyperparams`` optimizer.
    """

    monitor: str = "loss"
    mode: Literal["min", "max"] = "min"
    patience: int | None = None
    min_delta: float = 0.0
    restore: Literal["always", "if_stopped", "never"] = "never"
    plateau: PlateauConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"Rules.monitor must be a metric name (got {self.monitor!r}).")
        if self.mode not in ("min", "max"):
            raise ValueError(f"Rules.mode must be 'min' or 'max' (got {self.mode!r}).")
        p = self.patience
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ValueError(f"Rules.patience must be an int >= 1 or None (never stop) (got {p!r}).")
        if not self.min_delta >= 0:
            raise ValueError(f"Rules.min_delta must be >= 0 (got {self.min_delta!r}).")
        if self.restore not in RESTORE:
            raise ValueError(f"Rules.restore must be one of {RESTORE} (got {self.restore!r}).")
        if self.plateau is not None and not isinstance(self.plateau, PlateauConfig):
            raise TypeError(f"Rules.plateau must be a PlateauConfig or None (got {type(self.plateau).__name__}).")

    @property
    def keeps_best(self) -> bool:
        """Whether a run must keep a copy of the best parameters (``restore != "never"``)."""
        return self.restore != "never"


class RuleState(struct.PyTreeNode):
    """The rules' state between checks (a pytree: vmappable, JSON-able leaf by leaf).

    Attributes:
      stopping: early stopping and, when ``Rules.keeps_best``, the best parameters (else ``()``).
      plateau: the plateau rule's state (scale 1 without plateau decay).
      base_lr: the learning rate the plateau scale multiplies (NaN without plateau decay).
    """

    stopping: EarlyStopping
    plateau: Plateau
    base_lr: Array


def rules_init(
    rules: Rules, params: PyTree = (), dtype: DTypeLike = jnp.float32, base_lr: ArrayLike | None = None
) -> RuleState:
    """The state before the first check.

    Args:
      rules: the ``Rules``.
      params: the parameters (any pytree) the best copy starts from; dropped when
        ``rules.restore == "never"``.
      dtype: the dtype values are compared in.
      base_lr: the learning rate plateau decay scales (needed with ``rules.plateau``).
    """
    if rules.plateau is not None and base_lr is None:
        raise ValueError("Rules.plateau needs the optimizer's learning rate (base_lr).")
    base = jnp.asarray(jnp.nan, jnp.float32) if rules.plateau is None or base_lr is None else jnp.asarray(base_lr)
    kept = params if rules.keeps_best else ()
    return RuleState(stopping=early_stopping_init(kept, dtype), plateau=plateau_init(dtype), base_lr=base)


def rules_update(rules: Rules, state: RuleState, value: ArrayLike, params: PyTree, step: ArrayLike) -> RuleState:
    """Record one monitored ``value`` (its own sign) at ``step`` (1-based) for ``params``.

    Pure (``jit``/``vmap``-able); once early stopping fired the stopping state is frozen.
    """
    dtype = state.stopping.best.dtype
    v = jnp.asarray(value).astype(dtype)
    signed = -v if rules.mode == "max" else v
    signed = jnp.where(jnp.isfinite(signed), signed, jnp.inf)
    patience = NEVER if rules.patience is None else rules.patience
    kept = params if rules.keeps_best else ()
    step = jnp.asarray(step, jnp.int32)
    stopping = early_stopping_update(state.stopping, signed, kept, step, patience=patience, min_delta=rules.min_delta)
    plateau = state.plateau
    if rules.plateau is not None:
        p = rules.plateau
        plateau = plateau_update(
            plateau, signed, patience=p.patience, factor=p.factor, min_delta=p.min_delta, min_scale=p.min_scale
        )
    return state.replace(stopping=stopping, plateau=plateau)


def decayed_lr(state: RuleState) -> Array:
    """``base_lr * scale`` in ``base_lr``'s dtype: the learning rate after the last check."""
    return state.base_lr * state.plateau.scale.astype(state.base_lr.dtype)


def use_best(rules: Rules, state: RuleState) -> Array:
    """Whether the run returns the best parameters (a bool array; see the module docstring)."""
    es = state.stopping
    found = es.best_step > 0
    if rules.restore == "always":
        return found
    if rules.restore == "if_stopped":
        return found & es.stopped
    return jnp.zeros((), bool)


def best_value(rules: Rules, state: RuleState) -> Array:
    """The best monitored value in the metric's own sign (``inf``, or ``-inf`` for ``"max"``: none finite)."""
    return -state.stopping.best if rules.mode == "max" else state.stopping.best
