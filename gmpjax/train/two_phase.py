"""Two-phase training of the triangular-wave reparameterization, on top of ``gmpjax.train.engine``.

Phase 1 ("pretraining") optimises the module's own parameters -- for a
:class:`gmpjax.layers.TriangleNet` the peaks (and ``log s_0`` / free log scales, an
optional output gain/offset) -- through the peak -> weight map, so the network keeps
exactly ``2^d`` linear regions. At the **switch** the module's ``to_raw()`` produces a
plain MLP computing the identical function, and a *fresh* optimizer state is created
for its raw weights (the paper restarts the optimizer; a short loss spike is
possible). Phase 2 ("standard training") trains the raw weights without constraint.

One :class:`TwoPhaseConfig` describes the whole schedule; :func:`train_two_phase`
runs it for ``R`` independent replicas at once (``jax.vmap`` over replicas,
``lax.scan`` over steps: one compiled program per phase and chunk length).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gmpjax.train.engine import TrainState, init_replicas, init_train_state, make_train_step, scan_steps_same_batch

Snapshot = Callable[[str, nnx.GraphDef, TrainState], dict[str, Any]]
"""``(phase, graphdef, stacked_state) -> record`` callback of :func:`train_two_phase`."""

__all__ = ["TwoPhaseConfig", "TwoPhaseResult", "make_optimizer", "switch_to_raw", "switch_replicas", "train_two_phase"]


@dataclass(frozen=True)
class TwoPhaseConfig:
    """The whole two-phase schedule.

    Attributes:
      pretrain_steps: full-batch steps on the peak parameters (0 = skip pretraining).
      finetune_steps: steps on the raw weights after the switch.
      pretrain_lr: learning rate of phase 1 (paper: Adam 1e-3).
      finetune_lr: learning rate of phase 2 (a fresh optimizer).
      optimizer: "adam" (default) or "sgd" for both phases.
      chunk_steps: steps per compiled ``lax.scan`` call; snapshots are taken between chunks.
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


def _run_phase(
    graphdef: nnx.GraphDef,
    state: TrainState,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[nnx.Module, Any], Any],
    batch: Any,
    batch_axis: int | None,
    steps: int,
    chunk: int,
    phase: str,
    snapshot: Snapshot | None,
    snaps: list[dict[str, Any]],
    bar: Any,
    start: int,
) -> tuple[TrainState, np.ndarray | None]:
    step = make_train_step(graphdef, tx, loss_fn)
    compiled: dict[int, Callable] = {}
    losses = []
    done = 0
    while done < steps:
        n = min(chunk, steps - done)
        if n not in compiled:
            compiled[n] = jax.jit(
                jax.vmap(lambda s, b, n=n: scan_steps_same_batch(step, s, b, n), in_axes=(0, batch_axis))
            )
        state, metrics = compiled[n](state, batch)
        losses.append(np.asarray(metrics["loss"]))
        done += n
        if bar is not None:
            bar.update(n)
            bar.set_postfix(phase=phase, loss=f"{float(np.mean(losses[-1][:, -1])):.3g}")
        if snapshot is not None:
            snaps.append({"phase": phase, "step": start + done, **snapshot(phase, graphdef, state)})
    return state, (np.concatenate(losses, axis=1) if losses else None)


def train_two_phase(
    make_model: Callable[[jax.Array], nnx.Module],
    keys: jax.Array,
    loss_fn: Callable[[nnx.Module, Any], jax.Array],
    batch: Any,
    config: TwoPhaseConfig = TwoPhaseConfig(),
    *,
    batch_axis: int | None = None,
    snapshot: Snapshot | None = None,
    progress: bool = True,
    desc: str = "two-phase",
) -> TwoPhaseResult:
    """Run the two-phase schedule for one replica per key (vmapped, scanned).

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
      progress: tqdm bar.

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
    tx1 = make_optimizer(config.optimizer, config.pretrain_lr)
    tx2 = make_optimizer(config.optimizer, config.finetune_lr)
    graph1, state = init_replicas(make_model, keys, tx1)
    has_raw = hasattr(nnx.eval_shape(lambda: make_model(keys[0])), "to_raw")
    pre_steps = config.pretrain_steps if has_raw else 0
    from tqdm.auto import tqdm

    bar = tqdm(total=pre_steps + config.finetune_steps, desc=desc, disable=not progress, leave=False)
    snaps: list[dict[str, Any]] = []
    try:
        if snapshot is not None:
            snaps.append({"phase": "init", "step": 0, **snapshot("init", graph1, state)})
        losses1 = None
        if pre_steps:
            state, losses1 = _run_phase(
                graph1,
                state,
                tx1,
                loss_fn,
                batch,
                batch_axis,
                pre_steps,
                config.chunk_steps,
                "pretrain",
                snapshot,
                snaps,
                bar,
                0,
            )
        pre_graph, pre_state = graph1, state
        graph2, state = switch_replicas(graph1, state, tx2)
        if snapshot is not None:
            snaps.append({"phase": "switch", "step": pre_steps, **snapshot("switch", graph2, state)})
        state, losses2 = _run_phase(
            graph2,
            state,
            tx2,
            loss_fn,
            batch,
            batch_axis,
            config.finetune_steps,
            config.chunk_steps,
            "finetune",
            snapshot,
            snaps,
            bar,
            pre_steps,
        )
    finally:
        bar.close()
    parts = [p for p in (losses1, losses2) if p is not None]
    losses = np.concatenate(parts, axis=1) if parts else np.zeros((keys.shape[0], 0))
    return TwoPhaseResult(graph2, state, pre_graph, pre_state, losses, pre_steps, snaps)
