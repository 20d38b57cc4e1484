"""Atomic, resumable checkpoints of the engine's ``TrainState`` with orbax.

``Checkpointer`` is a thin layer over ``orbax.checkpoint.CheckpointManager``.
Every checkpoint ``<directory>/<step>/`` holds three items:

* ``state``: the ``TrainState`` pytree (params, batch statistics, optimizer
  state, step) via ``ocp.args.StandardSave``;
* ``extra``: a JSON dict for everything else a bit-exact resume needs -- the
  data-iterator position, RNG keys (``key_to_json``), the run's config;
* ``meta``: a JSON signature of the state tree (paths, shapes, dtypes), so that
  restoring into a different model fails with a readable message instead of an
  orbax tree diff;
* ``data`` (when ``save(..., data_iterator=it)`` is given): the state of a grain
  data iterator (``it.get_state()``, one JSON file per process) through grain's
  orbax handler (``grain.checkpoint.CheckpointSave``); ``restore(...,
  data_iterator=it)`` sets it back (``it.set_state``), so the next batch is the one
  the interrupted run would have read.

Which steps are written and kept is orbax's own policy: ``save_every`` is a
``FixedIntervalPolicy`` (a step is saved when it is a multiple of it, or when
``force``), and the steps kept are the newest ``max_to_keep`` (``LatestN``) plus
the best one (``BestN``): a step saved with ``best=value`` is ranked by that
value, lowest first, and ``best_step()`` is orbax's ``CheckpointManager.best_step``.
The host loop passes the monitored value of every evaluation that improved, so
the best parameters live in their own step instead of a second copy in every
step.

Atomicity: orbax writes a step into a temporary directory and renames it to
``<step>`` only once every item is complete (a commit marker on file systems
without atomic rename); an interrupted save is ignored by ``all_steps`` and
removed by the next ``Checkpointer`` on the directory (in the background when
it opens, at the latest before its first save). Old steps are deleted only
after the new step has been committed, so the last good checkpoint always
survives a crash during a save (``tests/test_checkpoint.py`` kills a process in
the middle of a save to check it).

Only orbax's public API is used (``CheckpointManager``, its options, policies,
``metadata(step)``); the layout on disk is orbax's business.

Multi-host: every process calls ``save``/``restore_latest`` with the same
arguments (orbax synchronises them); the abstract state passed to
``restore_latest`` carries the sharding the restored arrays get.

>>> import tempfile, jax.numpy as jnp, optax
>>> from flax import nnx
>>> from gmpjax.layers import GmPDense
>>> from gmpjax.train.engine import init_train_state
>>> _, state = init_train_state(GmPDense(3, 2, rngs=nnx.Rngs(0)), optax.sgd(0.1))
>>> with Checkpointer(tempfile.mkdtemp(), save_every=10) as ckpt:
...     ckpt.save(5, state, {"epoch": 0})   # not a multiple of save_every: skipped
...     ckpt.save(10, state, {"epoch": 1})
...     ckpt.wait()
...     restored, extra = ckpt.restore_latest(abstract_state(state))
False
True
>>> ckpt.latest_step(), extra
(10, {'epoch': 1})
"""

from __future__ import annotations

import json
import logging
import math
import os
from types import ModuleType
from typing import Any

import jax
import numpy as np

from gmpjax import _optional

PyTree = Any

__all__ = ["Checkpointer", "CheckpointError", "abstract_state", "tree_signature", "key_to_json", "key_from_json"]

_FORMAT = "gmpjax-checkpoint/1"
_BEST = "gmpjax_best"  # the metric a step saved with ``best=`` is ranked by (lower is better)
log = logging.getLogger("gmpjax")


def _ocp() -> ModuleType:
    """``orbax.checkpoint``, or an ImportError naming the extra that installs it."""
    return _optional.require("orbax.checkpoint", "train", "gmpjax.train.checkpoint.Checkpointer")


def _rank(metrics: Any) -> float:
    """The value orbax ranks a step by (``best_fn``): the ``best=`` of ``save``; steps without one rank last."""
    value = metrics.get(_BEST) if isinstance(metrics, dict) else None
    return math.inf if value is None else float(value)


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored (incompatible with the model, corrupt or incomplete)."""


def abstract_state(state: PyTree, sharding: jax.sharding.Sharding | None = None) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves (with shardings) describing ``state``: the restore target.

    Args:
      state: a concrete state (arrays) or an abstract one (e.g. from
        ``nnx.eval_shape``); leaves keep their own sharding when they have one.
      sharding: sharding given to every leaf instead (e.g.
        ``sharding.replicated_sharding(mesh)`` for a data-parallel run); leaves
        without a sharding and no ``sharding`` get the first local device.
    """
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
        hint = " (a Mesh: pass NamedSharding(mesh, P()) or gmpjax.train.sharding.replicated_sharding(mesh))"
        raise TypeError(
            f"abstract_state: sharding must be a jax.sharding.Sharding or None (got {type(sharding).__name__})"
            + (hint if isinstance(sharding, jax.sharding.Mesh) else "")
            + "."
        )
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def one(x):
        shape, dtype = np.shape(x), x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        s = sharding or getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

    return jax.tree.map(one, state)


def tree_signature(tree: PyTree) -> list[list]:
    """``[[path, shape, dtype], ...]`` of the leaves of ``tree`` (JSON-serialisable, sorted by path)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        out.append([jax.tree_util.keystr(path), list(np.shape(leaf)), str(dtype)])
    return sorted(out)


def key_to_json(key: jax.Array) -> dict:
    """A JAX PRNG key (typed or raw uint32) as a JSON dict (for ``extra``).

    >>> k = jax.random.key(3)
    >>> bool((jax.random.key_data(key_from_json(key_to_json(k))) == jax.random.key_data(k)).all())
    True
    """
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    data = np.asarray(jax.random.key_data(key) if typed else key)
    impl = str(jax.random.key_impl(key)) if typed else None
    return {"typed": typed, "impl": impl, "data": data.tolist(), "dtype": str(data.dtype)}


def key_from_json(d: dict) -> jax.Array:
    """Inverse of ``key_to_json``."""
    data = np.asarray(d["data"], dtype=d["dtype"])
    if d["typed"]:
        return jax.random.wrap_key_data(jax.numpy.asarray(data), impl=d["impl"])
    return jax.numpy.asarray(data)


def _signature_diff(saved: list, wanted: list, limit: int = 5) -> list[str]:
    s = {p: (tuple(sh), dt) for p, sh, dt in saved}
    w = {p: (tuple(sh), dt) for p, sh, dt in wanted}
    lines = []
    for p in sorted(set(s) | set(w)):
        if p not in s:
            lines.append(f"  {p}: not in the checkpoint (model expects shape {w[p][0]} {w[p][1]})")
        elif p not in w:
            lines.append(f"  {p}: in the checkpoint (shape {s[p][0]} {s[p][1]}) but not in the model")
        elif s[p] != w[p]:
            lines.append(f"  {p}: checkpoint has shape {s[p][0]} {s[p][1]}, model expects {w[p][0]} {w[p][1]}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... and {len(lines) - limit} more"]
    return lines


def _data_save_args(data_iterator: Any) -> Any:
    """grain's orbax save arguments for a snapshot of ``data_iterator.get_state()`` taken now."""
    who = "Checkpointer.save(data_iterator=...)"
    iterator_base: Any = _optional.require("grain", "data", who).DatasetIterator
    CheckpointSave = _optional.require("grain.checkpoint", "data", who).CheckpointSave

    get_state = getattr(data_iterator, "get_state", None)
    if get_state is None:
        raise TypeError(
            f"Checkpointer.save: data_iterator must be a grain iterator with get_state() "
            f"(got {type(data_iterator).__name__})."
        )

    class _Snapshot(iterator_base):
        """The iterator's state frozen at ``save`` time (later batches do not change the checkpoint)."""

        def __init__(self, state):
            super().__init__()
            self.saved = state

        def __next__(self):
            raise StopIteration

        def get_state(self):
            return self.saved

        def set_state(self, state):
            self.saved = state

    return CheckpointSave(item=_Snapshot(get_state()))


def _fix_hint(ckpt: Checkpointer, step: int) -> str:
    """How to get past a checkpoint of ``step`` that cannot be restored."""
    older = [s for s in ckpt.all_steps() if s < step]
    hint = f"start a fresh run with another --workdir (or delete {ckpt.directory})"
    if older:
        hint += f", or delete {os.path.join(ckpt.directory, str(step))} to resume from step {older[-1]}"
    return hint


def _saved_items(manager: Any, step: int) -> set[str]:
    """Names of the items saved in ``step`` (from orbax's step metadata)."""
    return set(manager.metadata(step).item_handlers or ())


class Checkpointer:
    """Save and resume ``TrainState`` + JSON metadata every ``save_every`` steps, keeping the last ``max_to_keep``.

    Args:
      directory: where the step directories go (created if missing); one run per directory.
      max_to_keep: how many of the most recent checkpoints to keep (``None``: all); the best
        step (``save(..., best=value)``) is kept as well.
      save_every: ``save(step, ...)`` writes only when ``step % save_every == 0`` (or ``force``):
        orbax's ``FixedIntervalPolicy``.
      async_save: write in a background thread (the device-to-host copy happens
        before ``save`` returns, so training may go on and even donate the state).

    Attributes:
      directory: the absolute path of ``directory``.
      save_every: the save interval.
      manager: the ``orbax.checkpoint.CheckpointManager`` underneath.

    Raises:
      ImportError: orbax-checkpoint is not installed (``pip install "gmpjax[train]"``).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_every: int = 1,
        async_save: bool = True,
    ):
        if not isinstance(save_every, int) or save_every < 1:
            raise ValueError(f"Checkpointer: save_every must be a positive int (got {save_every!r}).")
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"Checkpointer: max_to_keep must be a positive int or None (got {max_to_keep!r}).")
        self.directory = os.path.abspath(os.fspath(directory))
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"checkpoint directory {self.directory} exists and is not a directory; pass another --workdir."
            )
        self.save_every = save_every
        ocp = _ocp()
        policies = ocp.checkpoint_managers
        keep = [
            policies.LatestN(n=max_to_keep),
            policies.BestN(get_metric_fn=_rank, reverse=True, n=1, keep_checkpoints_without_metrics=False),
        ]
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                create=True,
                cleanup_tmp_directories=True,
                enable_async_checkpointing=async_save,
                save_decision_policy=policies.FixedIntervalPolicy(save_every),
                preservation_policy=policies.AnyPreservationPolicy(keep),
                best_fn=_rank,
                best_mode="min",
            ),
        )

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step saved with the lowest ``best=`` value (orbax's ``best_step``), or None if none was."""
        step = self.manager.best_step()
        if step is None or _rank(self.manager.metadata(step).metrics) == math.inf:
            return None
        return int(step)

    # --------------------------------------------------------------------- save
    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` without ``force`` would write (orbax's save policy)."""
        return int(step) not in self.manager.all_steps() and bool(self.manager.should_save(int(step)))

    def save(
        self,
        step: int,
        state: PyTree,
        extra: dict | None = None,
        *,
        force: bool = False,
        data_iterator: Any = None,
        best: float | None = None,
    ) -> bool:
        """Start saving ``state`` and ``extra`` as step ``step``; returns whether a save was started.

        Skipped when ``step`` is not a multiple of ``save_every`` (unless
        ``force``) or when that step is already saved. ``extra`` must be
        JSON-serialisable (use ``key_to_json`` for PRNG keys). ``data_iterator``: a
        grain iterator (``get_state()``) whose state, taken now, goes into the same step.
        ``best``: rank this step by this value (lower is better); the lowest is
        ``best_step()`` and is kept beyond ``max_to_keep``.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"Checkpointer.save: step must be >= 0 (got {step}).")
        if step in self.manager.all_steps() or (not force and not self.manager.should_save(step)):
            return False
        extra = {} if extra is None else extra
        if not isinstance(extra, dict):
            raise TypeError(f"Checkpointer.save: extra must be a dict (got {type(extra).__name__}).")
        try:
            json.dumps(extra)
        except TypeError as e:
            raise TypeError(
                f"Checkpointer.save: extra must be JSON-serialisable ({e}); convert arrays with .tolist() "
                "and PRNG keys with gmpjax.train.checkpoint.key_to_json."
            ) from None
        if best is not None and not math.isfinite(float(best)):
            raise ValueError(f"Checkpointer.save: best must be a finite number (got {best!r}).")
        ocp = _ocp()
        meta = {"format": _FORMAT, "tree": tree_signature(state)}
        items = {
            "state": ocp.args.StandardSave(state),
            "extra": ocp.args.JsonSave(extra),
            "meta": ocp.args.JsonSave(meta),
        }
        if data_iterator is not None:
            items["data"] = _data_save_args(data_iterator)
        metrics = {} if best is None else {_BEST: float(best)}
        started = bool(self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True))
        if started:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return started

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed.

        A save that failed in the background (a read-only or full disk, a vanished directory) raises a
        ``CheckpointError`` here naming the directory, with orbax's error chained.
        """
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 -- any background write failure
            raise CheckpointError(
                f"writing a checkpoint to {self.directory} failed ({type(e).__name__}: {e}); check that the "
                "directory is writable and the disk has space, then resume from the last complete step."
            ) from e

    # ------------------------------------------------------------------ restore
    def restore(self, step: int, abstract: PyTree, *, data_iterator: Any = None) -> tuple[PyTree, dict]:
        """Restore step ``step`` into the structure, shapes, dtypes and shardings of ``abstract``.

        Args:
          step: a step from ``all_steps()``.
          abstract: the target (``abstract_state(state)``; a concrete state is
            converted with ``abstract_state``).
          data_iterator: a grain iterator saved with the step; its state is set
            in place (``set_state``) and its prefetching started.

        Raises:
          CheckpointError: the checkpoint does not match ``abstract`` (another
            model or optimizer), or it is corrupt/incomplete.
        """
        step = int(step)
        if step not in self.all_steps():
            raise CheckpointError(
                f"no complete checkpoint for step {step} in {self.directory} (available: {self.all_steps()})."
            )
        if any(not isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract)):
            abstract = abstract_state(abstract)
        ocp = _ocp()
        where = os.path.join(self.directory, str(step))
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # noqa: BLE001 -- any read failure means a damaged checkpoint
            raise CheckpointError(
                f"checkpoint {where} is corrupt or incomplete (cannot read its metadata: {type(e).__name__}: {e}); "
                f"{_fix_hint(self, step)}."
            ) from e
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise CheckpointError(f"{where} is not a gmpjax checkpoint; {_fix_hint(self, step)}.")
        diff = _signature_diff(meta["tree"], tree_signature(abstract))
        if diff:
            raise CheckpointError(
                f"checkpoint {where} does not match the model/optimizer being restored (was it written by a run "
                "with another architecture, parameterization or optimizer?):\n" + "\n".join(diff) + "\n"
                f"Fix: {_fix_hint(self, step)}."
            )
        items = {"state": ocp.args.StandardRestore(abstract), "extra": ocp.args.JsonRestore()}
        if data_iterator is not None:
            if "data" not in _saved_items(self.manager, step):
                raise CheckpointError(
                    f"checkpoint {where} holds no data-iterator state (it was saved without data_iterator); "
                    f"{_fix_hint(self, step)}."
                )
            restore_args = _optional.require("grain.checkpoint", "data", "Checkpointer.restore(data_iterator=...)")
            items["data"] = restore_args.CheckpointRestore(item=data_iterator)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**items))
        except ValueError as e:
            if "data-iterator state" in str(e):  # the iterator refused the saved state: say why, unchanged
                raise CheckpointError(f"checkpoint {where}: {e}") from e
            raise CheckpointError(
                f"checkpoint {where} is corrupt or incomplete ({type(e).__name__}: {str(e)[:500]}); "
                f"{_fix_hint(self, step)}."
            ) from e
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {where} is corrupt or incomplete ({type(e).__name__}: {str(e)[:500]}); "
                f"{_fix_hint(self, step)}."
            ) from e
        return out.state, dict(out.extra or {})

    def restore_latest(self, abstract: PyTree, *, data_iterator: Any = None) -> tuple[PyTree, dict] | None:
        """Restore the newest complete checkpoint (see ``restore``); None if there is none."""
        step = self.latest_step()
        return None if step is None else self.restore(step, abstract, data_iterator=data_iterator)

    def restore_params(self, step: int | None = None, *, best: bool = False) -> PyTree:
        """Host (numpy) copy of the parameters saved at ``step`` (default: the newest), without a model.

        The target is read from the checkpoint's own metadata and every array is restored onto
        this process's first device, so checkpoints written by any number of devices or
        processes can be read (for tests and analysis). The saved state is a ``TrainState``
        (its ``params``) or a dict with ``"params"``. ``best=True`` reads ``best_step()``
        instead (``step`` must then be None).

        Returns:
          The ``params`` tree as nested dicts of ``np.ndarray``.

        Raises:
          CheckpointError: no such step, or no parameters (or no best step) in it.
        """
        if best:
            if step is not None:
                raise ValueError("Checkpointer.restore_params: pass either step or best=True, not both.")
            step = self.best_step()
            if step is None:
                raise CheckpointError(
                    f"no best step in {self.directory}: no step was saved with best=... "
                    "(gmpjax.train.host.train does that when HostConfig.restore is not 'never')."
                )
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no complete checkpoint in {self.directory}.")
        step = int(step)
        if step not in self.all_steps():
            raise CheckpointError(
                f"no complete checkpoint for step {step} in {self.directory} (available: {self.all_steps()})."
            )
        ocp = _ocp()
        where = os.path.join(self.directory, str(step))
        meta = self.manager.metadata(step).item_metadata["state"]
        meta = getattr(meta, "tree", meta)
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
        tree = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
        params = tree.get("params") if isinstance(tree, dict) else None
        if params is None:
            raise CheckpointError(f"checkpoint {where} holds no 'params' (keys: {sorted(tree)}).")
        return jax.tree.map(np.asarray, params)

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Wait for pending saves and release the manager's resources."""
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({self.directory!r}, steps={self.all_steps()})"
