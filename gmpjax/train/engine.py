"""The training engine every gmpjax experiment uses.

The model is an ``nnx.Module``; the engine splits it once into a static
``graphdef`` and a pure ``TrainState`` (trainable ``params``, the ``rest`` of the
module state such as batch statistics, the optax state and a step counter).
Train and eval steps are pure functions of that state, so they can be
``jax.jit``-ed, ``jax.vmap``-ed over independent replicas (seeds, data splits,
learning rates -- a sweep compiles once), driven by the compiled loop
(``gmpjax.train.loop``) or the host loop (``gmpjax.train.host``), and sharded
over devices (``gmpjax.train.sharding``).

>>> import jax, jax.numpy as jnp, optax
>>> from flax import nnx
>>> from gmpjax.layers import GmPDense
>>> def loss_fn(model, batch):
...     x, y = batch
...     return jnp.mean((model(x) - y) ** 2)
>>> graphdef, state = init_train_state(GmPDense(2, 1, activation=None, rngs=nnx.Rngs(0)), optax.sgd(0.1))
>>> step = jax.jit(make_train_step(graphdef, optax.sgd(0.1), loss_fn))
>>> x = jnp.ones((8, 2)); y = jnp.zeros((8, 1))
>>> state, metrics = step(state, (x, y))
>>> int(state.step), sorted(metrics)
(1, ['loss'])
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from gmpjax.layers.gmp import angle_layers, precomputed_units

Array = jax.Array
PyTree = Any
LossFn = Callable[[nnx.Module, Any], Array | tuple[Array, Mapping[str, Array]]]

__all__ = [
    "TrainState",
    "init_train_state",
    "init_replicas",
    "merge_model",
    "make_train_step",
    "accumulate_gradients",
    "split_microbatches",
    "make_eval_step",
    "EarlyStopping",
    "early_stopping_init",
    "early_stopping_update",
    "MetricsLogger",
    "ScalarWriter",
    "check_writers",
]


@struct.dataclass
class TrainState:
    """Pure training state: a pytree, so it jits, vmaps, shards and checkpoints.

    Attributes:
      step: scalar int32 number of optimizer updates applied.
      params: the trainable variables (``nnx.State`` of the ``wrt`` filter).
      rest: every other variable of the module (batch stats, moving means, fixed directions).
      opt_state: the optax state of ``params``.
    """

    step: Array
    params: PyTree
    rest: PyTree
    opt_state: PyTree


def _split(model: nnx.Module, wrt) -> tuple[nnx.GraphDef, PyTree, PyTree]:
    # two filters (wrt, ...) give exactly (graphdef, params, rest)
    return cast("tuple[nnx.GraphDef, PyTree, PyTree]", nnx.split(model, wrt, ...))


def init_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, *, wrt=nnx.Param
) -> tuple[nnx.GraphDef, TrainState]:
    """Split ``model`` into ``(graphdef, TrainState)`` with a fresh optimizer state for ``tx``.

    Args:
      model: any nnx module.
      tx: optax transformation.
      wrt: nnx filter selecting the trainable variables (default ``nnx.Param``).
    """
    graphdef, params, rest = _split(model, wrt)
    return graphdef, TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))


def init_replicas(
    make_model: Callable[[Array], nnx.Module],
    keys: Array,
    tx: optax.GradientTransformation,
    *,
    wrt=nnx.Param,
) -> tuple[nnx.GraphDef, TrainState]:
    """Initialise one replica per key, stacked on a leading axis, for ``jax.vmap``-ed training.

    Args:
      make_model: ``key -> nnx.Module`` (e.g. ``lambda k: MLP(..., rngs=nnx.Rngs(k))``).
      keys: PRNG keys, shape ``(R,)``.
      tx: optax transformation (its hyper-parameters may differ per replica if
        created inside ``make_model``'s caller with ``optax.inject_hyperparams``).

    Returns:
      ``(graphdef, state)`` where every leaf of ``state`` has a leading axis ``R``.
    """
    # The graphdef only needs shapes; tx.init is not run on them (inject_hyperparams cannot init abstract params).
    graphdef, _, _ = _split(nnx.eval_shape(lambda: make_model(keys[0])), wrt)

    def one(key):
        return init_train_state(make_model(key), tx, wrt=wrt)[1]

    return graphdef, jax.vmap(one)(keys)


def merge_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
    """Rebuild the nnx module of a (single-replica) ``TrainState``."""
    return nnx.merge(graphdef, state.params, state.rest)


def _as_loss_and_metrics(out) -> tuple[Array, dict[str, Array]]:
    if isinstance(out, tuple):
        loss, metrics = out
        metrics = dict(metrics)
    else:
        loss, metrics = out, {}
    if jnp.ndim(loss) != 0:
        raise ValueError(
            f"loss_fn must return a scalar loss (or (loss, metrics)), but returned shape {jnp.shape(loss)}; "
            "reduce the per-example losses, e.g. with .mean()."
        )
    return loss, metrics


def _check_opt_state(tx: optax.GradientTransformation, state: TrainState) -> None:
    """A clear error when ``state.opt_state`` was not made by ``tx`` (e.g. an SGD state stepped with Adam)."""
    expected = jax.tree.structure(jax.eval_shape(tx.init, state.params))
    got = jax.tree.structure(state.opt_state)
    if str(expected) != str(got):
        raise ValueError(
            "the train step's optimizer does not match state.opt_state: the state was initialised with a "
            f"different optax transformation (its opt_state is {_short(got)}, this step's tx makes "
            f"{_short(expected)}); build the state with init_train_state(model, tx) using the same tx."
        )


def _short(treedef: Any) -> str:
    text = str(treedef)
    return text if len(text) <= 200 else text[:200] + "..."


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    wrt=nnx.Param,
    pass_loss_as_value: bool = False,
    microbatches: int = 1,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, Array]]]:
    """Build a pure train step ``(state, batch) -> (state, metrics)``.

    The module is rebuilt from ``graphdef`` inside the step, ``loss_fn(model, batch)``
    (returning ``loss`` or ``(loss, metrics)``) is differentiated with respect to
    the ``wrt`` variables, variables the forward pass mutates (batch statistics)
    are carried to the new state, and ``tx`` updates the parameters.

    Args:
      graphdef: from ``init_train_state`` / ``init_replicas``.
      tx: the optax transformation the state was initialised with.
      loss_fn: ``(model, batch) -> loss | (loss, metrics)``.
      wrt: nnx filter of the trainable variables.
      pass_loss_as_value: give ``value=loss`` to ``tx.update`` (for
        ``optax.contrib.reduce_on_plateau`` and similar).
      microbatches: gradient accumulation. ``k > 1`` splits every leaf of ``batch`` along its
        leading axis into ``k`` equal microbatches (the size must be divisible by ``k``), runs
        them one after another with ``lax.scan`` and applies one optimizer update with the mean
        of their gradients; the loss and metrics are the means over microbatches. For a loss
        that is a mean over examples this is the gradient of the whole batch. The directions
        ``u(theta)`` of every GmP layer in the model are computed once per step, ``dL/du`` is
        accumulated over the microbatches and pulled back through the map once, so the map's
        cost does not grow with ``k`` (see ``accumulate_gradients``). Layers that use batch
        statistics (BN, IMN) see each microbatch as its own batch: their means are taken per
        microbatch, and their moving statistics are updated ``k`` times per step.

    Not jitted: wrap it in ``jax.jit`` (and ``jax.vmap`` for replicas) yourself.
    """
    if not isinstance(microbatches, int) or isinstance(microbatches, bool) or microbatches < 1:
        raise ValueError(f"microbatches must be a positive int (got {microbatches!r}); 1 means no accumulation.")
    if microbatches > 1:
        accumulate = accumulate_gradients(graphdef, loss_fn, microbatches, wrt=wrt)

        def accumulated_step(state: TrainState, batch) -> tuple[TrainState, dict[str, Array]]:
            _check_opt_state(tx, state)
            loss, metrics, rest, grads = accumulate(state.params, state.rest, batch)
            extra = {"value": loss} if pass_loss_as_value else {}
            updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
            params = optax.apply_updates(state.params, updates)
            # struct.dataclass adds .replace at runtime; mypy does not see it
            new = state.replace(  # type: ignore[attr-defined]
                step=state.step + 1, params=params, rest=rest, opt_state=opt_state
            )
            return new, {"loss": loss, **metrics}

        return accumulated_step

    def step(state: TrainState, batch) -> tuple[TrainState, dict[str, Array]]:
        _check_opt_state(tx, state)

        def objective(params, rest):
            model = nnx.merge(graphdef, params, rest, copy=True)
            loss, metrics = _as_loss_and_metrics(loss_fn(model, batch))
            _, _, rest = _split(model, wrt)
            return loss, (metrics, rest)

        (loss, (metrics, rest)), grads = jax.value_and_grad(objective, has_aux=True)(state.params, state.rest)
        extra = {"value": loss} if pass_loss_as_value else {}
        updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        # struct.dataclass adds .replace at runtime; mypy does not see it
        new = state.replace(step=state.step + 1, params=params, rest=rest, opt_state=opt_state)  # type: ignore[attr-defined]
        return new, {"loss": loss, **metrics}

    return step


def split_microbatches(batch: PyTree, k: int) -> PyTree:
    """Reshape every leaf ``(B, ...) -> (k, B // k, ...)``; ValueError if ``B`` is not divisible by ``k``.

    >>> import jax.numpy as jnp
    >>> split_microbatches((jnp.zeros((8, 3)), jnp.zeros(8)), 4)[0].shape
    (4, 2, 3)
    """

    def split(a):
        a = jnp.asarray(a)
        if a.ndim == 0 or a.shape[0] % k:
            raise ValueError(
                f"microbatches={k}: every batch leaf needs a leading axis divisible by {k} "
                f"(got a leaf of shape {a.shape}); change the batch size or microbatches."
            )
        return a.reshape((k, a.shape[0] // k) + a.shape[1:])

    return jax.tree.map(split, batch)


def accumulate_gradients(
    graphdef: nnx.GraphDef, loss_fn: LossFn, microbatches: int, *, wrt=nnx.Param
) -> Callable[[PyTree, PyTree, Any], tuple[Array, dict[str, Array], PyTree, PyTree]]:
    """``(params, rest, batch) -> (loss, metrics, rest, grads)`` accumulated over ``microbatches``.

    The chain rule through u(theta) is applied once per step, not once per microbatch:

        u = u(theta) (every GmP layer, once),   G = (1/k) sum_b dL_b/du,   dL/dtheta = J_u(theta)^T G,

    with ``dL_b`` the loss of microbatch ``b`` evaluated with the layers fed the precomputed ``u``
    (``layer.unit()`` is the only place a GmP layer computes u). Every other parameter gets
    ``(1/k) sum_b dL_b/dp``, the same as the gradient of the mean loss over the whole batch.
    ``rest`` (batch statistics) is threaded through the microbatches in order.
    """
    k = microbatches

    def units_of(params, rest):
        model = nnx.merge(graphdef, params, rest, copy=True)
        return [cast(Any, layer).unit() for layer in angle_layers(model)]

    def micro_loss(params, units, rest, mb):
        model = nnx.merge(graphdef, params, rest, copy=True)
        with precomputed_units(angle_layers(model), units):
            loss, metrics = _as_loss_and_metrics(loss_fn(model, mb))
        _, _, rest = _split(model, wrt)
        return loss, (metrics, rest)

    grad_fn = jax.value_and_grad(micro_loss, argnums=(0, 1), has_aux=True)

    def run(params, rest, batch):
        mbs = split_microbatches(batch, k)
        units, pullback = jax.vjp(lambda p: units_of(p, rest), params)
        first = jax.tree.map(lambda a: a[0], mbs)
        (_, (metrics0, _)), _ = jax.eval_shape(grad_fn, params, units, rest, first)
        zeros = lambda tree: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)  # noqa: E731

        def body(carry, mb):
            rest, loss_sum, metric_sums, g_params, g_units = carry
            (loss, (metrics, rest)), (gp, gu) = grad_fn(params, units, rest, mb)
            add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
            return (rest, loss_sum + loss, add(metric_sums, metrics), add(g_params, gp), add(g_units, gu)), None

        init = (rest, jnp.zeros((), jnp.result_type(float)), zeros(metrics0), zeros(params), zeros(units))
        (rest, loss_sum, metric_sums, g_params, g_units), _ = jax.lax.scan(body, init, mbs)
        (g_theta,) = pullback(jax.tree.map(lambda g: g / k, g_units))
        grads = jax.tree.map(lambda a, b: a / k + b, g_params, g_theta)
        metrics = jax.tree.map(lambda m: m / k, metric_sums)
        return loss_sum / k, metrics, rest, grads

    return run


def make_eval_step(
    graphdef: nnx.GraphDef, metric_fn: Callable[[nnx.Module, Any], Mapping[str, Array] | Array]
) -> Callable[[TrainState, Any], dict[str, Array]]:
    """Build a pure eval step ``(state, batch) -> metrics`` with the module in eval mode.

    ``model.eval()`` switches batch norm / IMN to their moving statistics; the
    state is not modified.
    """

    def evaluate(state: TrainState, batch) -> dict[str, Array]:
        model = nnx.merge(graphdef, state.params, state.rest)
        model.eval()
        out = metric_fn(model, batch)
        return dict(out) if isinstance(out, Mapping) else {"metric": out}

    return evaluate


@struct.dataclass
class EarlyStopping:
    """Pure early-stopping / best-model state (vmappable, works inside ``lax.scan``).

    Attributes:
      best: best monitored value so far (lower is better).
      best_params: a copy of the parameters (or any pytree) at ``best``.
      best_step: the step at which ``best`` was reached.
      wait: evaluations since the last improvement.
      stopped: whether patience ran out.
    """

    best: Array
    best_params: PyTree
    best_step: Array
    wait: Array
    stopped: Array


def early_stopping_init(params: PyTree, dtype=jnp.float32) -> EarlyStopping:
    """A fresh state: ``best = inf`` (in ``dtype``), ``best_params = params``, counters at zero, not stopped."""
    return EarlyStopping(
        best=jnp.asarray(jnp.inf, dtype),
        best_params=params,
        best_step=jnp.zeros((), jnp.int32),
        wait=jnp.zeros((), jnp.int32),
        stopped=jnp.zeros((), bool),
    )


def early_stopping_update(
    es: EarlyStopping, value: Array, params: PyTree, step: Array, *, patience: int, min_delta: float = 0.0
) -> EarlyStopping:
    """Record ``value`` (lower is better); keep ``params`` if it improved by more than ``min_delta``.

    Once ``stopped`` is true the state is frozen, so a vmapped sweep can keep
    stepping replicas that have stopped without changing their result.
    """
    improved = (value < es.best - min_delta) & ~es.stopped
    pick = lambda new, old: jnp.where(improved, new, old)  # noqa: E731
    wait = jnp.where(improved, 0, es.wait + jnp.where(es.stopped, 0, 1))
    return EarlyStopping(
        best=pick(value.astype(es.best.dtype), es.best),
        best_params=jax.tree.map(pick, params, es.best_params),
        best_step=pick(jnp.asarray(step, jnp.int32), es.best_step),
        wait=wait,
        stopped=es.stopped | (wait >= patience),
    )


@runtime_checkable
class ScalarWriter(Protocol):
    """What the loggers write to: clu's ``metric_writers`` interface, scalars only.

    ``MetricsLogger`` is one; so is ``clu.metric_writers.create_default_writer(...)`` or
    a thin adapter around TensorBoard or W&B. ``flush()``, when the writer has it, is called at the end.
    """

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Record ``scalars`` (name -> number) at ``step``."""


def check_writers(writers: Sequence[Any]) -> tuple[ScalarWriter, ...]:
    """``writers`` as a tuple, or a TypeError naming the first without ``write_scalars(step, scalars)``."""
    for w in writers:
        if not isinstance(w, ScalarWriter):
            raise TypeError(
                f"writers: every writer needs write_scalars(step, scalars) (got {type(w).__name__}); "
                "pass clu metric writers or adapters with that method."
            )
    return tuple(writers)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class MetricsLogger:
    """Append metrics as JSON lines to ``<workdir>/<filename>`` (one object per ``log`` call).

    ``workdir=None`` writes nothing (``log`` still returns the record), e.g. on the
    processes of a multi-host run other than the first. Each of ``writers`` (clu-style
    ``write_scalars(step, scalars)``) receives the numeric values of every record.

    >>> class Print:
    ...     def write_scalars(self, step, scalars):
    ...         print(step, scalars)
    >>> MetricsLogger(None, writers=[Print()]).log(3, loss=0.5, note="x")
    3 {'loss': 0.5}
    {'step': 3, 'loss': 0.5, 'note': 'x'}
    """

    def __init__(
        self, workdir: str | os.PathLike | None, filename: str = "metrics.jsonl", *, writers: Sequence[Any] = ()
    ):
        self.writers = check_writers(writers)
        self.path: str | None
        if workdir is None:
            self.path = None
        else:
            self.path = os.path.join(os.fspath(workdir), filename)
            os.makedirs(os.fspath(workdir), exist_ok=True)

    def log(self, step: int, **metrics) -> dict:
        """Write ``{"step": step, **metrics}`` (arrays as lists), pass its numbers to the writers, return it."""
        rec = {"step": int(step)}
        for k, v in metrics.items():
            v = jax.device_get(v)
            rec[k] = v.tolist() if hasattr(v, "tolist") else v
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.writers:
            scalars = {k: v for k, v in rec.items() if k != "step" and _is_number(v)}
            for w in self.writers:
                w.write_scalars(int(step), scalars)
        return rec

    def flush(self) -> None:
        """Flush the writers that buffer."""
        for w in self.writers:
            flush = getattr(w, "flush", None)
            if callable(flush):
                flush()

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """clu's writer interface: the same as ``log(step, **scalars)``."""
        self.log(step, **scalars)

    def read(self) -> list[dict]:
        """Every record of the file, in order (``[]`` without a file)."""
        if self.path is None or not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate(self, last_step: int | None) -> None:
        """Keep only the records with ``step <= last_step`` (``None``: none); a resumed run logs the rest again."""
        if self.path is None or not os.path.exists(self.path):
            return
        keep = [] if last_step is None else [r for r in self.read() if r.get("step", 0) <= last_step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in keep)
        os.replace(tmp, self.path)
