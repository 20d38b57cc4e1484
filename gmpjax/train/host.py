"""The host-side training loop for long runs: a Python loop over a jitted train step.

``train(train_step, eval_fn, state, batches, config)`` is the loop of the image
experiments, the transformer LM and the checkpoint tests. Where the compiled
loop (``gmpjax.train.loop.fit``) keeps everything on the device, this one reads
one batch at a time from any iterator (a grain pipeline, a sharded stream) and
adds what a run of hours needs:

* orbax checkpoints (``gmpjax.train.checkpoint.Checkpointer``): atomic, every
  ``save_every`` steps, after every evaluation and at the end; with ``resume`` the
  newest one is restored -- train state, the data iterator's position, the loop's
  early-stopping and plateau state and any ``extra`` JSON -- and the run continues
  exactly as if it had not been interrupted;
* evaluation every ``eval_every`` steps and at the end, on the host;
* early stopping and plateau decay with the compiled loop's objects and rules
  (``engine.early_stopping_update``, ``plateau.plateau_update``; Keras semantics,
  see ``HostConfig``);
* metrics to ``engine.MetricsLogger`` (JSON lines) or to any writer with clu's
  ``write_scalars(step, scalars)`` (clu, TensorBoard, W&B adapters), and a tqdm
  progress bar when tqdm is installed;
* a line on the ``logging.getLogger("gmpjax")`` logger when a run resumes, a
  checkpoint is saved, plateau decay lowers the learning rate or early stopping fires.

One evaluation is one "epoch" of those rules: patience counts evaluations.

>>> import jax, jax.numpy as jnp, optax
>>> from flax import nnx
>>> from gmpjax.train.engine import init_train_state, make_train_step
>>> tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
>>> graphdef, state = init_train_state(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), tx)
>>> mse = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
>>> x = jax.random.normal(jax.random.key(1), (16, 2)); data = (x, x @ jnp.ones((2, 1)))
>>> step = jax.jit(make_train_step(graphdef, tx, mse))
>>> evaluate = lambda s: {"loss": float(step(s, data)[1]["loss"])}   # (illustration: loss before a step)
>>> cfg = HostConfig(num_steps=40, eval_every=5, log_every=0, monitor="loss", patience=2, min_delta=1e-3)
>>> out = train(step, evaluate, state, iter(lambda: data, None), cfg, progress=False)
>>> out.step <= 40, out.best_value < 1e-2, out.stopped == (out.step < 40)
(True, True, True)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, cast, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from gmpjax._optional import progress_bar
from gmpjax.train.checkpoint import Checkpointer, abstract_state
from gmpjax.train.engine import EarlyStopping, MetricsLogger, TrainState, early_stopping_init, early_stopping_update
from gmpjax.train.plateau import Plateau, PlateauConfig, get_learning_rate, plateau_init, plateau_update
from gmpjax.train.plateau import set_learning_rate as _set_lr
from gmpjax.train.sharding import to_host

PyTree = Any
TrainStep = Callable[[TrainState, Any], tuple[TrainState, Mapping[str, Any]]]
HostEvalFn = Callable[[TrainState], Mapping[str, Any]]
Callback = Callable[[int, TrainState, dict], "bool | None"]

__all__ = ["HostConfig", "HostResult", "ScalarWriter", "train", "sum_batches"]

log = logging.getLogger("gmpjax")

RESTORE = ("always", "if_stopped", "never")
_NEVER = 2**31 - 1  # "no patience": early stopping never fires


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """The rules of the host loop (the compiled loop's ``LoopConfig`` counterpart, counted in steps).

    Attributes:
      num_steps: train until ``state.step == num_steps`` (a resumed run continues from its step).
      eval_every: steps between evaluations (``None``: only at the end). The last step is
        always evaluated.
      log_every: the train step's scalar metrics are logged as ``train_<name>`` every this many
        steps (0: never).
      steps_per_epoch: when given, evaluation records carry ``epoch = step / steps_per_epoch``.
      monitor: the key of ``eval_fn``'s output that early stopping and plateau decay watch
        (``None``: neither runs).
      mode: ``"min"`` or ``"max"`` (the value is negated for ``"max"``, as in the compiled loop).
      patience: evaluations without an improvement (``value < best - min_delta``) before
        early stopping fires; ``None``: never.
      min_delta: early stopping's improvement threshold (>= 0).
      restore: the state ``HostResult.state`` holds: the best (``"always"``), the best only when
        early stopping fired (``"if_stopped"``, Keras ``restore_best_weights``) or the last
        (``"never"``, the default here: keeping a copy of the best parameters costs device
        memory and checkpoint space, which long runs rarely want).
      plateau: plateau decay (``PlateauConfig``): after each evaluation the learning rate of
        the ``optax.inject_hyperparams`` optimizer becomes ``base_lr * scale``, ``base_lr`` the
        rate it had at step 0. Needs a constant learning rate (a schedule would overwrite it).
    """

    num_steps: int
    eval_every: int | None = None
    log_every: int = 100
    steps_per_epoch: int | None = None
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    patience: int | None = None
    min_delta: float = 0.0
    restore: Literal["always", "if_stopped", "never"] = "never"
    plateau: PlateauConfig | None = None

    def __post_init__(self) -> None:
        def check_int(name: str, v: Any, low: int, optional: bool = False) -> None:
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"HostConfig.{name} must be an int >= {low} (got {v!r}).")

        check_int("num_steps", self.num_steps, 0)
        check_int("eval_every", self.eval_every, 1, optional=True)
        check_int("log_every", self.log_every, 0)
        check_int("steps_per_epoch", self.steps_per_epoch, 1, optional=True)
        check_int("patience", self.patience, 1, optional=True)
        if self.mode not in ("min", "max"):
            raise ValueError(f"HostConfig.mode must be 'min' or 'max' (got {self.mode!r}).")
        if self.restore not in RESTORE:
            raise ValueError(f"HostConfig.restore must be one of {RESTORE} (got {self.restore!r}).")
        if not self.min_delta >= 0:
            raise ValueError(f"HostConfig.min_delta must be >= 0 (got {self.min_delta!r}).")
        if self.plateau is not None and not isinstance(self.plateau, PlateauConfig):
            raise TypeError(f"HostConfig.plateau must be a PlateauConfig or None (got {type(self.plateau).__name__}).")
        if self.monitor is None and (self.patience is not None or self.plateau is not None or self.restore != "never"):
            raise ValueError("HostConfig: early stopping, plateau decay and restore need a monitor (an eval_fn key).")


@dataclasses.dataclass
class HostResult:
    """What ``train`` returns.

    Attributes:
      state: the ``TrainState`` chosen by ``HostConfig.restore``.
      last: the ``TrainState`` after the last step.
      step: the last step (``int(last.step)``).
      stopped: whether early stopping fired (in this session or before the resume).
      best_value: best monitored value in its own sign (``inf``/``-inf`` if never finite; NaN without a monitor).
      best_step: the step of ``best_value`` (0: none).
      lr_scale: the plateau scale at the end (1 without plateau decay).
      evals: this session's evaluation records (``{"step", ["epoch"], ["lr"], **eval_fn(state)}``).
      resumed_from: the checkpoint step this session started from (None: a fresh run).
    """

    state: TrainState
    last: TrainState
    step: int
    stopped: bool
    best_value: float
    best_step: int
    lr_scale: float
    evals: list[dict]
    resumed_from: int | None


@runtime_checkable
class ScalarWriter(Protocol):
    """What ``train(logger=...)`` writes to: clu's ``metric_writers`` interface, scalars only.

    ``engine.MetricsLogger`` is one; so is ``clu.metric_writers.create_default_writer(...)`` or
    a thin adapter around TensorBoard or W&B. ``flush()``, when the writer has it, is called at the end.
    """

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Record ``scalars`` (name -> number) at ``step``."""


class _Sink:
    """Turns the loop's records into ``MetricsLogger`` lines or ``write_scalars`` calls."""

    def __init__(self, logger: MetricsLogger | ScalarWriter | None):
        if logger is not None and not isinstance(logger, (MetricsLogger, ScalarWriter)):
            raise TypeError(
                f"train: logger must be a MetricsLogger or have write_scalars(step, scalars) "
                f"(got {type(logger).__name__})."
            )
        self.logger = logger
        self.records = logger if isinstance(logger, MetricsLogger) else MetricsLogger(None)

    def truncate(self, last_step: int | None) -> None:
        """A ``MetricsLogger`` drops what follows the restored step; other writers get those steps again."""
        self.records.truncate(last_step)

    def log(self, step: int, **metrics: Any) -> dict:
        """Write ``metrics`` at ``step``; returns the record ``{"step": step, **metrics}`` (host values)."""
        rec = self.records.log(step, **metrics)
        if self.logger is not None and not isinstance(self.logger, MetricsLogger):
            scalars = {k: v for k, v in rec.items() if k != "step" and _is_number(v)}
            self.logger.write_scalars(step, scalars)
        return rec

    def flush(self) -> None:
        """Flush a writer that buffers."""
        flush = getattr(self.logger, "flush", None)
        if callable(flush):
            flush()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ------------------------------------------------------------------------------------- JSON of the loop state


def _json_number(x: Any) -> float | int | bool | str:
    """A scalar as an exact JSON value (non-finite floats as the strings ``float()`` reads back)."""
    v = np.asarray(x).item()
    return v if not isinstance(v, float) or math.isfinite(v) else str(v)


def _tree_to_json(tree: PyTree) -> list:
    return [_json_number(x) for x in jax.tree.leaves(tree)]


def _tree_from_json(template: PyTree, values: Sequence) -> PyTree:
    leaves, treedef = jax.tree.flatten(template)
    if len(values) != len(leaves):
        raise ValueError(f"checkpointed loop state has {len(values)} values, expected {len(leaves)}.")
    conv = [
        jnp.asarray(float(v) if isinstance(v, str) else v, jnp.asarray(t).dtype)
        for v, t in zip(values, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, conv)


@dataclasses.dataclass
class _Rules:
    """The loop's early-stopping and plateau state between evaluations (host-side, tiny arrays)."""

    stopping: EarlyStopping
    plateau: Plateau
    base_lr: np.float32 | None

    @classmethod
    def fresh(cls, state: TrainState, config: HostConfig) -> _Rules:
        base = None
        if config.plateau is not None:
            base = np.float32(np.asarray(to_host(get_learning_rate(state.opt_state))))
        return cls(early_stopping_init((), jnp.float32), plateau_init(jnp.float32), base)

    def to_json(self) -> dict:
        return {
            "stopping": _tree_to_json(self.stopping),
            "plateau": _tree_to_json(self.plateau),
            "base_lr": None if self.base_lr is None else _json_number(self.base_lr),
        }

    def load(self, d: Mapping[str, Any]) -> _Rules:
        base = d.get("base_lr")
        return _Rules(
            stopping=_tree_from_json(self.stopping, d["stopping"]),
            plateau=_tree_from_json(self.plateau, d["plateau"]),
            base_lr=None if base is None else np.float32(float(base)),
        )


# ------------------------------------------------------------------------------------------------ helpers


def _like(value: Any, ref: jax.Array) -> jax.Array:
    """``value`` as an array with ``ref``'s shape, dtype and sharding (also across processes)."""
    host = np.asarray(value, dtype=ref.dtype).reshape(ref.shape)
    return jax.make_array_from_callback(ref.shape, ref.sharding, lambda idx: host[idx])


def _learning_rate(opt_state: Any) -> float | None:
    try:
        return float(np.asarray(to_host(get_learning_rate(opt_state))))
    except TypeError:
        return None


def _with_learning_rate(opt_state: Any, lr: np.float32) -> Any:
    old = get_learning_rate(opt_state)
    return _set_lr(opt_state, _like(lr, old) if isinstance(old, jax.Array) else lr)


def _host_metrics(out: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(out, Mapping):
        raise TypeError(f"eval_fn must return a dict of metrics (got {type(out).__name__}).")
    res = {}
    for k, v in out.items():
        a = np.asarray(to_host(v))
        res[str(k)] = a.item() if a.ndim == 0 else a.tolist()
    return res


def _copy(tree: PyTree) -> PyTree:
    """Fresh buffers (a donating train step may reuse the old ones)."""
    return jax.tree.map(jnp.copy, tree)


def _check_config(saved: Any, config: Mapping[str, Any], where: str) -> None:
    saved = saved if isinstance(saved, Mapping) else {}
    for key, value in config.items():
        if key in saved and saved[key] != value:
            raise ValueError(
                f"--resume: the checkpoint in {where} was written with {key}={saved[key]!r} but this run has "
                f"{key}={value!r}; use the same settings or another --workdir."
            )


# --------------------------------------------------------------------------------------------------- loop


def train(
    train_step: TrainStep,
    eval_fn: HostEvalFn | None,
    state: TrainState,
    batches: Iterable[Any] | Callable[[int], Iterator[Any]],
    config: HostConfig,
    *,
    checkpointer: Checkpointer | None = None,
    resume: bool = False,
    data_iterator: Any = None,
    config_json: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    on_resume: Callable[[int, dict], None] | None = None,
    logger: MetricsLogger | ScalarWriter | None = None,
    callbacks: Iterable[Callback] = (),
    progress: bool | None = None,
    desc: str = "train",
) -> HostResult:
    """Train ``state`` to ``config.num_steps`` (or early stopping) with checkpoints, evaluation and logs.

    Each step: ``state, metrics = train_step(state, next(batches))``; every ``log_every`` steps
    the scalar metrics are logged as ``train_<name>``; then every callback; then, every
    ``eval_every`` steps and at the last step, ``eval_fn(state)`` is logged with the learning
    rate used since the previous evaluation, the monitored value updates early stopping and
    plateau decay (which sets the next learning rate), and a checkpoint is saved.

    Args:
      train_step: jitted ``(state, batch) -> (state, metrics)`` (``make_train_step``, sharded or not).
      eval_fn: ``state -> {name: value}`` (host or device scalars; it may loop over eval batches);
        ``None``: no evaluation.
      state: the initial ``TrainState`` (placed as ``train_step`` wants it). Its tree, shapes
        and shardings are the restore target on resume.
      batches: an iterator of batches, or a callable ``start_step -> iterator`` (called once,
        after a resume, with the step the run continues from: for streams that are a pure
        function of the step).
      config: ``HostConfig``.
      checkpointer: where checkpoints go (``None``: none). It is waited for, not closed.
      resume: restore the newest checkpoint of ``checkpointer`` (none there: a fresh run).
        A fresh run (``resume=False``) refuses a checkpointer that already holds checkpoints.
      data_iterator: a grain iterator (``get_state``/``set_state``: ``batches`` itself or the one
        it reads from) saved with every checkpoint and set back on resume.
      config_json: the run's identity (JSON dict, e.g. model, seed, learning rate) saved in every
        checkpoint as ``extra["config"]``; resuming a checkpoint whose value of one of these
        keys differs raises ValueError.
      extra: more JSON saved with every checkpoint: a dict, or ``step -> dict`` (e.g. an RNG
        key through ``checkpoint.key_to_json``).
      on_resume: ``(step, extra) -> None`` called after a restore with the checkpoint's
        ``extra`` dict (to set back what ``extra`` saved), before ``batches`` is started.
      logger: where the metrics go: a ``MetricsLogger`` (a fresh run empties its file; a
        resumed one drops the records after the restored step, they are logged again) or any
        ``ScalarWriter`` (clu's ``write_scalars(step, scalars)``: the scalar metrics of every
        record; after a resume the steps since the checkpoint are written again). ``None``:
        nothing written.
      callbacks: ``(step, state, record) -> stop?`` after every step (``record``: the train
        metrics logged at this step, or ``{"step": step}``); True ends the run.
      progress: a tqdm bar: ``None`` when tqdm is installed, ``True`` always (needs tqdm, from the
        ``train`` extra), ``False`` never.
      desc: the bar's label.

    Returns:
      ``HostResult``.

    Raises:
      ValueError: checkpoints exist but ``resume`` is False; the checkpoint's ``config_json``
        differs; ``config.monitor`` is not a key of ``eval_fn``'s output.
    """
    if config.monitor is not None and eval_fn is None:
        raise ValueError(f"HostConfig.monitor={config.monitor!r} needs an eval_fn.")
    sink = _Sink(logger)
    keep_best = config.restore != "never"
    rules = _Rules.fresh(state, config)
    # the best parameters: with a checkpointer, the best step on disk (orbax's best-step tracking); without, a copy
    best = _copy((state.params, state.rest)) if keep_best and checkpointer is None else None
    saved_json = dict(config_json or {})
    resumed_from = None

    def extra_json(step: int) -> dict:
        mine = dict(extra(step) if callable(extra) else (extra or {}))
        clash = {"config", "host_loop"} & set(mine)
        if clash:
            raise ValueError(f"train: extra must not use the keys {sorted(clash)} (the loop writes them).")
        return {**mine, "config": saved_json, "host_loop": rules.to_json()}

    if checkpointer is not None:
        latest = checkpointer.latest_step()
        if latest is not None and not resume:
            raise ValueError(
                f"{checkpointer.directory} already holds checkpoints (latest step {latest}); pass --resume to "
                "continue that run, or choose another --workdir (nothing is overwritten)."
            )
        if latest is not None:
            state, saved = checkpointer.restore(latest, abstract_state(state), data_iterator=data_iterator)
            _check_config(saved.get("config"), saved_json, checkpointer.directory)
            if "host_loop" in saved:
                rules = rules.load(saved["host_loop"])
            resumed_from = latest
            log.info("resumed from step %d of %s", latest, checkpointer.directory)
            if on_resume is not None:
                on_resume(latest, saved)

    start = int(np.asarray(to_host(state.step)))
    sink.truncate(start if resumed_from is not None else None)
    if callable(batches) and not hasattr(batches, "__next__"):
        it = iter(batches(start))
    else:
        it = iter(cast(Iterable[Any], batches))
    callbacks = tuple(callbacks)
    evals: list[dict] = []
    patience = _NEVER if config.patience is None else config.patience
    step = start
    stopped = bool(rules.stopping.stopped)
    bar = progress_bar(config.num_steps, initial=start, desc=desc, enabled=progress)
    try:
        while step < config.num_steps and not stopped:
            state, metrics = train_step(state, next(it))
            step += 1
            bar.update(1)
            rec: dict = {"step": step}
            if config.log_every and step % config.log_every == 0:
                scalars = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
                rec = sink.log(step, **{f"train_{k}": v for k, v in scalars.items()})
                bar.set_postfix({k: f"{float(v):.4g}" for k, v in scalars.items()})
            halt = False
            for cb in callbacks:
                halt = bool(cb(step, state, rec)) or halt
            evaluate = eval_fn is not None and (
                step == config.num_steps or (config.eval_every is not None and step % config.eval_every == 0)
            )
            if evaluate:
                assert eval_fn is not None
                ev = _host_metrics(eval_fn(state))
                head: dict[str, Any] = {}
                if config.steps_per_epoch:
                    head["epoch"] = step / config.steps_per_epoch
                lr = _learning_rate(state.opt_state)
                if lr is not None:
                    head["lr"] = lr
                improved = False
                if config.monitor is not None:
                    state, improved = _apply_rules(rules, state, ev, step, config, patience)
                    if improved and best is not None:
                        best = _copy((state.params, state.rest))
                    stopped = bool(rules.stopping.stopped)
                evals.append(sink.log(step, **head, **ev))
            if checkpointer is not None and (evaluate or checkpointer.should_save(step)):
                rank = float(rules.stopping.best) if keep_best and evaluate and improved else None
                checkpointer.save(step, state, extra_json(step), force=True, data_iterator=data_iterator, best=rank)
            if halt:
                break
        if checkpointer is not None:
            checkpointer.save(step, state, extra_json(step), force=True, data_iterator=data_iterator)
            checkpointer.wait()
    finally:
        bar.close()
        sink.flush()

    es = rules.stopping
    sign = -1.0 if config.mode == "max" else 1.0
    found = int(es.best_step) > 0
    use_best = keep_best and found and (config.restore == "always" or bool(es.stopped))
    chosen = state
    if use_best:
        if best is None:  # the best step's checkpoint (kept by orbax's best-step tracking)
            assert checkpointer is not None
            best_state, _ = checkpointer.restore(int(es.best_step), abstract_state(state))
            best = (best_state.params, best_state.rest)
        chosen = state.replace(params=best[0], rest=best[1])  # type: ignore[attr-defined]
    return HostResult(
        state=chosen,
        last=state,
        step=step,
        stopped=bool(es.stopped),
        best_value=sign * float(es.best) if config.monitor is not None else math.nan,
        best_step=int(es.best_step),
        lr_scale=float(rules.plateau.scale),
        evals=evals,
        resumed_from=resumed_from,
    )


def _apply_rules(
    rules: _Rules, state: TrainState, ev: Mapping[str, Any], step: int, config: HostConfig, patience: int
) -> tuple[TrainState, bool]:
    """Early stopping and plateau decay on ``ev[config.monitor]`` (in place on ``rules``); returns (state, improved)."""
    if config.monitor is None or config.monitor not in ev:
        raise ValueError(f"HostConfig.monitor={config.monitor!r} is not a metric of eval_fn (it returns {sorted(ev)}).")
    value = float(ev[config.monitor])
    signed = -value if config.mode == "max" else value
    signed_arr = jnp.asarray(signed if math.isfinite(signed) else math.inf, jnp.float32)
    before = int(rules.stopping.best_step)
    rules.stopping = early_stopping_update(
        rules.stopping, signed_arr, (), jnp.asarray(step, jnp.int32), patience=patience, min_delta=config.min_delta
    )
    improved = int(rules.stopping.best_step) != before
    if bool(rules.stopping.stopped):
        log.info(
            "early stopping at step %d: %s did not improve for %d evaluations (best %g at step %d)",
            step,
            config.monitor,
            patience,
            (-1.0 if config.mode == "max" else 1.0) * float(rules.stopping.best),
            int(rules.stopping.best_step),
        )
    if config.plateau is not None:
        scale_before = float(np.asarray(rules.plateau.scale))
        p = config.plateau
        rules.plateau = plateau_update(
            rules.plateau,
            signed_arr,
            patience=p.patience,
            factor=p.factor,
            min_delta=p.min_delta,
            min_scale=p.min_scale,
        )
        assert rules.base_lr is not None
        lr = np.float32(rules.base_lr) * np.float32(np.asarray(rules.plateau.scale))
        state = state.replace(opt_state=_with_learning_rate(state.opt_state, lr))  # type: ignore[attr-defined]
        if float(np.asarray(rules.plateau.scale)) < scale_before:
            log.info("plateau at step %d: learning rate lowered to %g", step, float(lr))
    return state, improved


def sum_batches(
    eval_step: Callable[[TrainState, Any], Mapping[str, Any]],
    state: TrainState,
    batches: Iterator[Any],
    num_batches: int,
) -> dict[str, np.ndarray]:
    """Host sums of ``eval_step(state, batch)`` over the next ``num_batches`` of ``batches``.

    For an eval step that returns per-batch sums (masked loss, hits, count), the totals give
    exact means over the whole split: ``loss = sums["loss"] / sums["count"]``. The sums are
    taken in order, in the dtype the step returns.

    >>> s = sum_batches(lambda st, b: {"x": b}, None, iter([1.0, 2.0, 3.0]), 2)
    >>> float(s["x"])
    3.0
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"sum_batches: num_batches must be an int >= 1 (got {num_batches!r}).")
    sums: dict[str, np.ndarray] = {}
    for _ in range(num_batches):
        out = to_host(dict(eval_step(state, next(batches))))
        sums = {k: out[k] if k not in sums else sums[k] + out[k] for k in out}
    return sums
