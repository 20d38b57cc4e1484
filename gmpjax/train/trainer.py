"""The host trainer: one place that wires a long run together.

``HostTrainer(make_model, tx, loss_fn, mesh, eval_fn=...)`` builds, once per model family,
the sharded train and eval steps (``engine.make_train_step`` / ``make_eval_step`` through
``sharding.shard_train_step`` / ``shard_eval_step``) and a jitted initialisation.
``HostTrainer.fit(key, batches, config, workdir)`` trains one run of it with the host loop
``gmpjax.train.host.train``:

* the ``TrainState`` initialised from ``key`` and placed on the mesh (``sharding.shard_state``:
  replicated, or split where the model is annotated);
* evaluation: ``eval_fn`` (``(model, batch) -> per-batch sums``, one of them ``count``) summed
  over ``eval_steps`` batches of one endless iterator and turned into metrics by ``metrics``
  (default ``mean_metrics``: ``val_<name> = sum / count``);
* an orbax ``Checkpointer`` in ``<workdir>/checkpoints`` and ``resume`` from its newest step;
* ``<workdir>/metrics.jsonl`` (``engine.MetricsLogger``, truncated to the restored step on
  resume) and any clu-style ``write_scalars(step, scalars)`` writers;
* examples per second over every ``log_every`` window, when ``examples_per_step`` is given.

The stopping rules (early stopping, plateau decay, restore) are those of the one
``HostConfig`` passed through to ``host.train``. Several runs (seeds) of one trainer share
its compiled steps.

>>> import itertools, tempfile, jax, jax.numpy as jnp, numpy as np, optax
>>> from flax import nnx
>>> from gmpjax.train.host import HostConfig
>>> from gmpjax.train.sharding import make_data_mesh
>>> x = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32); y = x @ np.ones((2, 1), np.float32)
>>> trainer = HostTrainer(
...     lambda key: nnx.Linear(2, 1, rngs=nnx.Rngs(key)), optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
...     lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2), make_data_mesh(),
...     eval_fn=lambda m, b: {"mse": jnp.sum((m(b[0]) - b[1]) ** 2), "count": jnp.float32(len(b[0]))})
>>> run = trainer.fit(jax.random.key(0), itertools.repeat((x, y)), HostConfig(num_steps=20, eval_every=10, log_every=5),
...                   tempfile.mkdtemp(), eval_batches=lambda: itertools.repeat((x, y)), progress=False)
>>> [h["step"] for h in run.history], run.final["val_mse"] < 0.1, run.num_params
([10, 20], True, 3)
>>> run.plot(os.path.join(tempfile.mkdtemp(), "curves.png"), ["val_mse"]).endswith("curves.png")
True
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from gmpjax._optional import require
from gmpjax.train.checkpoint import Checkpointer
from gmpjax.train.engine import (
    MetricsLogger,
    ScalarWriter,
    TrainState,
    check_writers,
    init_train_state,
    make_eval_step,
    make_train_step,
)
from gmpjax.train.host import Callback, HostConfig, HostResult, sum_batches, train
from gmpjax.train.plateau import get_learning_rate
from gmpjax.train.sharding import is_primary, shard_eval_step, shard_state, shard_train_step, to_host

__all__ = ["HostTrainer", "HostRun", "mean_metrics", "CHECKPOINTS", "THROUGHPUT"]

CHECKPOINTS = "checkpoints"
"""The folder of a run's checkpoints under its ``workdir``."""
THROUGHPUT = "examples_per_s"
"""The metric the throughput records carry (with ``includes_compile``: the first window, with compilation)."""
_NOT_EVAL = frozenset({"step", "epoch", "lr", THROUGHPUT, "includes_compile"})


def mean_metrics(sums: Mapping[str, Any], prefix: str = "val_") -> dict[str, float]:
    """Means of per-batch sums: ``prefix + name = sums[name] / sums["count"]`` for every name but ``count``.

    >>> mean_metrics({"loss": np.float32(3.0), "hits": np.float32(1.0), "count": np.float32(4.0)})
    {'val_loss': 0.75, 'val_hits': 0.25}
    """
    if "count" not in sums:
        raise ValueError(
            f"mean_metrics: the eval sums have no 'count' (got {sorted(sums)}); make eval_fn return the number "
            "of examples it summed over as 'count', or pass HostTrainer(metrics=...) to turn the sums into metrics."
        )
    n = max(float(sums["count"]), 1.0)
    return {prefix + k: float(v) / n for k, v in sums.items() if k != "count"}


def _num_params(state: TrainState) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(state.params)))


@dataclasses.dataclass
class HostRun:
    """What ``HostTrainer.fit`` returns.

    Attributes:
      result: ``host.train``'s ``HostResult`` (the chosen and the last state, stopping, best step).
      history: every evaluation record of the run (``{"step", ["epoch"], ["lr"], **metrics}``), resumed
        sessions included (read back from ``metrics.jsonl``).
      records: every record of ``metrics.jsonl`` (train metrics, throughput, evaluations).
      final: the evaluation record of ``result.state``: the best step's when the best state was restored,
        else the last one.
      restored_best: whether ``result.state`` is the best state rather than the last.
      num_params: the number of trainable parameters.
      devices: the devices of the mesh.
      wall_s: the seconds this session trained (compilation included).
      throughput: examples/s of every ``log_every`` window after the first (empty without ``examples_per_step``).
    """

    result: HostResult
    history: list[dict]
    records: list[dict]
    final: dict
    restored_best: bool
    num_params: int
    devices: int
    wall_s: float
    throughput: list[float]

    @property
    def throughput_median(self) -> float | None:
        """The median of ``throughput`` (None when empty)."""
        return statistics.median(self.throughput) if self.throughput else None

    def summary(self, steps_per_epoch: int | None = None) -> dict[str, Any]:
        """The run's JSON summary: size, machine, steps, time, stopping, and the metrics of ``final``."""
        out = {"num_params": self.num_params, "devices": self.devices, "device_kind": jax.devices()[0].device_kind}
        out |= {"processes": jax.process_count(), "steps": self.result.step}
        if steps_per_epoch:
            out["epochs_done"] = self.result.step / steps_per_epoch
        out |= {"wall_s": self.wall_s, "early_stopped": self.result.stopped, "restored_best": self.restored_best}
        return out | {k: v for k, v in self.final.items() if k not in _NOT_EVAL}

    def plot(self, path: str, metrics: Sequence[str] | None = None, title: str = "") -> str:
        """Save a figure of the run to ``path`` (needs matplotlib, the ``experiments`` extra); returns ``path``.

        Left: ``train_loss`` per logged step. Right: ``metrics`` per evaluation against the step (default:
        every number of the evaluation records but step, epoch and lr).
        """
        plt = require("matplotlib.pyplot", "experiments", "HostRun.plot")
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
        train = [(r["step"], r["train_loss"]) for r in self.records if "train_loss" in r]
        if train:
            left.plot(*zip(*train, strict=True))
        left.set(xlabel="step", ylabel="train loss", title=title)
        known = [k for k in (self.history[0] if self.history else {}) if k not in _NOT_EVAL]
        if unknown := [m for m in metrics or () if m not in known]:
            raise ValueError(f"HostRun.plot: metrics {unknown} are not evaluated; choose from {known}.")
        names = metrics or known
        for name in names:
            right.plot([h["step"] for h in self.history], [h[name] for h in self.history], "o-", ms=3, label=name)
        right.set(xlabel="step", ylabel="evaluation")
        if names:
            right.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


class _Throughput:
    """Callback: examples/s over every ``log_every``-step window and at the last step (the first includes compiling)."""

    def __init__(self, logger: MetricsLogger, examples_per_step: int, config: HostConfig):
        self.logger, self.examples = logger, examples_per_step
        self.every, self.last = config.log_every, config.num_steps
        self.values: list[float] = []
        self.t, self.first = time.perf_counter(), True
        self.step0: int | None = None

    def __call__(self, step: int, state: TrainState, rec: dict) -> bool:
        start = step - 1 if self.step0 is None else self.step0
        self.step0 = start
        if (self.every and step % self.every == 0) or step == self.last:
            jax.block_until_ready(state.step)
            now = time.perf_counter()
            rate = self.examples * (step - start) / max(now - self.t, 1e-9)
            if not self.first:
                self.values.append(rate)
            self.logger.log(step, **{THROUGHPUT: rate, "includes_compile": self.first})
            self.t, self.step0, self.first = now, step, False
        return False


class _Evaluator:
    """``state -> metrics`` over ``num_batches`` of one endless iterator, started at the first evaluation."""

    def __init__(
        self,
        trainer: HostTrainer,
        batches: Callable[[], Iterable[Any]],
        num_batches: int,
        report: Callable[[dict], None] | None,
    ):
        self.trainer, self.batches, self.num_batches, self.report = trainer, batches, num_batches, report
        self.it: Iterator[Any] | None = None

    def __call__(self, state: TrainState) -> dict[str, float]:
        if self.it is None:
            self.it = iter(self.batches())
        metrics = self.trainer.evaluate(state, self.it, self.num_batches)
        if self.report is not None:
            self.report({"step": int(np.asarray(to_host(state.step))), **_lr_of(state), **metrics})
        return metrics

    def close(self) -> None:
        _close(self.it)


def _lr_of(state: TrainState) -> dict[str, float]:
    """``{"lr": the learning rate}`` of an ``optax.inject_hyperparams`` optimizer, else ``{}``."""
    try:
        return {"lr": float(np.asarray(to_host(get_learning_rate(state.opt_state))))}
    except TypeError:
        return {}


def _close(*things: Any) -> None:
    for x in things:
        close = getattr(x, "close", None)
        if callable(close):
            close()


class HostTrainer:
    """A model family wired to its optimizer, loss and mesh: compiled sharded steps, shared by every run.

    Args:
      make_model: ``key -> nnx.Module`` (called under ``jax.jit`` to initialise, and abstractly for the graph).
      tx: the optax optimizer (``gmpjax.train.optim.make_optimizer``; plateau decay needs
        ``optax.inject_hyperparams``).
      loss_fn: ``(model, batch) -> loss`` or ``(loss, metrics)`` (``engine.make_train_step``).
      mesh: the device mesh (``sharding.make_data_mesh`` or ``make_mesh``).
      eval_fn: ``(model, batch) -> {name: sum over the batch}`` with the model in eval mode (padded rows
        masked out by the caller's function); ``None``: no evaluation.
      metrics: the eval sums over all batches -> the logged metrics (default ``mean_metrics``).
      donate_state: let XLA reuse the state's buffers in the train step (accelerators).
    """

    def __init__(
        self,
        make_model: Callable[[jax.Array], nnx.Module],
        tx: optax.GradientTransformation,
        loss_fn: Callable[[nnx.Module, Any], Any],
        mesh: jax.sharding.Mesh,
        *,
        eval_fn: Callable[[nnx.Module, Any], Mapping[str, jax.Array]] | None = None,
        metrics: Callable[[Mapping[str, Any]], dict[str, float]] = mean_metrics,
        donate_state: bool = False,
    ):
        if not callable(make_model) or not callable(loss_fn):
            raise TypeError(
                "HostTrainer: make_model (key -> nnx.Module) and loss_fn ((model, batch) -> loss) must be callable."
            )
        self.mesh, self.tx, self.metrics = mesh, tx, metrics
        self.graphdef = nnx.split(nnx.eval_shape(lambda: make_model(jax.random.key(0))), nnx.Param, ...)[0]
        step = make_train_step(self.graphdef, tx, loss_fn)
        self.train_step = shard_train_step(step, mesh, donate_state=donate_state)
        self.eval_step = None if eval_fn is None else shard_eval_step(make_eval_step(self.graphdef, eval_fn), mesh)
        self._init = jax.jit(lambda key: init_train_state(make_model(key), tx)[1])

    def init(self, key: jax.Array) -> TrainState:
        """The ``TrainState`` of ``make_model(key)`` with a fresh optimizer state, placed on the mesh."""
        return shard_state(self._init(key), self.mesh)

    def evaluate(self, state: TrainState, batches: Iterator[Any], num_batches: int) -> dict[str, float]:
        """``metrics`` of the sums of ``eval_fn`` over the next ``num_batches`` of ``batches``."""
        if self.eval_step is None:
            raise ValueError("HostTrainer.evaluate: this trainer has no eval_fn; pass HostTrainer(eval_fn=...).")
        return self.metrics(sum_batches(self.eval_step, state, batches, num_batches))

    def fit(
        self,
        key: jax.Array,
        batches: Iterable[Any] | Callable[[int], Iterator[Any]],
        config: HostConfig,
        workdir: str | os.PathLike,
        *,
        eval_batches: Callable[[], Iterable[Any]] | None = None,
        eval_steps: int = 1,
        on_eval: Callable[[dict], None] | None = None,
        resume: bool = False,
        save_every: int = 1000,
        keep: int = 3,
        examples_per_step: int | None = None,
        writers: Sequence[ScalarWriter] = (),
        callbacks: Sequence[Callback] = (),
        progress: bool | None = None,
        **loop: Any,
    ) -> HostRun:
        """Train (or, with ``resume``, continue) one run in ``workdir``.

        Args:
          key: the PRNG key of ``make_model`` (ignored where a checkpoint is restored).
          batches: sharded train batches: an iterator, or ``start_step -> iterator`` (``host.train``).
          config: the ``HostConfig`` (steps, intervals, stopping rules), passed to ``host.train`` as it is.
          workdir: the run's folder: ``metrics.jsonl`` and ``checkpoints/``.
          eval_batches, eval_steps: ``() -> iterator`` of sharded eval batches, called at the first evaluation
            (needed with ``eval_fn``); each evaluation sums ``eval_steps`` of them.
          on_eval: ``record -> None`` after each evaluation, on the primary process (a report line); ``record``
            is ``{"step", ["lr"], **metrics}`` (the learning rate used since the previous evaluation).
          resume: continue from the newest checkpoint (a fresh run refuses a folder that holds some).
          save_every, keep: checkpoint every ``save_every`` steps (and after each evaluation); keep the last ``keep``.
          examples_per_step: log ``examples_per_s`` every ``log_every`` steps (the global batch size).
          writers: clu-style writers that receive the scalars of every record (primary process).
          callbacks: ``host.train`` callbacks ``(step, state, record) -> stop?``.
          progress: a tqdm bar (``host.train``); never on processes other than the primary.
          **loop: passed to ``host.train``: ``data_iterator``, ``config_json`` (the run's identity, checked on
            resume), ``extra``, ``on_resume``, ``desc``.

        Returns:
          ``HostRun``. The iterators ``batches`` and the one of ``eval_batches`` are closed at the end.
        """
        if (self.eval_step is None) != (eval_batches is None):
            raise ValueError(
                "HostTrainer.fit: eval_batches and HostTrainer(eval_fn=...) go together; give both or neither."
            )
        primary = is_primary()
        writers = check_writers(writers)  # refused on every process; only the primary one writes to them
        logger = MetricsLogger(os.fspath(workdir) if primary else None, writers=writers if primary else ())
        report = on_eval if primary else None
        evaluate = None if eval_batches is None else _Evaluator(self, eval_batches, eval_steps, report)
        timer = _Throughput(logger, examples_per_step, config) if examples_per_step else None
        calls: list[Callback] = [*callbacks, *([timer] if timer is not None else [])]
        progress = progress if primary else False
        state = self.init(key)
        num_params, t0 = _num_params(state), time.perf_counter()
        try:
            with Checkpointer(os.path.join(workdir, CHECKPOINTS), max_to_keep=keep, save_every=save_every) as ckpt:
                result = train(self.train_step, evaluate, state, batches, config, checkpointer=ckpt, resume=resume,
                               logger=logger, callbacks=calls, progress=progress, **loop)  # fmt: skip
        finally:
            _close(batches, loop.get("data_iterator"))
        wall = time.perf_counter() - t0
        try:
            return _collect(result, logger, evaluate, num_params, self.mesh.size, wall, timer)
        finally:
            _close(evaluate)


def _collect(
    result: HostResult,
    logger: MetricsLogger,
    evaluate: _Evaluator | None,
    num_params: int,
    devices: int,
    wall: float,
    timer: _Throughput | None,
) -> HostRun:
    """The run's records (the whole file, resumed sessions included) and the evaluation of the chosen state."""
    records = logger.read() if logger.path is not None else list(result.evals)
    history = [r for r in records if any(k not in _NOT_EVAL and not k.startswith("train_") for k in r)]
    if not history and evaluate is not None:  # a resumed run that had finished, without its log
        history = [{"step": result.step, **evaluate(result.state)}]
    restored = result.state is not result.last and any(h["step"] == result.best_step for h in history)
    final = next(h for h in history if h["step"] == result.best_step) if restored else (history or [{}])[-1]
    return HostRun(
        result=result,
        history=history,
        records=records,
        final=final,
        restored_best=restored,
        num_params=num_params,
        devices=devices,
        wall_s=wall,
        throughput=timer.values if timer is not None else [],
    )
