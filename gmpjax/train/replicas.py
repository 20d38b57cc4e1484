"""One replica trainer: ``R`` independent runs (seeds x learning rates x data splits) in one compiled sweep.

``train_replicas(model, optimizer, loss, data, config, keys=...)`` initialises one model
per key (``model``: ``key -> nnx.Module``), builds the optimizer from its learning rate
(``optimizer``: ``lr -> optax.GradientTransformation``), the train step from ``loss`` and
the evaluation from ``metrics``, and trains every replica with ``gmpjax.train.loop.sweep``
(a shared ``while_loop`` over epochs, stopped replicas masked). Every replica run of
gmpjax and its experiments goes through it.

Replica ``r`` uses ``keys[r]`` for its initialisation, ``shuffle_keys[r]`` (default
``keys[r]``) for its minibatches, ``lrs[r]`` for its learning rate and split
``data_index[r]`` of ``data`` (or ``data`` itself, shared or with a leading replica axis).
``replica_grid`` lays out the usual ``splits x learning rates`` product.

>>> import jax, jax.numpy as jnp, optax
>>> from flax import nnx
>>> from gmpjax.train.losses import mse, on_batch
>>> from gmpjax.train.loop import LoopConfig
>>> from gmpjax.train.rules import Rules
>>> x = jax.random.normal(jax.random.key(0), (32, 2)); y = x @ jnp.ones((2, 1))
>>> sgd = optax.inject_hyperparams(optax.sgd)   # several learning rates: each replica's is set in its state
>>> out = train_replicas(
...     lambda k: nnx.Linear(2, 1, rngs=nnx.Rngs(k)), sgd, on_batch(mse), {"train": (x, y)},
...     LoopConfig(30, monitor_split=None, rules=Rules(monitor="loss")),
...     keys=jax.random.split(jax.random.key(1), 3), lrs=[0.01, 0.1, 0.3])
>>> out.result.epochs.shape, bool(out.result.history["train_loss"][2, -1] < out.result.history["train_loss"][0, -1])
((3,), True)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gmpjax.train.engine import TrainState, init_replicas, make_eval_step, make_train_step
from gmpjax.train.loop import FitResult, LoopConfig, LoopState, TrackFn, sweep

Array = jax.Array
PyTree = Any

__all__ = ["Replicas", "replica_grid", "train_replicas"]


@dataclasses.dataclass
class Replicas:
    """What ``train_replicas`` returns (replica axis first everywhere).

    Attributes:
      graphdef: the model's graph (shared by every replica).
      init: the initial ``TrainState`` of every replica.
      result: the sweep's ``FitResult``: ``result.state`` the restored state (``Rules.restore``),
        ``result.history`` the per-epoch records, ``best_value``, ``epochs``, ``stopped``, ...
    """

    graphdef: nnx.GraphDef
    init: TrainState
    result: FitResult

    def model(self, r: int = 0, *, initial: bool = False) -> nnx.Module:
        """Replica ``r``'s module (the returned one, or the initial one)."""
        s = jax.tree.map(lambda a: a[r], self.init if initial else self.result.state)
        return nnx.merge(self.graphdef, s.params, s.rest)

    def evaluate(self, fn: Callable[[nnx.Module, Any], Any], batch: Any, *, axis: int | None = None) -> Any:
        """``fn(model_r, batch)`` for every replica's returned model, as numpy (``axis=0``: one batch per replica)."""
        step = make_eval_step(self.graphdef, fn)
        return jax.device_get(jax.jit(jax.vmap(step, in_axes=(0, axis)))(self.result.state, batch))


def replica_grid(splits: int, lrs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(split_of, lr_of)`` of ``R = splits * len(lrs)`` replicas, ``r = s * L + l``: split ``s`` with ``lrs[l]``.

    >>> replica_grid(2, [0.1, 0.3])
    (array([0, 0, 1, 1], dtype=int32), array([0.1, 0.3, 0.1, 0.3]))
    """
    return np.repeat(np.arange(splits, dtype=np.int32), len(lrs)), np.tile(np.asarray(lrs, np.float64), splits)


@functools.lru_cache(maxsize=16)
def _steps(
    graphdef: nnx.GraphDef,
    optimizer: Callable[[Any], optax.GradientTransformation],
    lr: float | None,
    loss: Callable[[nnx.Module, Any], Any],
    metrics: Callable[[nnx.Module, Any], Any] | None,
    track: Callable[[nnx.GraphDef], TrackFn] | None,
) -> tuple[Any, Any, TrackFn | None]:
    """Train step, eval step and track hook of one setting, built once: a second ``train_replicas`` with the
    same functions reuses ``sweep``'s compiled programs (e.g. to time a run without its compilation)."""
    tx = optimizer(1.0 if lr is None else lr)  # several lrs: each replica's rate is set in its state
    eval_fn = None if metrics is None else make_eval_step(graphdef, metrics)
    return make_train_step(graphdef, tx, loss), eval_fn, None if track is None else track(graphdef)


def train_replicas(
    model: Callable[[Array], nnx.Module] | tuple[nnx.GraphDef, TrainState],
    optimizer: Callable[[Any], optax.GradientTransformation],
    loss: Callable[[nnx.Module, Any], Any],
    data: Mapping[str, Any],
    config: LoopConfig,
    *,
    keys: Array,
    lrs: float | Sequence[float] | np.ndarray = 1e-3,
    metrics: Callable[[nnx.Module, Any], Any] | None = None,
    shuffle_keys: Array | None = None,
    data_axis: int | None = None,
    data_index: Array | np.ndarray | None = None,
    track: Callable[[nnx.GraphDef], TrackFn] | None = None,
    chunk: int | None = None,
    segment: int | None = None,
    on_segment: Callable[[int, LoopState], None] | None = None,
) -> Replicas:
    """Train ``R = len(keys)`` replicas of ``model`` to early stopping or ``config.max_epochs``.

    Args:
      model: ``key -> nnx.Module`` (one per key), or ``(graphdef, states)`` already stacked
        (e.g. after a phase switch; ``keys`` then only shuffle).
      optimizer: ``lr -> optax.GradientTransformation``. With one learning rate for all it is
        called with that number; with several it must accept one and be an
        ``optax.inject_hyperparams`` optimizer (each replica's rate is set in its state).
      loss: ``(model, batch) -> loss`` or ``(loss, metrics)`` (``gmpjax.train.losses.on_batch``).
      data: ``{"train": ..., <monitor_split>: ...}`` (``gmpjax.train.loop.fit``).
      config: the loop's settings and rules (``LoopConfig``).
      keys: ``(R,)`` PRNG keys of the initialisations.
      lrs: one learning rate, or ``R`` of them.
      metrics: ``(model, batch) -> {name: value}``, evaluated on ``data[config.monitor_split]``.
      shuffle_keys: ``(R,)`` keys of the minibatch shuffles (default ``keys``).
      data_axis: ``None``: every replica trains on ``data``; ``0``: the arrays of ``data`` have a
        leading axis of replicas (or of splits, with ``data_index``).
      data_index: ``(R,)`` split of each replica (``replica_grid``).
      track: ``graphdef -> (state_before, state_after) -> pytree``: a per-step record (``sweep``).
      chunk, segment: ``sweep``'s ways of not paying for stopped replicas.
      on_segment: ``(epoch, loops) -> None`` after every ``segment`` epochs (``sweep``).

    Returns:
      ``Replicas``.
    """
    keys = jnp.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(f"keys must be a 1-D array of PRNG keys, e.g. jax.random.split(key, R); got {keys.shape}.")
    R = int(keys.shape[0])
    rates = np.ravel(np.asarray(lrs, np.float64))
    if rates.size not in (1, R):
        raise ValueError(f"lrs must be one learning rate or one per replica ({R}); got {rates.size}.")
    one = rates.size == 1 or bool(np.all(rates == rates[0]))
    tx = optimizer(float(rates[0]))
    if isinstance(model, tuple):
        graphdef, states = model
    else:
        graphdef, states = init_replicas(model, keys, tx)
    if not one and "learning_rate" not in (getattr(states.opt_state, "hyperparams", None) or {}):
        raise TypeError(
            "train_replicas: several learning rates need an optax.inject_hyperparams optimizer, e.g. "
            "optimizer=optax.inject_hyperparams(optax.adam) (each replica's rate is set in its state)."
        )
    train_step, eval_fn, track_fn = _steps(graphdef, optimizer, float(rates[0]) if one else None, loss, metrics, track)
    res = sweep(
        train_step,
        eval_fn,
        states,
        data,
        config,
        keys=keys if shuffle_keys is None else jnp.asarray(shuffle_keys),
        lrs=None if one else jnp.asarray(rates.tolist()),
        data_axis=data_axis,
        data_index=None if data_index is None else jnp.asarray(data_index),
        track=track_fn,
        chunk=chunk,
        segment=segment,
        on_segment=on_segment,
    )
    return Replicas(graphdef, states, res)
