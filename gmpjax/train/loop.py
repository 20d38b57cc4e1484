"""The compiled fit loop: epochs in a ``lax.while_loop``, minibatches in a ``lax.scan``; pure and vmappable.

One ``LoopConfig`` holds every rule the loop applies:

* batching (``"full"``, or shuffled minibatches of ``batch_size`` with the
  remainder ``"drop"``-ped, ``"wrap"``-ped or spread ``"even"``-ly);
* the split the monitored metric is measured on;
* ``max_epochs``;
* the rules (``gmpjax.train.rules.Rules``, shared with the host loop): the monitored
  metric, early stopping, plateau decay and which parameters are returned.

``fit(train_step, eval_fn, state, data, config, key=...)`` trains one replica.
It is a pure function of arrays, so ``jax.vmap`` over seeds, learning rates
and data splits compiles one program (``sweep`` does that, and stops paying
for replicas that have stopped). It is built from three pure pieces,
``fit_init`` -> ``fit_epochs`` (resumable: train up to an epoch) ->
``fit_result``, which ``sweep`` uses to run in segments.

>>> import jax, jax.numpy as jnp, optax
>>> from flax import nnx
>>> from gmpjax.train.engine import init_train_state, make_eval_step, make_train_step
>>> mse = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
>>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
>>> graphdef, state = init_train_state(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), tx)
>>> x = jax.random.normal(jax.random.key(1), (32, 2)); y = x @ jnp.ones((2, 1))
>>> data = {"train": (x, y), "val": (x, y)}
>>> cfg = LoopConfig(max_epochs=50, batching="drop", batch_size=8, rules=Rules(monitor="metric", patience=5))
>>> out = jax.jit(lambda s: fit(make_train_step(graphdef, tx, mse), make_eval_step(graphdef, mse),
...                             s, data, cfg, key=jax.random.key(2)))(state)
>>> bool(out.epochs <= 50), bool(out.best_value < 1e-3)
(True, True)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gmpjax.train.engine import TrainState
from gmpjax.train.plateau import get_learning_rate
from gmpjax.train.plateau import set_learning_rate as _set_lr
from gmpjax.train.rules import Rules, RuleState, best_value, decayed_lr, rules_init, rules_update, use_best

Array = jax.Array
PyTree = Any
TrainStep = Callable[[TrainState, Any], tuple[TrainState, Mapping[str, Array]]]
EvalFn = Callable[[TrainState, Any], Mapping[str, Array] | Array]
TrackFn = Callable[[TrainState, TrainState], PyTree]

__all__ = [
    "LoopConfig",
    "LoopState",
    "FitResult",
    "fit",
    "fit_init",
    "fit_epochs",
    "fit_result",
    "num_batches",
    "sweep",
]

BATCHING = ("full", "drop", "wrap", "even")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The compiled loop's settings (frozen and hashable, so jit closes over it).

    Attributes:
      max_epochs: epoch cap (>= 1).
      batching: ``"full"``: one step per epoch on every training row. Otherwise each
        epoch draws a fresh permutation and steps over minibatches of ``batch_size`` rows:
        ``"drop"`` ``N // B`` batches, the last ``N mod B`` rows of the permutation unused;
        ``"wrap"`` ``ceil(N / B)`` batches, the last one the final ``B`` rows of the
        permutation (it repeats a few rows of the one before); ``"even"`` ``ceil(N / B)``
        equal batches of ``N // ceil(N / B)`` rows (fewer than ``ceil(N / B)`` rows unused:
        the static-shape stand-in for Keras' short last batch).
      batch_size: rows per minibatch (ignored for ``"full"``; a batch size ``>= N`` is full batch).
      monitor_split: the key of ``data`` that ``eval_fn`` is applied to after every epoch;
        ``None`` monitors the epoch mean of the train step's ``rules.monitor`` metric (Keras
        ``monitor="loss"``).
      rules: the monitored metric, early stopping, plateau decay and restore
        (``gmpjax.train.rules.Rules``; one check per epoch).
    """

    max_epochs: int
    batching: Literal["full", "drop", "wrap", "even"] = "full"
    batch_size: int | None = None
    monitor_split: str | None = "val"
    rules: Rules = Rules()

    def __post_init__(self) -> None:
        def positive_int(name: str, v: Any) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LoopConfig.{name} must be an int >= 1 (got {v!r}).")

        positive_int("max_epochs", self.max_epochs)
        if self.batching not in BATCHING:
            raise ValueError(f"LoopConfig.batching must be one of {BATCHING} (got {self.batching!r}).")
        if self.batching != "full":
            if self.batch_size is None:
                raise ValueError(f"LoopConfig.batching={self.batching!r} needs a batch_size (or batching='full').")
            positive_int("batch_size", self.batch_size)
        if not isinstance(self.rules, Rules):
            raise TypeError(f"LoopConfig.rules must be a Rules (got {type(self.rules).__name__}).")


def num_batches(config: LoopConfig, num_rows: int) -> tuple[int, int]:
    """``(steps per epoch, rows per step)`` of ``config``'s batching for ``num_rows`` training rows.

    >>> num_batches(LoopConfig(1, "drop", 4), 10), num_batches(LoopConfig(1, "wrap", 4), 10)
    ((2, 4), (3, 4))
    >>> num_batches(LoopConfig(1, "even", 4), 10), num_batches(LoopConfig(1), 10)
    ((3, 3), (1, 10))
    """
    b = config.batch_size
    if config.batching == "full" or b is None or b >= num_rows:
        return 1, num_rows
    if config.batching == "drop":
        return num_rows // b, b
    nb = -(-num_rows // b)
    return (nb, b) if config.batching == "wrap" else (nb, num_rows // nb)


def _epoch_indices(config: LoopConfig, key: Array, n: int) -> Array:
    """Row indices ``(steps, rows)`` of one epoch."""
    nb, bs = num_batches(config, n)
    perm = jax.random.permutation(key, n)
    if config.batching == "wrap" and nb * bs > n:
        return jnp.concatenate([perm[: (nb - 1) * bs], perm[n - bs :]]).reshape(nb, bs)
    return perm[: nb * bs].reshape(nb, bs)


class LoopState(struct.PyTreeNode):
    """Everything the loop carries between epochs (a pytree: vmappable, checkpointable).

    Attributes:
      train: the engine's ``TrainState``.
      rules: the rules' state (``RuleState``: early stopping, the best ``(params, rest)`` when
        ``rules.restore`` needs them, plateau decay and its base learning rate).
      epoch: epochs run.
      key: the shuffling key (epoch ``e`` uses ``fold_in(key, e)``).
      history: per-epoch records, arrays of shape ``(max_epochs, ...)``, NaN (or 0) where not run:
        ``monitor`` (the monitored value, in its own sign), ``lr``, ``train_<metric>`` (epoch
        means of the train step's metrics) and, with a ``track`` hook, ``track`` of shape
        ``(max_epochs, steps_per_epoch, ...)``.
    """

    train: TrainState
    rules: RuleState
    epoch: Array
    key: Array
    history: dict[str, Any]


class FitResult(struct.PyTreeNode):
    """What ``fit`` returns.

    Attributes:
      state: the restored ``TrainState`` (``Rules.restore`` decides which parameters).
      last: the ``TrainState`` after the last epoch.
      best_value: best monitored value (in the metric's own sign).
      best_epoch: epoch (1-based) at which it was reached (0: never finite).
      epochs: epochs run.
      stopped: whether early stopping fired.
      lr_scale: final plateau scale.
      history: ``LoopState.history``.
    """

    state: TrainState
    last: TrainState
    best_value: Array
    best_epoch: Array
    epochs: Array
    stopped: Array
    lr_scale: Array
    history: dict[str, Any]


def _metrics_dict(out: Any) -> dict[str, Array]:
    return dict(out) if isinstance(out, Mapping) else {"metric": out}


def _num_rows(train_data: PyTree) -> int:
    leaves = jax.tree.leaves(train_data)
    if not leaves:
        raise ValueError("data['train'] has no arrays.")
    n = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in leaves}
    if len(n) != 1 or None in n:
        raise ValueError(f"every array of data['train'] needs the same leading (row) axis (got leading sizes {n}).")
    return int(cast(int, next(iter(n))))


def _check_data(data: Mapping[str, Any], config: LoopConfig) -> None:
    if not isinstance(data, Mapping) or "train" not in data:
        raise ValueError(
            "data must be a dict with a 'train' entry and the monitored split, "
            "e.g. {'train': (x, y), 'val': (x_val, y_val)}."
        )
    if config.monitor_split is not None and config.monitor_split not in data:
        raise ValueError(
            f"LoopConfig.monitor_split={config.monitor_split!r} is not a key of data (keys: {sorted(data)}); "
            "add that split or set monitor_split=None to monitor the training steps' metric."
        )


def _shapes(fn: Callable[..., Any], *args: Any) -> Any:
    return jax.eval_shape(fn, *args)


def fit_init(
    train_step: TrainStep,
    eval_fn: EvalFn | None,
    state: TrainState,
    data: Mapping[str, Any],
    config: LoopConfig,
    *,
    key: Array,
    lr: Array | float | None = None,
    track: TrackFn | None = None,
) -> LoopState:
    """The loop's state before epoch 1.

    ``lr`` (optional, may be traced: one per replica in a sweep) overwrites the
    ``inject_hyperparams`` learning rate of ``state``; plateau decay multiplies it.
    The other arguments are those of ``fit`` (used here for the shapes of the history).
    """
    _check_data(data, config)
    n = _num_rows(data["train"])
    nb, bs = num_batches(config, n)
    opt_state = state.opt_state
    if lr is not None:
        opt_state = _set_lr(opt_state, lr)
    rules = config.rules
    # the base learning rate in its own dtype: float64 stays float64 under x64
    base_lr = get_learning_rate(opt_state) if rules.plateau is not None else None
    train = cast(Any, state).replace(opt_state=opt_state)
    first = jax.tree.map(lambda a: a[:bs], data["train"])
    _, step_metrics = _shapes(train_step, train, first)
    E = config.max_epochs
    nan = lambda shape, dtype=jnp.float32: jnp.full(shape, jnp.nan, dtype)  # noqa: E731
    history: dict[str, Any] = {}
    try:
        history["lr"] = nan((E,), jnp.result_type(get_learning_rate(opt_state).dtype, jnp.float32))
    except TypeError:
        pass  # not an inject_hyperparams optimizer: no learning rate to record
    for k, v in dict(step_metrics).items():
        if v.shape == ():
            history[f"train_{k}"] = nan((E,), jnp.result_type(v.dtype, jnp.float32))
    if config.monitor_split is None and rules.monitor not in step_metrics:
        raise ValueError(
            f"Rules.monitor={rules.monitor!r} with monitor_split=None must be a metric of the train step "
            f"(it returns {sorted(step_metrics)})."
        )
    if config.monitor_split is not None:
        if eval_fn is None:
            raise ValueError(f"monitor_split={config.monitor_split!r} needs an eval_fn (or monitor_split=None).")
        ev = _metrics_dict(_shapes(eval_fn, train, data[config.monitor_split]))
        if rules.monitor not in ev:
            raise ValueError(f"Rules.monitor={rules.monitor!r} is not a metric of eval_fn (it returns {sorted(ev)}).")
        monitored = ev[rules.monitor]
    else:
        monitored = step_metrics[rules.monitor]
    # compare in the metric's precision (float64 stays float64 under x64), at least float32
    value_dtype = jnp.result_type(monitored.dtype, jnp.float32)
    history["monitor"] = nan((E,), value_dtype)
    if track is not None:
        tr = _shapes(track, train, train)
        history["track"] = jax.tree.map(lambda s: jnp.zeros((E, nb) + s.shape, s.dtype), tr)
    return LoopState(
        train=train,
        rules=rules_init(rules, (train.params, train.rest), value_dtype, base_lr),
        epoch=jnp.zeros((), jnp.int32),
        key=key,
        history=history,
    )


def _epoch_update(
    train_step: TrainStep,
    eval_fn: EvalFn | None,
    track: TrackFn | None,
    config: LoopConfig,
    loop: LoopState,
    data: Mapping[str, Any],
) -> tuple[LoopState, dict[str, Any]]:
    """One epoch: ``(loop with history unchanged, this epoch's history record)``."""
    train_data = data["train"]
    n = _num_rows(train_data)
    ep = loop.epoch
    nb, bs = num_batches(config, n)
    idx = None if (nb, bs) == (1, n) else _epoch_indices(config, jax.random.fold_in(loop.key, ep), n)

    def one_step(state: TrainState, rows: Array | None) -> tuple[TrainState, tuple[dict[str, Array], Any]]:
        batch = train_data if rows is None else jax.tree.map(lambda a: a[rows], train_data)
        new, metrics = train_step(state, batch)
        rec = {k: v for k, v in dict(metrics).items() if jnp.ndim(v) == 0}
        return new, (rec, None if track is None else track(state, new))

    if idx is None:
        train, (recs, tracked) = one_step(loop.train, None)
        recs = jax.tree.map(lambda a: a[None], recs)
        tracked = None if track is None else jax.tree.map(lambda a: a[None], tracked)
    else:
        train, (recs, tracked) = jax.lax.scan(one_step, loop.train, idx)
    means = {k: jnp.mean(v.astype(jnp.result_type(v.dtype, jnp.float32))) for k, v in recs.items()}
    rules = config.rules
    if config.monitor_split is None:
        value = means[rules.monitor]
    else:
        assert eval_fn is not None
        value = _metrics_dict(eval_fn(train, data[config.monitor_split]))[rules.monitor]
    value = jnp.asarray(value).astype(loop.rules.stopping.best.dtype)
    rule_state = rules_update(rules, loop.rules, value, (train.params, train.rest), ep + 1)
    if rules.plateau is not None:
        train = cast(Any, train).replace(opt_state=_set_lr(train.opt_state, decayed_lr(rule_state)))
    record: dict[str, Any] = {"monitor": value, **{f"train_{k}": v for k, v in means.items()}}
    if "lr" in loop.history:
        record["lr"] = get_learning_rate(train.opt_state)
    if track is not None:
        record["track"] = tracked
    new = loop.replace(train=train, rules=rule_state, epoch=ep + 1)
    return new, {k: v for k, v in record.items() if k in loop.history}


def _write(history: dict[str, Any], record: dict[str, Any], ep: Array, axis: int = 0) -> dict[str, Any]:
    """``history[k][..., ep, ...] = record[k]`` along ``axis`` (in place inside a loop)."""

    def put(buf: Array, v: Array) -> Array:
        v = jnp.expand_dims(jnp.asarray(v).astype(buf.dtype), axis)
        return jax.lax.dynamic_update_slice_in_dim(buf, v, ep, axis)

    return {k: jax.tree.map(put, history[k], record[k]) if k in record else history[k] for k in history}


def fit_epochs(
    train_step: TrainStep,
    eval_fn: EvalFn | None,
    loop: LoopState,
    data: Mapping[str, Any],
    config: LoopConfig,
    *,
    until: int | Array | None = None,
    track: TrackFn | None = None,
) -> LoopState:
    """Run epochs until early stopping fires or ``epoch == min(until, max_epochs)`` (a ``lax.while_loop``)."""
    _check_data(data, config)
    stop_at = config.max_epochs if until is None else jnp.minimum(until, config.max_epochs)

    def cond(loop: LoopState) -> Array:
        return (~loop.rules.stopping.stopped) & (loop.epoch < stop_at)

    def body(loop: LoopState) -> LoopState:
        new, record = _epoch_update(train_step, eval_fn, track, config, loop, data)
        return new.replace(history=_write(loop.history, record, loop.epoch))

    return jax.lax.while_loop(cond, body, loop)


def fit_result(loop: LoopState, config: LoopConfig) -> FitResult:
    """Pick the returned parameters (``config.rules.restore``) and summarise the run."""
    rs, last = loop.rules, loop.train
    state = last
    if config.rules.keeps_best:
        params, rest = rs.stopping.best_params
        pick = lambda b, p: jnp.where(use_best(config.rules, rs), b, p)  # noqa: E731
        state = cast(Any, last).replace(
            params=jax.tree.map(pick, params, last.params), rest=jax.tree.map(pick, rest, last.rest)
        )
    return FitResult(
        state=state,
        last=last,
        best_value=best_value(config.rules, rs),
        best_epoch=rs.stopping.best_step,
        epochs=loop.epoch,
        stopped=rs.stopping.stopped,
        lr_scale=rs.plateau.scale,
        history=loop.history,
    )


def fit(
    train_step: TrainStep,
    eval_fn: EvalFn | None,
    state: TrainState,
    data: Mapping[str, Any],
    config: LoopConfig,
    *,
    key: Array,
    lr: Array | float | None = None,
    track: TrackFn | None = None,
) -> FitResult:
    """Train one replica to early stopping or ``config.max_epochs``; pure, jittable and vmappable.

    Each epoch: shuffle (``fold_in(key, epoch)``), ``train_step`` over the minibatches of
    ``data["train"]`` (a ``lax.scan``), ``eval_fn(state, data[config.monitor_split])``,
    early stopping and plateau decay on the monitored value. Once stopped, a replica's
    state no longer changes (under ``vmap`` the others go on).

    Args:
      train_step: ``(TrainState, batch) -> (TrainState, metrics)`` (``make_train_step``).
      eval_fn: ``(TrainState, split) -> metrics`` (``make_eval_step``); ``None`` when
        ``config.monitor_split`` is ``None``.
      state: the initial ``TrainState``.
      data: ``{"train": pytree of arrays (N, ...), <split>: pytree, ...}``.
      config: the rules (``LoopConfig``).
      key: PRNG key for shuffling.
      lr: optional learning rate (traced values allowed) for ``inject_hyperparams`` optimizers.
      track: optional hook ``(state_before, state_after) -> pytree of arrays`` called after every
        step; its outputs are kept in ``history["track"]`` with shape ``(max_epochs, steps, ...)``
        (e.g. the largest move of any unit's activation boundary, ``gmpjax.cab.step_change``).

    Returns:
      ``FitResult``.
    """
    loop = fit_init(train_step, eval_fn, state, data, config, key=key, lr=lr, track=track)
    loop = fit_epochs(train_step, eval_fn, loop, data, config, track=track)
    return fit_result(loop, config)


def _sweep_epochs(
    train_step: TrainStep,
    eval_fn: EvalFn | None,
    track: TrackFn | None,
    config: LoopConfig,
    loops: LoopState,
    data: Mapping[str, Any],
    data_axis: int | None,
    start: Array,
    until: Array | int,
) -> LoopState:
    """Epochs ``start, ..., until - 1`` of replicas (leading axis) that all stand at epoch ``start`` or have stopped.

    One ``while_loop`` with a shared epoch counter runs the vmapped epoch while any replica is
    still training; replicas that stopped are masked (their state and history do not change).
    Writing the history at the shared counter keeps each epoch's cost independent of
    ``max_epochs`` (``vmap`` of ``fit_epochs`` would select over the whole history every epoch).
    """
    epoch = jax.vmap(lambda lp, d: _epoch_update(train_step, eval_fn, track, config, lp, d), in_axes=(0, data_axis))

    def going(loops: LoopState, t: Array) -> Array:
        return (~loops.rules.stopping.stopped) & (loops.epoch == t)

    def cond(carry: tuple[LoopState, Array]) -> Array:
        loops, t = carry
        return (t < until) & jnp.any(going(loops, t))

    def body(carry: tuple[LoopState, Array]) -> tuple[LoopState, Array]:
        loops, t = carry
        on = going(loops, t)
        new, record = epoch(loops, data)

        def keep(a: Array, b: Array) -> Array:
            return jnp.where(on.reshape(on.shape + (1,) * (a.ndim - 1)), a, b)

        moved = jax.tree.map(
            keep,
            (new.train, new.rules, new.epoch),
            (loops.train, loops.rules, loops.epoch),
        )
        old = {
            k: jax.tree.map(lambda buf: jax.lax.dynamic_index_in_dim(buf, t, 1, keepdims=False), loops.history[k])
            for k in record
        }
        record = {k: jax.tree.map(keep, record[k], old[k]) for k in record}
        train, rules, ep = moved
        history = _write(loops.history, record, t, axis=1)
        return loops.replace(train=train, rules=rules, epoch=ep, history=history), t + 1

    loops, _ = jax.lax.while_loop(cond, body, (loops, jnp.asarray(start, jnp.int32)))
    return loops


def _rows(tree: PyTree, idx: Array | None) -> PyTree:
    """``tree`` with every leaf indexed by ``idx`` along its leading axis (``tree`` itself for ``None``)."""
    return tree if idx is None else jax.tree.map(lambda a: a[idx], tree)


def _bucket(n: int, total: int, min_bucket: int) -> int:
    """Smallest of ``total, ceil(total/2), ceil(total/4), ...`` (not below ``min_bucket``) that holds ``n``."""
    b = total
    while b > min_bucket and -(-b // 2) >= n:
        b = -(-b // 2)
    return b


def sweep(
    train_step: TrainStep,
    eval_fn: EvalFn | None,
    states: TrainState,
    data: Mapping[str, Any],
    config: LoopConfig,
    *,
    keys: Array,
    lrs: Array | None = None,
    data_axis: int | None = 0,
    data_index: Array | None = None,
    track: TrackFn | None = None,
    chunk: int | None = None,
    segment: int | None = None,
    min_bucket: int | None = None,
    on_segment: Callable[[int, LoopState], None] | None = None,
) -> FitResult:
    """``fit`` for ``R`` independent replicas (seeds x learning rates x data splits) in one compiled program.

    The replicas share one ``while_loop`` over epochs that runs while any of them is training
    (stopped replicas are masked, their results frozen), and the epoch itself is vmapped. Each
    replica's result is its own ``fit`` (to float rounding: XLA may round a batched matmul of
    another batch size differently, about 1 ulp, which chaotic training can amplify).

    Args:
      states: ``TrainState`` with a leading replica axis ``R`` (``init_replicas``).
      data: as for ``fit``; with ``data_axis=0`` every array has a leading replica axis ``R``
        (one data split per replica), with ``data_axis=None`` all replicas share it.
      keys: shuffling keys ``(R,)``.
      lrs: optional learning rates ``(R,)`` (``inject_hyperparams`` optimizers).
      data_index: optional ``(R,)`` ints: replica ``r`` trains on split ``data_index[r]`` of
        ``data``, whose arrays then have a leading axis of splits ``S`` (e.g. splits x learning
        rates without copying each split once per learning rate).
      chunk: run the replicas ``chunk`` at a time, one batch after the other with one compiled
        program (the last batch padded). A batch stops with its own slowest replica, so a replica
        that stopped early waits for fewer others, and a small batch's activations stay in cache.
      segment: run the loop ``segment`` epochs at a time and, between segments, gather the
        replicas still training into a smaller batch (sizes ``R, ceil(R/2), ...`` down to
        ``min_bucket``), so a stopped replica costs no further optimizer work. Each batch size is
        one more compiled program. Epochs and stopping decisions are those of one loop.
      min_bucket: smallest batch of replicas ``segment`` compiles (default ``ceil(R / 8)``).
      on_segment: with ``segment``, ``on_segment(epoch, loops)`` after every segment (``loops``: the
        ``LoopState`` of all replicas, e.g. to take snapshots of ``loops.train``).

    Returns:
      ``FitResult`` whose leaves have a leading axis ``R``.
    """
    R = int(jnp.shape(keys)[0])
    data_index = _check_sweep(R, data_axis, data_index, chunk, segment)
    if on_segment is not None and segment is None:
        raise ValueError("on_segment needs segment (the epochs between two calls).")
    p = _programs(train_step, eval_fn, track, config, data_axis, lrs is not None)
    if segment is not None:
        args = (data_index, data_axis, segment, min_bucket, on_segment)
        return _sweep_segments(p, states, data, keys, lrs, config, *args)
    if chunk is None or chunk >= R:
        return p.whole(states, data, keys, lrs, data_index)
    rows = np.minimum(np.arange(-(-R // chunk) * chunk), R - 1).reshape(-1, chunk)
    take = _take
    parts = []
    for r in rows:
        if data_index is not None:
            d, idx = data, take(data_index, r)
        else:
            d, idx = (data if data_axis is None else take(data, r)), None
        parts.append(p.whole(take(states, r), d, take(keys, r), None if lrs is None else take(lrs, r), idx))
    return jax.tree.map(lambda *a: jnp.concatenate(a)[:R], *parts)


def _check_sweep(
    R: int, data_axis: int | None, data_index: Array | None, chunk: int | None, segment: int | None
) -> Array | None:
    """Validate ``sweep``'s batching arguments; returns ``data_index`` as an array (or None)."""
    for name, v in (("chunk", chunk), ("segment", segment)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an int >= 1 or None (got {v!r}).")
    if chunk is not None and segment is not None:
        raise ValueError("give chunk or segment, not both (each is a way to stop paying for stopped replicas).")
    if data_index is None:
        return None
    if data_axis != 0:
        raise ValueError("data_index needs data_axis=0 (data arrays with a leading axis of splits).")
    data_index = jnp.asarray(data_index)
    if data_index.shape != (R,):
        raise ValueError(f"data_index must have shape (R,) = ({R},) (got {data_index.shape}).")
    return data_index


_take = jax.jit(_rows)
_put = jax.jit(lambda tree, part, idx: jax.tree.map(lambda a, b: a.at[idx].set(b), tree, part))


@dataclasses.dataclass(frozen=True)
class _Programs:
    """The jitted pieces of one sweep setting (cached: repeated sweeps reuse their compiled programs)."""

    init: Callable[..., LoopState]
    run: Callable[..., LoopState]
    result: Callable[[LoopState], FitResult]
    whole: Callable[..., FitResult]


@functools.lru_cache(maxsize=32)
def _programs(
    train_step: TrainStep,
    eval_fn: EvalFn | None,
    track: TrackFn | None,
    config: LoopConfig,
    data_axis: int | None,
    with_lrs: bool,
) -> _Programs:
    def init_one(s: TrainState, d: Any, k: Array, lr: Array | None) -> LoopState:
        return fit_init(train_step, eval_fn, s, d, config, key=k, lr=lr, track=track)

    def run(loops: LoopState, d: Any, start: Array | int, until: Array | int) -> LoopState:
        return _sweep_epochs(train_step, eval_fn, track, config, loops, d, data_axis, jnp.asarray(start), until)

    init = jax.vmap(init_one, in_axes=(0, data_axis, 0, 0 if with_lrs else None))
    result = jax.vmap(lambda lp: fit_result(lp, config))

    def whole(states: TrainState, d: Any, keys: Array, lrs: Array | None, idx: Array | None) -> FitResult:
        d = _rows(d, idx)
        return result(run(init(states, d, keys, lrs), d, 0, config.max_epochs))

    return _Programs(jax.jit(init), jax.jit(run), jax.jit(result), jax.jit(whole))


def _sweep_segments(
    p: _Programs,
    states: TrainState,
    data: Mapping[str, Any],
    keys: Array,
    lrs: Array | None,
    config: LoopConfig,
    data_index: Array | None,
    data_axis: int | None,
    segment: int,
    min_bucket: int | None,
    on_segment: Callable[[int, LoopState], None] | None,
) -> FitResult:
    """``sweep(segment=...)``: ``segment`` epochs at a time, the replicas still training gathered in between."""
    R = int(jnp.shape(keys)[0])
    data = _take(data, data_index)
    loop = p.init(states, data, keys, lrs)
    floor = -(-R // 8) if min_bucket is None else max(1, min(int(min_bucket), R))
    epoch, E = 0, config.max_epochs
    active = jnp.arange(R)
    while active.shape[0] and epoch < E:
        start, epoch = epoch, min(epoch + segment, E)
        n = int(active.shape[0])
        b = _bucket(n, R, floor)
        if b == R and n == R:
            loop = p.run(loop, data, start, epoch)
        else:
            idx = jnp.concatenate([active, jnp.full((b - n,), active[0], active.dtype)]) if b > n else active
            part = p.run(_take(loop, idx), data if data_axis is None else _take(data, idx), start, epoch)
            loop = _put(loop, _take(part, jnp.arange(n)), active)
        going = jax.device_get(~loop.rules.stopping.stopped[active] & (loop.epoch[active] == epoch))
        active = active[jnp.asarray(going)]
        if on_segment is not None:
            on_segment(epoch, loop)
    return p.result(loop)
