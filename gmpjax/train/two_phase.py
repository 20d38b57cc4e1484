"""Two-phase training of the triangular-wave reparameterization, on top of ``gmpjax.train.engine``.

Phase 1 ("pretraining") optimises the module's own parameters -- for a
:class:`gmpjax.layers.TriangleNet` the peaks (and ``log s_0`` / free log scales, an
optional output gain/offset) -- through the peak -> weight map, so the network keeps
exactly ``2^d`` linear regions. At the **switch** the module's ``to_raw()`` produces a
plain MLP computing the identical function, and a *fresh* optimizer state is created
for its raw weights (the paper restarts the optimizer; a short loss spike is
possible). Phase 2 ("standard training") trains the raw weights without constraint.

One :class:`TwoPhaseConfig` describes the whole schedule; :func:`train_two_phase`
runs it for ``R`` independent replicas at once. Each phase goes through the replica
trainer ``gmpjax.train.replicas.train_replicas`` as a full-batch ``LoopConfig`` (one
epoch = one step, ``max_epochs`` = the phase's steps, no early stopping;
:func:`phase_loop_config`), in segments of ``chunk_steps`` epochs between snapshots:
one compiled program per phase.
``pretrain_steps = 0`` gives "skip pretraining"; a model without ``to_raw`` (a
baseline MLP) is trained in phase 2 only.

>>> import jax, jax.numpy as jnp
>>> from flax import nnx
>>> from gmpjax.layers import TriangleNet
>>> x = jnp.linspace(0, 1, 50)[:, None]; batch = (x, x ** 3)
>>> mse = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
>>> cfg = TwoPhaseConfig(pretrain_steps=20, finetune_steps=20, chunk_steps=10)
>>> res = train_two_phase(lambda k: TriangleNet(3, rngs=nnx.Rngs(k)), jax.random.split(jax.random.key(0), 2),
...                       mse, batch, cfg, progress=False)
>>> res.losses.shape, res.switch_step
((2, 40), 20)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gmpjax._optional import progress_bar
from gmpjax.regions import count_linear_regions_batched
from gmpjax.train.engine import TrainState, init_replicas, init_train_state
from gmpjax.train.loop import LoopConfig, LoopState
from gmpjax.train.replicas import train_replicas
from gmpjax.train.rules import Rules

Snapshot = Callable[[str, nnx.GraphDef, TrainState], dict[str, Any]]
"""``(phase, graphdef, stacked_state) -> record`` callback of :func:`train_two_phase`."""

__all__ = [
    "TwoPhaseConfig",
    "TwoPhaseResult",
    "make_optimizer",
    "phase_loop_config",
    "region_snapshot",
    "stacked_layers",
    "switch_to_raw",
    "switch_replicas",
    "train_two_phase",
]


@dataclass(frozen=True)
class TwoPhaseConfig:
    """The whole two-phase schedule.

    Attributes:
      pretrain_steps: full-batch steps on the peak parameters (0 = skip pretraining).
      finetune_steps: steps on the raw weights after the switch.
      pretrain_lr: learning rate of phase 1 (paper: Adam 1e-3).
      finetune_lr: learning rate of phase 2 (a fresh optimizer).
      optimizer: "adam" (default) or "sgd" for both phases.
      chunk_steps: steps per call of the compiled loop; snapshots are taken between chunks.
    """

    pretrain_steps: int = 1000
    finetune_steps: int = 20000
    pretrain_lr: float = 1e-3
    finetune_lr: float = 1e-3
    optimizer: str = "adam"
    chunk_steps: int = 1000

    def __post_init__(self) -> None:
        for name in ("pretrain_steps", "finetune_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"TwoPhaseConfig.{name} must be an int >= 0; got {v!r}.")
        if not isinstance(self.chunk_steps, int) or self.chunk_steps < 1:
            raise ValueError(f"TwoPhaseConfig.chunk_steps must be an int >= 1; got {self.chunk_steps!r}.")
        for name in ("pretrain_lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TwoPhaseConfig.{name} must be > 0; got {getattr(self, name)!r}.")
        make_optimizer(self.optimizer, 1.0)


def make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """``optax.adam(lr)`` or ``optax.sgd(lr)``."""
    if name == "adam":
        return optax.adam(lr)
    if name == "sgd":
        return optax.sgd(lr)
    raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {name!r}.")


def _raw_module(model: nnx.Module) -> nnx.Module:
    return model.to_raw() if hasattr(model, "to_raw") else model


def switch_to_raw(
    graphdef: nnx.GraphDef, state: TrainState, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    """The phase switch for one replica: ``to_raw()`` and a fresh optimizer state for ``tx``.

    The function computed by the module is unchanged (``to_raw`` is exact); the step
    counter carries on. Pure and vmappable (see :func:`switch_replicas`).
    """
    model = nnx.merge(graphdef, state.params, state.rest)
    g, new = init_train_state(_raw_module(model), tx)
    return g, dataclasses.replace(new, step=state.step)


def switch_replicas(
    graphdef: nnx.GraphDef, states: TrainState, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    """:func:`switch_to_raw` over a leading replica axis (``jax.vmap``)."""
    one = jax.tree.map(lambda a: a[0], states)
    graph_raw, _ = switch_to_raw(graphdef, one, tx)
    new = jax.vmap(lambda s: switch_to_raw(graphdef, s, tx)[1])(states)
    return graph_raw, new


@dataclass
class TwoPhaseResult:
    """Outcome of :func:`train_two_phase` (replica axis first everywhere).

    Attributes:
      graphdef, state: the final (raw, phase-2) model of every replica.
      pretrain_graphdef, pretrain_state: the model at the end of phase 1 (before the switch).
      losses: ``(R, pretrain_steps + finetune_steps)`` training loss before each update.
      switch_step: index of the first phase-2 step in ``losses``.
      snapshots: records returned by the ``snapshot`` callback.
    """

    graphdef: nnx.GraphDef
    state: TrainState
    pretrain_graphdef: nnx.GraphDef
    pretrain_state: TrainState
    losses: np.ndarray
    switch_step: int
    snapshots: list[dict[str, Any]] = field(default_factory=list)

    def model(self, r: int = 0) -> nnx.Module:
        """The final module of replica ``r``."""
        s = jax.tree.map(lambda a: a[r], self.state)
        return nnx.merge(self.graphdef, s.params, s.rest)

    def _pick(self, pretrain: bool) -> tuple[nnx.GraphDef, TrainState]:
        return (self.pretrain_graphdef, self.pretrain_state) if pretrain else (self.graphdef, self.state)

    def outputs(self, x: jax.Array, *, pretrain: bool = False) -> jax.Array:
        """Every replica's output ``(R, n, 1)`` at ``x``: shared ``(n, 1)`` or one set per replica ``(R, n, 1)``.

        ``pretrain=True`` uses the model at the end of phase 1 (before the switch).
        """
        graphdef, state = self._pick(pretrain)
        axis = 0 if jnp.ndim(x) == 3 else None
        apply = lambda p, r, xx: nnx.merge(graphdef, p, r)(xx)  # noqa: E731
        return jax.vmap(apply, in_axes=(0, 0, axis))(state.params, state.rest, x)

    def mse(self, x: jax.Array, y: jax.Array, *, pretrain: bool = False) -> np.ndarray:
        """Every replica's mean squared error ``(R,)`` of :meth:`outputs` at ``x`` against ``y``."""
        return np.asarray(jnp.mean((self.outputs(x, pretrain=pretrain) - y) ** 2, axis=(-2, -1)))

    def summary(self, train: tuple[jax.Array, jax.Array], test: tuple[jax.Array, jax.Array] | None = None) -> dict:
        """The numbers of a run on ``train = (x, y)`` (and ``test``), replica axis first.

        ``train_mse (R,)``, ``loss_curve_median`` / ``loss_curve_min`` over replicas, ``switch_step``,
        ``snapshots``, ``pretrain_mse (R,)`` after a peak phase, ``test_mse (R,)`` with a test set, and
        ``best_run`` (lowest test MSE, else training MSE) with its ``best_layers`` ``[(W, b), ...]``.
        """
        out: dict[str, Any] = {"train_mse": self.mse(*train), "loss_curve_median": np.median(self.losses, 0)}
        out |= {"loss_curve_min": np.min(self.losses, 0), "switch_step": self.switch_step, "snapshots": self.snapshots}
        if self.switch_step:
            out["pretrain_mse"] = self.mse(*train, pretrain=True)
        if test is not None:
            out["test_mse"] = self.mse(*test)
        out["best_run"] = best = int(np.argmin(out["test_mse"] if test is not None else out["train_mse"]))
        out["best_layers"] = [(W[best], b[best]) for W, b in self.stacked_layers()]
        return out

    def stacked_layers(self, *, pretrain: bool = False) -> list[tuple[jax.Array, jax.Array]]:
        """``layer_arrays()`` of every replica, stacked: ``[(W (R, in, out), b (R, out)), ...]``."""
        return stacked_layers(*self._pick(pretrain))


def stacked_layers(graphdef: nnx.GraphDef, state: TrainState) -> list[tuple[jax.Array, jax.Array]]:
    """``layer_arrays()`` of every replica of a stacked ``state``: ``[(W (R, in, out), b (R, out)), ...]``."""
    return jax.vmap(lambda p, r: nnx.merge(graphdef, p, r).layer_arrays())(state.params, state.rest)


def region_snapshot(min_width: float = 0.0, interval: tuple[float, float] = (0.0, 1.0)) -> Snapshot:
    """A ``snapshot`` for :func:`train_two_phase`: ``{"regions": [count per replica]}`` of the linear
    regions on ``interval`` (``gmpjax.regions.count_linear_regions_batched``; ``min_width`` folds
    pieces narrower than that, e.g. ``1e-6`` for float32 weights)."""

    def snap(phase: str, graphdef: nnx.GraphDef, state: TrainState) -> dict[str, Any]:
        layers = stacked_layers(graphdef, state)
        return {"regions": count_linear_regions_batched(layers, interval, min_width=min_width).tolist()}

    return snap


def phase_loop_config(steps: int) -> LoopConfig:
    """One phase as a ``LoopConfig``: full batch (one epoch = one step), ``steps`` epochs, no early stopping.

    The monitored value is the training loss (``monitor_split=None``); nothing stops the phase
    early and the last state is kept (``restore="never"``).

    >>> phase_loop_config(100).max_epochs, phase_loop_config(100).batching
    (100, 'full')
    """
    return LoopConfig(max_epochs=steps, batching="full", monitor_split=None, rules=Rules(monitor="loss"))


def _run_phase(
    graphdef: nnx.GraphDef,
    state: TrainState,
    optimizer: Callable[[float], optax.GradientTransformation],
    lr: float,
    loss_fn: Callable[[nnx.Module, Any], Any],
    batch: Any,
    batch_axis: int | None,
    keys: jax.Array,
    steps: int,
    chunk: int,
    on_chunk: Callable[[int, TrainState, np.ndarray], None],
) -> tuple[TrainState, np.ndarray]:
    """``steps`` full-batch steps of every replica through ``train_replicas`` (``phase_loop_config(steps)``),
    ``chunk`` epochs per segment; ``on_chunk(done, state, loss)`` after each (``loss``: every replica's
    loss before the segment's last step).

    Returns the last state and the training loss before every step, ``(R, steps)``.
    """

    def on_segment(done: int, loops: LoopState) -> None:
        on_chunk(done, loops.train, np.asarray(loops.history["train_loss"][:, done - 1]))

    out = train_replicas(
        (graphdef, state), optimizer, loss_fn, {"train": batch}, phase_loop_config(steps), keys=keys, lrs=lr,
        data_axis=batch_axis, segment=chunk, on_segment=on_segment,
    )  # fmt: skip
    return out.result.last, np.asarray(out.result.history["train_loss"])


def train_two_phase(
    make_model: Callable[[jax.Array], nnx.Module],
    keys: jax.Array,
    loss_fn: Callable[[nnx.Module, Any], jax.Array],
    batch: Any,
    config: TwoPhaseConfig = TwoPhaseConfig(),
    *,
    batch_axis: int | None = None,
    snapshot: Snapshot | None = None,
    progress: bool | None = None,
    desc: str = "two-phase",
) -> TwoPhaseResult:
    """Run the two-phase schedule for one replica per key (each phase through ``gmpjax.train.replicas``).

    Args:
      make_model: ``key -> nnx.Module`` (a ``TriangleNet`` in mode "peaks" for the full method;
        a module without ``to_raw`` -- a baseline MLP -- skips phase 1 and trains
        ``finetune_steps`` raw steps only).
      keys: ``(R,)`` PRNG keys.
      loss_fn: ``(model, batch) -> loss`` (or ``(loss, metrics)``), e.g. full-batch MSE.
      batch: the full batch, shared by all replicas (``batch_axis=None``) or with a leading
        replica axis (``batch_axis=0``, e.g. a different random training set per run).
      config: the schedule.
      snapshot: ``(phase, graphdef, stacked_state) -> dict`` called at the start, at the end of every
        chunk and right after the switch (phase "init", "pretrain", "switch", "finetune"), e.g. to
        count linear regions.
      progress: a tqdm bar (``None``: when tqdm is installed; ``True`` needs it, from the ``train`` extra).

    Returns:
      :class:`TwoPhaseResult`.
    """
    if not isinstance(config, TwoPhaseConfig):
        raise TypeError(f"config must be a TwoPhaseConfig; got {type(config).__name__}.")
    keys = jnp.asarray(keys)
    if keys.ndim != 1:
        raise ValueError(
            f"keys must be a 1-D array of PRNG keys, e.g. jax.random.split(key, R); got shape {keys.shape}."
        )
    optimizer = functools.partial(make_optimizer, config.optimizer)
    graph1, state = init_replicas(make_model, keys, optimizer(config.pretrain_lr))
    has_raw = hasattr(nnx.eval_shape(lambda: make_model(keys[0])), "to_raw")
    pre_steps = config.pretrain_steps if has_raw else 0
    bar = progress_bar(pre_steps + config.finetune_steps, desc=desc, enabled=progress)
    snaps: list[dict[str, Any]] = []

    def record(phase: str, graphdef: nnx.GraphDef, state: TrainState, step: int) -> None:
        if snapshot is not None:
            snaps.append({"phase": phase, "step": step, **snapshot(phase, graphdef, state)})

    def phase(name: str, graphdef: nnx.GraphDef, state: TrainState, lr: float, steps: int, start: int) -> Any:
        def on_chunk(done: int, state: TrainState, loss: np.ndarray) -> None:
            bar.update(start + done - bar.n)
            bar.set_postfix(phase=name, loss=f"{float(np.mean(loss)):.3g}")
            record(name, graphdef, state, start + done)

        args = (loss_fn, batch, batch_axis, keys, steps, config.chunk_steps, on_chunk)
        return _run_phase(graphdef, state, optimizer, lr, *args) if steps else (state, None)

    try:
        record("init", graph1, state, 0)
        state, losses1 = phase("pretrain", graph1, state, config.pretrain_lr, pre_steps, 0)
        pre_graph, pre_state = graph1, state
        graph2, state = switch_replicas(graph1, state, optimizer(config.finetune_lr))
        record("switch", graph2, state, pre_steps)
        state, losses2 = phase("finetune", graph2, state, config.finetune_lr, config.finetune_steps, pre_steps)
    finally:
        bar.close()
    parts = [p for p in (losses1, losses2) if p is not None]
    losses = np.concatenate(parts, axis=1) if parts else np.zeros((keys.shape[0], 0))
    return TwoPhaseResult(graph2, state, pre_graph, pre_state, losses, pre_steps, snaps)
