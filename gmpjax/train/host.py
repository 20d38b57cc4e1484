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
* early stopping, plateau decay and restore with the compiled loop's rules
  (``gmpjax.train.rules``: one ``Rules``, one ``rules_update``; Keras semantics);
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
>>> cfg = HostConfig(num_steps=40, eval_every=5, log_every=0, rules=Rules(monitor="loss", patience=2, min_delta=1e-3))
>>> out = train(step, evaluate, state, iter(lambda: data, None), cfg, progress=False)
>>> out.step <= 40, out.best_value < 1e-2, out.stopped == (out.step < 40)
(True, True, True)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from gmpjax._optional import progress_bar
from gmpjax.train.checkpoint import Checkpointer, abstract_state
from gmpjax.train.engine import MetricsLogger, ScalarWriter, TrainState
from gmpjax.train.plateau import get_learning_rate
from gmpjax.train.plateau import set_learning_rate as _set_lr
from gmpjax.train.rules import (
    Rules,
    RuleState,
    best_value,
    decayed_lr,
    rules_init,
    rules_update,
    use_best,
)
from gmpjax.train.sharding import to_host

PyTree = Any
TrainStep = Callable[[TrainState, Any], tuple[TrainState, Mapping[str, Any]]]
HostEvalFn = Callable[[TrainState], Mapping[str, Any]]
Callback = Callable[[int, TrainState, dict], "bool | None"]

__all__ = ["HostConfig", "HostResult", "train", "sum_batches"]

log = logging.getLogger("gmpjax")


@dataclasses.dataclass(frozen=True)
class HostConfig:
    """The host loop's settings (the compiled loop's ``LoopConfig`` counterpart, counted in steps).

    Attributes:
      num_steps: train until ``state.step == num_steps`` (a resumed run continues from its step).
      eval_every: steps between evaluations (``None``: only at the end). The last step is
        always evaluated.
      log_every: the train step's scalar metrics are logged as ``train_<name>`` every this many
        steps (0: never).
      steps_per_epoch: when given, evaluation records carry ``epoch = step / steps_per_epoch``.
      rules: the monitored key of ``eval_fn``'s output, early stopping, plateau decay and restore
        (``gmpjax.train.rules.Rules``; one check per evaluation, patience counts evaluations).
        ``None``: none of them runs. Plateau decay sets the learning rate of the
        ``optax.inject_hyperparams`` optimizer to ``base_lr * scale``, ``base_lr`` the rate it had
        at step 0: it needs a constant learning rate (a schedule would overwrite it). With a
        ``checkpointer``, ``restore`` reads the best step's checkpoint back instead of keeping a copy.
    """

    num_steps: int
    eval_every: int | None = None
    log_every: int = 100
    steps_per_epoch: int | None = None
    rules: Rules | None = None

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
        if self.rules is not None and not isinstance(self.rules, Rules):
            raise TypeError(f"HostConfig.rules must be a Rules or None (got {type(self.rules).__name__}).")


@dataclasses.dataclass
class HostResult:
    """What ``train`` returns.

    Attributes:
      state: the ``TrainState`` chosen by ``Rules.restore``.
      last: the ``TrainState`` after the last step.
      step: the last step (``int(last.step)``).
      stopped: whether early stopping fired (in this session or before the resume).
      best_value: best monitored value in its own sign (``inf``/``-inf`` if never finite; NaN without rules).
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


def _as_logger(logger: MetricsLogger | ScalarWriter | None) -> MetricsLogger:
    """The loop's one logger: ``logger`` itself, or a file-less ``MetricsLogger`` writing to it (or to nothing)."""
    if logger is None or isinstance(logger, MetricsLogger):
        return logger if logger is not None else MetricsLogger(None)
    if not isinstance(logger, ScalarWriter):
        raise TypeError(
            f"train: logger must be a MetricsLogger or have write_scalars(step, scalars) (got {type(logger).__name__})."
        )
    return MetricsLogger(None, writers=(logger,))


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


def _with_learning_rate(opt_state: Any, lr: Any) -> Any:
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

    Each step: ``state, metrics = train_step(state, next(batches))``; every ``log_every`` steps the
    scalar metrics are logged as ``train_<name>``; then every callback; every ``eval_every`` steps and
    at the last, ``eval_fn(state)`` is logged with the learning rate used since the last evaluation,
    the rules see the monitored value (and set the next learning rate), and a checkpoint is saved.

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
      checkpointer: where checkpoints go (``None``: none); waited for, not closed.
      resume: restore the newest checkpoint of ``checkpointer`` (none there: a fresh run).
        A fresh run (``resume=False``) refuses a checkpointer that already holds checkpoints.
      data_iterator: a grain iterator (``get_state``/``set_state``: ``batches`` itself or the one
        it reads from) saved with every checkpoint and set back on resume.
      config_json: the run's identity (JSON dict, e.g. model, seed, learning rate) saved in every
        checkpoint as ``extra["config"]``; resuming a checkpoint whose value of one of these
        keys differs raises ValueError.
      extra: more JSON for every checkpoint: a dict or ``step -> dict`` (``checkpoint.key_to_json``).
      on_resume: ``(step, extra) -> None`` called after a restore with the checkpoint's
        ``extra`` dict (to set back what ``extra`` saved), before ``batches`` is started.
      logger: a ``MetricsLogger`` (a fresh run empties its file; a resumed one drops the records
        after the restored step) or any ``ScalarWriter`` (clu's ``write_scalars``; after a resume
        the steps since the checkpoint are written again); ``None``: nothing written.
      callbacks: ``(step, state, record) -> stop?`` after every step (``record``: the train
        metrics logged at this step, or ``{"step": step}``); True ends the run.
      progress: a tqdm bar: ``None`` when tqdm is installed, ``True`` always, ``False`` never.
      desc: the bar's label.

    Returns:
      ``HostResult``.

    Raises:
      ValueError: checkpoints exist but ``resume`` is False; the checkpoint's ``config_json``
        differs; ``config.rules.monitor`` is not a key of ``eval_fn``'s output.
    """
    if config.rules is not None and eval_fn is None:
        raise ValueError(f"HostConfig.rules (monitor {config.rules.monitor!r}) needs an eval_fn.")
    sink = _as_logger(logger)
    run = _Run(config, state, _fresh_rules(state, config.rules), checkpointer, dict(config_json or {}), extra)
    # the best parameters: with a checkpointer, the best step on disk (orbax's best-step tracking); without, a copy
    if config.rules is not None and config.rules.keeps_best and checkpointer is None:
        run.best = _copy((state.params, state.rest))
    resumed_from = run.resume(resume, data_iterator, on_resume) if checkpointer is not None else None
    start = int(np.asarray(to_host(run.state.step)))
    sink.truncate(start if resumed_from is not None else None)
    fresh = callable(batches) and not hasattr(batches, "__next__")
    it = iter(cast(Callable, batches)(start)) if fresh else iter(cast(Iterable[Any], batches))
    bar = progress_bar(config.num_steps, initial=start, desc=desc, enabled=progress)
    try:
        step = _steps(run, train_step, eval_fn, it, start, sink, tuple(callbacks), bar, data_iterator)
    finally:
        bar.close()
        sink.flush()
    return run.result(step, resumed_from)


def _steps(
    run: _Run,
    train_step: TrainStep,
    eval_fn: HostEvalFn | None,
    it: Iterator[Any],
    step: int,
    sink: MetricsLogger,
    callbacks: tuple[Callback, ...],
    bar: Any,
    data_iterator: Any,
) -> int:
    """``train``'s loop: step, log, callbacks, evaluate (apply the rules), checkpoint; returns the last step."""
    config, checkpointer = run.config, run.checkpointer
    while step < config.num_steps and not run.stopped:
        run.state, metrics = train_step(run.state, next(it))
        step += 1
        bar.update(1)
        rec: dict = {"step": step}
        if config.log_every and step % config.log_every == 0:
            scalars = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
            rec = sink.log(step, **{f"train_{k}": v for k, v in scalars.items()})
            bar.set_postfix({k: f"{float(v):.4g}" for k, v in scalars.items()})
        halt = False
        for cb in callbacks:
            halt = bool(cb(step, run.state, rec)) or halt
        evaluate = eval_fn is not None and (
            step == config.num_steps or (config.eval_every is not None and step % config.eval_every == 0)
        )
        improved = run.evaluate(cast(HostEvalFn, eval_fn), sink, step) if evaluate else False
        if checkpointer is not None and (evaluate or checkpointer.should_save(step)):
            run.save(step, data_iterator, improved)
        if halt:
            break
    if checkpointer is not None:
        run.save(step, data_iterator, False)
        checkpointer.wait()
    return step


def _fresh_rules(state: TrainState, rules: Rules | None) -> RuleState | None:
    if rules is None:
        return None
    base = None
    if rules.plateau is not None:
        base = np.float32(np.asarray(to_host(get_learning_rate(state.opt_state))))
    return rules_init(rules, (), jnp.float32, base)


@dataclasses.dataclass
class _Run:
    """What one ``train`` call carries between steps: the state, the rules' state, the best copy, the evaluations."""

    config: HostConfig
    state: TrainState
    rules: RuleState | None
    checkpointer: Checkpointer | None
    config_json: dict
    extra: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None
    best: PyTree = None
    evals: list[dict] = dataclasses.field(default_factory=list)

    @property
    def stopped(self) -> bool:
        return self.rules is not None and bool(self.rules.stopping.stopped)

    def extra_json(self, step: int) -> dict:
        extra = self.extra
        mine = dict(extra(step) if callable(extra) else (extra or {}))
        clash = {"config", "host_loop"} & set(mine)
        if clash:
            raise ValueError(f"train: extra must not use the keys {sorted(clash)} (the loop writes them).")
        loop = None if self.rules is None else _tree_to_json(self.rules)
        return {**mine, "config": self.config_json, "host_loop": loop}

    def resume(self, resume: bool, data_iterator: Any, on_resume: Callable[[int, dict], None] | None) -> int | None:
        """Restore the newest checkpoint (a fresh run refuses existing ones); returns its step or None."""
        ckpt = cast(Checkpointer, self.checkpointer)
        latest = ckpt.latest_step()
        if latest is not None and not resume:
            raise ValueError(
                f"{ckpt.directory} already holds checkpoints (latest step {latest}); pass --resume to "
                "continue that run, or choose another --workdir (nothing is overwritten)."
            )
        if latest is None:
            return None
        self.state, saved = ckpt.restore(latest, abstract_state(self.state), data_iterator=data_iterator)
        _check_config(saved.get("config"), self.config_json, ckpt.directory)
        if self.rules is not None and saved.get("host_loop") is not None:
            if isinstance(saved["host_loop"], Mapping):
                raise ValueError(f"the checkpoint in {ckpt.directory} was written by an older gmpjax; start afresh.")
            self.rules = cast(RuleState, _tree_from_json(self.rules, saved["host_loop"]))
        log.info("resumed from step %d of %s", latest, ckpt.directory)
        if on_resume is not None:
            on_resume(latest, saved)
        return latest

    def evaluate(self, eval_fn: HostEvalFn, sink: MetricsLogger, step: int) -> bool:
        """Evaluate, log and apply the rules; returns whether the monitored value improved."""
        ev = _host_metrics(eval_fn(self.state))
        head: dict[str, Any] = {}
        if self.config.steps_per_epoch:
            head["epoch"] = step / self.config.steps_per_epoch
        lr = _learning_rate(self.state.opt_state)
        if lr is not None:
            head["lr"] = lr
        improved = False
        if self.config.rules is not None:
            improved = self.apply_rules(self.config.rules, ev, step)
            if improved and self.best is not None:
                self.best = _copy((self.state.params, self.state.rest))
        self.evals.append(sink.log(step, **head, **ev))
        return improved

    def apply_rules(self, rules: Rules, ev: Mapping[str, Any], step: int) -> bool:
        """``rules_update`` on ``ev[rules.monitor]``, the decayed learning rate set; returns whether it improved."""
        if rules.monitor not in ev:
            raise ValueError(f"Rules.monitor={rules.monitor!r} is not a metric of eval_fn (it returns {sorted(ev)}).")
        old = cast(RuleState, self.rules)
        new = rules_update(rules, old, jnp.asarray(float(ev[rules.monitor]), jnp.float32), (), step)
        self.rules = new
        es = new.stopping
        if bool(es.stopped):
            log.info(
                "early stopping at step %d: %s did not improve for %s evaluations (best %g at step %d)",
                step, rules.monitor, rules.patience, float(best_value(rules, new)), int(es.best_step),
            )  # fmt: skip
        if rules.plateau is not None:
            lr = decayed_lr(new)
            self.state = self.state.replace(opt_state=_with_learning_rate(self.state.opt_state, lr))  # type: ignore[attr-defined]
            if float(new.plateau.scale) < float(old.plateau.scale):
                log.info("plateau at step %d: learning rate lowered to %g", step, float(lr))
        return int(es.best_step) != int(old.stopping.best_step)

    def save(self, step: int, data_iterator: Any, improved: bool) -> None:
        rules = self.config.rules
        rank = float(cast(RuleState, self.rules).stopping.best) if improved and rules and rules.keeps_best else None
        ckpt = cast(Checkpointer, self.checkpointer)
        ckpt.save(step, self.state, self.extra_json(step), force=True, data_iterator=data_iterator, best=rank)

    def result(self, step: int, resumed_from: int | None) -> HostResult:
        """The ``HostResult``, with the parameters ``Rules.restore`` picks (the best read back from disk if needed)."""
        rules, rs, chosen = self.config.rules, self.rules, self.state
        if rules is None or rs is None:
            return HostResult(chosen, self.state, step, False, math.nan, 0, 1.0, self.evals, resumed_from)
        if bool(use_best(rules, rs)):
            best = self.best
            if best is None:  # the best step's checkpoint (kept by orbax's best-step tracking)
                ckpt = cast(Checkpointer, self.checkpointer)
                best_state, _ = ckpt.restore(int(rs.stopping.best_step), abstract_state(self.state))
                best = (best_state.params, best_state.rest)
            chosen = self.state.replace(params=best[0], rest=best[1])  # type: ignore[attr-defined]
        return HostResult(
            state=chosen,
            last=self.state,
            step=step,
            stopped=bool(rs.stopping.stopped),
            best_value=float(best_value(rules, rs)),
            best_step=int(rs.stopping.best_step),
            lr_scale=float(rs.plateau.scale),
            evals=self.evals,
            resumed_from=resumed_from,
        )


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
