"""Data-parallel training over all devices (and hosts) with ``jax.jit`` + ``NamedSharding``.

The engine's pure train step (``gmpjax.train.engine.make_train_step``) is
sharded, not rewritten: the global batch is split along its leading axis over a
1-D device mesh with axis ``"data"`` (``P("data")``), the ``TrainState`` is
replicated (``P()``), and XLA inserts the all-reduces of the gradients and of
the batch statistics (batch norm, IMN) itself. No ``shard_map``/``pmap`` is
involved, so the gradient-scaling pitfall of ``shard_map`` (gradients of
replicated parameters already summed over the axis) cannot occur, and the step
computes exactly the single-device step on the same global batch (up to float
summation order).

Multi-host (a GPU/TPU pod, or several CPU processes): call
``initialize_distributed`` first (one process per host), build the mesh over
all devices of all processes with ``make_data_mesh``, and let every process feed
only its own part of the global batch to ``shard_batch`` (which then uses
``jax.make_array_from_process_local_data``). ``local_batch_slice`` says which
rows of the global batch a process owns.

Example (one process, however many local devices there are)::

>>> import jax, jax.numpy as jnp, optax
>>> from flax import nnx
>>> from gmpjax.layers import GmPDense
>>> from gmpjax.train.engine import init_train_state, make_train_step
>>> mesh = make_data_mesh()
>>> tx = optax.sgd(0.1)
>>> graphdef, state = init_train_state(GmPDense(2, 1, activation=None, rngs=nnx.Rngs(0)), tx)
>>> loss_fn = lambda model, batch: jnp.mean((model(batch[0]) - batch[1]) ** 2)
>>> step = shard_train_step(make_train_step(graphdef, tx, loss_fn), mesh)
>>> state = replicate(state, mesh)
>>> batch = shard_batch((jnp.ones((8, 2)), jnp.zeros((8, 1))), mesh)
>>> state, metrics = step(state, batch)
>>> int(state.step)
1
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "make_data_mesh",
    "replicated_sharding",
    "batch_sharding",
    "replicate",
    "shard_batch",
    "local_batch_slice",
    "check_batch_size",
    "shard_train_step",
    "shard_eval_step",
    "to_host",
    "initialize_distributed",
    "is_primary",
]


def make_data_mesh(devices: Sequence[jax.Device] | None = None, *, axis_name: str = DATA_AXIS) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of all processes).

    The axis type is ``Auto`` (classic GSPMD propagation): ``jax.make_mesh`` defaults
    to ``Explicit`` axes in recent JAX, under which some reshapes of a batch-sharded
    array need explicit annotations; the data-parallel step needs none.

    Args:
      devices: devices in mesh order; ``jax.devices()`` (global, process-major) if None.
      axis_name: the mesh axis name.

    >>> make_data_mesh().axis_names
    ('data',)
    """
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("make_data_mesh: `devices` is empty; pass at least one jax.Device (or None for all).")
    return jax.make_mesh((len(devs),), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,), devices=devs)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P("data"))``: the leading (batch) axis split over the mesh."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def _is_multiprocess(mesh: Mesh) -> bool:
    return jax.process_count() > 1 and not all(d.process_index == jax.process_index() for d in mesh.devices.flat)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Put every array leaf of ``tree`` on all devices of ``mesh`` (``P()``).

    On several processes each process must pass the same values (the usual
    case: parameters initialised from the same seed, or restored from the same
    checkpoint); the global array is assembled from the process-local copies.
    """
    sharding = replicated_sharding(mesh)
    if not _is_multiprocess(mesh):
        return jax.device_put(tree, sharding)

    def put(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # already global (e.g. restored): reshard if needed
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=impl)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def check_batch_size(batch_size: int, num_shards: int, *, what: str = "batch size") -> int:
    """Return ``batch_size // num_shards`` or raise a ValueError explaining how to fix a remainder."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{what} must be a positive int (got {batch_size!r}).")
    if batch_size % num_shards:
        lo = (batch_size // num_shards) * num_shards
        hi = lo + num_shards
        raise ValueError(
            f"{what} {batch_size} is not divisible by the {num_shards} devices it is split over; "
            f"use a multiple of {num_shards} (e.g. {lo or hi} or {hi}) or run on fewer devices."
        )
    return int(batch_size) // num_shards


def local_batch_slice(global_batch_size: int, mesh: Mesh | None = None) -> slice:
    """Rows of the global batch that this process feeds (contiguous, process-major).

    With ``P("data")`` over ``jax.devices()`` (process-major order), process ``i``
    owns rows ``[i * B / P, (i + 1) * B / P)`` of a global batch of ``B`` rows on
    ``P`` processes. Raises ValueError unless ``B`` is divisible by the number of
    devices.

    >>> local_batch_slice(8)  # single process: everything
    slice(0, 8, None)
    """
    n_dev = jax.device_count() if mesh is None else mesh.size
    check_batch_size(global_batch_size, n_dev, what="global batch size")
    per_process = global_batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Split every leaf of ``batch`` along its leading axis over the mesh (``P("data")``).

    One process: ``batch`` is the global batch. Several processes: each process
    passes its own part (``local_batch_slice`` of the global batch) and the global
    arrays are built with ``jax.make_array_from_process_local_data``.

    Args:
      batch: pytree of arrays with a common leading batch axis (numpy or jax).
      mesh: from ``make_data_mesh``.

    Raises:
      ValueError: a leaf is a scalar, the leaves disagree on the batch size, or
        the (local) batch size is not divisible by the (local) device count.
    """
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("shard_batch: `batch` has no array leaves.")
    sizes = set()
    for leaf in leaves:
        if np.ndim(leaf) == 0:
            raise ValueError("shard_batch: every leaf of `batch` needs a leading batch axis (got a scalar leaf).")
        sizes.add(np.shape(leaf)[0])
    if len(sizes) != 1:
        raise ValueError(f"shard_batch: the leaves of `batch` have different leading sizes {sorted(sizes)}.")
    (n,) = sizes
    sharding = batch_sharding(mesh)
    if not _is_multiprocess(mesh):
        check_batch_size(n, mesh.size)
        return jax.device_put(batch, sharding)
    local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    check_batch_size(n, local_devices, what="per-process batch size")
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def shard_train_step(
    step: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]], mesh: Mesh, *, donate_state: bool = False
) -> Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]:
    """``jax.jit`` an engine train step ``(state, batch) -> (state, metrics)`` for data parallelism.

    The state (in and out) and the metrics are replicated, the batch is sharded
    along its leading axis. Inputs must already be placed with ``replicate`` /
    ``shard_batch`` (a mismatching placement is resharded by jit).

    Args:
      step: the pure step from ``make_train_step``.
      mesh: from ``make_data_mesh``.
      donate_state: let XLA reuse the input state's buffers (saves memory on
        accelerators; the passed-in state must not be used afterwards).
    """
    repl, data = replicated_sharding(mesh), batch_sharding(mesh)
    return jax.jit(
        step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=(0,) if donate_state else ()
    )


def shard_eval_step(evaluate: Callable[[PyTree, PyTree], PyTree], mesh: Mesh) -> Callable[[PyTree, PyTree], PyTree]:
    """``jax.jit`` an engine eval step ``(state, batch) -> metrics`` (state replicated, batch sharded).

    Metrics that are per-example come back sharded; reductions inside the eval
    function (means over the batch) come back replicated.
    """
    repl, data = replicated_sharding(mesh), batch_sharding(mesh)
    return jax.jit(evaluate, in_shardings=(repl, data))


def to_host(tree: PyTree) -> PyTree:
    """Numpy copies of the leaves of ``tree`` on this process.

    Works for replicated global arrays in multi-process runs (reads the local
    replica) and gathers sharded ones across processes.
    """
    from jax.experimental import multihost_utils

    def get(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


def is_primary() -> bool:
    """True on process 0 (the one that should print, plot and write result files)."""
    return jax.process_index() == 0


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    auto: bool = False,
    cpu_collectives: str | None = "gloo",
    initialization_timeout: int = 300,
) -> bool:
    """Start multi-process JAX (``jax.distributed.initialize``); a no-op for a single process.

    Call it before any other JAX operation, once per process.

    Args:
      coordinator_address: ``"host:port"`` of process 0. Defaults to
        ``$GMPJAX_COORDINATOR``.
      num_processes: total number of processes (``$GMPJAX_NUM_PROCESSES``).
        ``None`` or ``1`` without ``auto`` means single-process: nothing is done.
      process_id: this process's index in ``[0, num_processes)`` (``$GMPJAX_PROCESS_ID``).
      local_device_ids: restrict this process to these local devices.
      auto: call ``jax.distributed.initialize()`` with no arguments so JAX
        detects the cluster itself (Cloud TPU pods, SLURM, Open MPI).
      cpu_collectives: collectives backend for multi-process CPU runs
        (``jax_cpu_collectives_implementation``, "gloo" or "mpi"); ignored by GPUs/TPUs.
      initialization_timeout: seconds to wait for all processes to connect.

    Returns:
      True if JAX now runs multi-process (``jax.process_count() > 1`` once initialised).

    >>> initialize_distributed()  # single process: nothing to do
    False
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("GMPJAX_COORDINATOR") or None
    if num_processes is None and env.get("GMPJAX_NUM_PROCESSES"):
        num_processes = int(env["GMPJAX_NUM_PROCESSES"])
    if process_id is None and env.get("GMPJAX_PROCESS_ID"):
        process_id = int(env["GMPJAX_PROCESS_ID"])
    if jax.distributed.is_initialized():
        return True
    if not auto and (num_processes is None or num_processes == 1):
        return False
    if not auto:
        if num_processes < 1:
            raise ValueError(f"num_processes must be >= 1 (got {num_processes}).")
        if coordinator_address is None:
            raise ValueError(
                "initialize_distributed: num_processes > 1 needs coordinator_address='host:port' of process 0 "
                "(or $GMPJAX_COORDINATOR), or auto=True on a cluster JAX detects itself."
            )
        if process_id is None or not 0 <= process_id < num_processes:
            raise ValueError(
                f"initialize_distributed: process_id must be in [0, {num_processes}) (got {process_id!r}); "
                "pass it or set $GMPJAX_PROCESS_ID."
            )
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if auto:
        jax.distributed.initialize(local_device_ids=local_device_ids, initialization_timeout=initialization_timeout)
    else:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=initialization_timeout,
        )
    return jax.process_count() > 1
