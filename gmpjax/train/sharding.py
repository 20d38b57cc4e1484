"""Data- and tensor-parallel training over all devices (and hosts) with ``jax.jit`` + ``NamedSharding``.

The engine's pure train step (``gmpjax.train.engine.make_train_step``) is
sharded, not rewritten: the global batch is split along its leading axis over a
1-D device mesh with axis ``"data"`` (``P("data")``), the ``TrainState`` is
replicated (``P()``), and XLA inserts the all-reduces of the gradients and of
the batch statistics (batch norm, IMN) itself. No ``shard_map``/``pmap`` is
involved, so the gradient-scaling pitfall of ``shard_map`` (gradients of
replicated parameters already summed over the axis) cannot occur, and the step
computes exactly the single-device step on the same global batch (up to float
summation order).

Tensor parallelism: parameters may carry sharding names in their nnx metadata
(``nnx.Param(..., out_sharding=("model", None))``: ``kernel_metadata`` of
``nnx.Linear``, ``theta_metadata``/``radius_metadata``/``offset_metadata`` of the GmP
layers). On a 2-D mesh ``("data", "model")`` from ``make_mesh`` the step then keeps
every annotated array -- the parameter and, because optax states are built by
mapping over the parameters, its optimizer moments -- split over the named mesh
axes; everything unannotated is replicated. ``state_shardings`` reads the
shardings from the metadata (``nnx.get_named_sharding``), ``shard_state`` places
a state accordingly, and ``shard_train_step`` derives its ``in_shardings`` /
``out_shardings`` from the state it is called with, so the same call covers the
data-parallel and the tensor-parallel case (a state without annotations is simply
replicated). The column-parallel GmP layer followed by a row-parallel standard
layer is the Megatron MLP; ``docs/scaling.md`` shows how to annotate a model.

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

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gmpjax.layers.parallel import MODEL_AXIS, column_parallel, row_parallel

PyTree = Any
DATA_AXIS = "data"
"""The mesh axis name of data parallelism (the batch is split along it)."""

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "make_data_mesh",
    "make_mesh",
    "parse_mesh_shape",
    "data_shards",
    "state_shardings",
    "shard_state",
    "column_parallel",
    "row_parallel",
    "replicated_sharding",
    "batch_sharding",
    "replicate",
    "shard_batch",
    "local_batch_slice",
    "check_batch_size",
    "ShardedStep",
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


def make_mesh(
    shape: tuple[int, int] | str,
    *,
    axis_names: tuple[str, str] = (DATA_AXIS, MODEL_AXIS),
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A 2-D ``("data", "model")`` mesh for data x tensor parallelism (``Auto`` axes).

    Args:
      shape: ``(data, model)`` sizes or a string ``"DxM"`` (e.g. ``"2x4"``); their
        product must equal the number of devices used.
      axis_names: the two mesh axis names; parameters name the second one in their
        sharding metadata (``("model", None)``).
      devices: devices in mesh order (default: all devices of all processes).
        Consecutive devices share a ``data`` index, so the ``model`` axis (the
        chattiest one) stays inside a host where possible.

    >>> mesh = make_mesh((1, 1), devices=jax.devices()[:1])
    >>> dict(mesh.shape)
    {'data': 1, 'model': 1}
    """
    data, model = parse_mesh_shape(shape) if isinstance(shape, str) else _check_mesh_shape(shape)
    devs = list(jax.devices() if devices is None else devices)
    if data * model != len(devs):
        raise ValueError(
            f"make_mesh: a {data}x{model} mesh needs {data * model} devices, but {len(devs)} are given; "
            f"pick sizes whose product is {len(devs)} or pass `devices`."
        )
    return jax.make_mesh((data, model), tuple(axis_names), axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devs)


def _check_mesh_shape(shape) -> tuple[int, int]:
    t = tuple(shape)
    if len(t) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in t):
        raise ValueError(f"mesh shape must be two positive ints (data, model), got {shape!r}.")
    return int(t[0]), int(t[1])


def parse_mesh_shape(text: str) -> tuple[int, int]:
    """``"2x4"`` -> ``(2, 4)`` (data, model); raises ValueError with the expected form otherwise.

    >>> parse_mesh_shape("2x4")
    (2, 4)
    """
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"mesh must look like DATAxMODEL, e.g. 2x4 (got {text!r}).")
    return _check_mesh_shape((int(parts[0]), int(parts[1])))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P())``: every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """``NamedSharding(mesh, P("data"))``: the leading (batch) axis split over the mesh."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def _is_multiprocess(mesh: Mesh) -> bool:
    return jax.process_count() > 1 and not all(d.process_index == jax.process_index() for d in mesh.devices.flat)


def data_shards(mesh: Mesh, *, local: bool = False) -> int:
    """How many slices the batch axis is split into: the size of the first mesh axis (``local``: this process's).

    >>> data_shards(make_data_mesh(jax.devices()[:1]))
    1
    """
    axis = mesh.axis_names[0]
    if not local:
        return int(mesh.shape[axis])
    pos = mesh.axis_names.index(axis)
    idx = {i[pos] for i, d in np.ndenumerate(mesh.devices) if d.process_index == jax.process_index()}
    return max(len(idx), 1)


def _put(tree: PyTree, shardings: PyTree, mesh: Mesh) -> PyTree:
    """``device_put`` of ``tree`` to ``shardings`` (a matching tree), assembling global arrays on several processes."""
    if not _is_multiprocess(mesh):
        return jax.device_put(tree, shardings)

    def put(x, sharding):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)  # already global (e.g. restored): reshard if needed
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding), impl=impl)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Put every array leaf of ``tree`` on all devices of ``mesh`` (``P()``).

    On several processes each process must pass the same values (the usual
    case: parameters initialised from the same seed, or restored from the same
    checkpoint); the global array is assembled from the process-local copies.
    Sharding annotations are ignored: use ``shard_state`` for a tensor-parallel state.
    """
    sharding = replicated_sharding(mesh)
    return _put(tree, jax.tree.map(lambda _: sharding, tree), mesh)


def state_shardings(state: PyTree, mesh: Mesh) -> PyTree:
    """The ``NamedSharding`` of every leaf of ``state`` from its nnx sharding metadata (default replicated).

    A leaf inside an ``nnx.Variable`` whose metadata has ``out_sharding`` (the
    ``kernel_metadata`` / ``theta_metadata`` keywords, ``nnx.with_partitioning``)
    gets ``NamedSharding(mesh, P(*names))``; every other leaf (step counters,
    unannotated parameters, batch statistics, scalars) gets ``P()``. Optimizer
    moments built by optax from annotated parameters carry the same metadata, so
    they follow their parameter.

    Args:
      state: a ``TrainState`` (or any pytree of arrays / ``jax.ShapeDtypeStruct``).
      mesh: the mesh whose axis names the metadata uses.

    Returns:
      A pytree of ``NamedSharding`` with the structure of ``state`` (usable as
      jit ``in_shardings`` and by ``jax.device_put``).

    Raises:
      ValueError: an annotation names an axis the mesh lacks, has more names than
        the array has dimensions, or splits a dimension the mesh axis size does not
        divide (e.g. ``out_features=6`` over a model axis of 4).

    >>> mesh = make_data_mesh(jax.devices()[:1])
    >>> state_shardings({"w": np.ones((2, 3))}, mesh)["w"].spec
    P()
    """
    specs = nnx.get_partition_spec(state)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    if len(spec_leaves) != len(flat):
        raise ValueError("state_shardings: could not match the sharding metadata to the leaves of `state`.")
    out = []
    for (path, leaf), spec in zip(flat, spec_leaves, strict=True):
        out.append(NamedSharding(mesh, _check_spec(spec, np.shape(leaf), mesh, jax.tree_util.keystr(path))))
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_spec(spec, shape: tuple[int, ...], mesh: Mesh, where: str) -> P:
    spec = P() if spec is None else P(*spec)
    if len(spec) > len(shape):
        raise ValueError(
            f"{where}: sharding {spec} has {len(spec)} entries but the array has shape {shape}; "
            "give one name (or None) per dimension."
        )
    for dim, names in enumerate(spec):
        if names is None:
            continue
        names = (names,) if isinstance(names, str) else tuple(names)
        size = 1
        for name in names:
            if name not in mesh.shape:
                raise ValueError(
                    f"{where}: sharding {spec} names mesh axis {name!r}, but the mesh has axes "
                    f"{tuple(mesh.axis_names)}; build the mesh with make_mesh or rename the axis in the metadata."
                )
            size *= mesh.shape[name]
        if shape[dim] % size:
            raise ValueError(
                f"{where}: dimension {dim} of size {shape[dim]} is split over mesh axes {names} of total size "
                f"{size}, which does not divide it; use a size that is a multiple of {size} or a smaller mesh axis."
            )
    return spec


def shard_state(state: PyTree, mesh: Mesh) -> PyTree:
    """Place ``state`` on ``mesh`` with ``state_shardings``: annotated leaves split, the rest replicated.

    For a state without sharding metadata this is ``replicate``. Multi-process:
    every process passes the same (full) values, as for ``replicate``.
    """
    return _put(state, state_shardings(state, mesh), mesh)


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
    devices along the batch (first) mesh axis.

    >>> local_batch_slice(8)  # single process: everything
    slice(0, 8, None)
    """
    n_dev = jax.device_count() if mesh is None else data_shards(mesh)
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
        the (local) batch size is not divisible by the (local) number of devices
        along the batch axis (all devices on a 1-D mesh, the ``data`` size of a 2-D one).
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
        check_batch_size(n, data_shards(mesh))
        return jax.device_put(batch, sharding)
    check_batch_size(n, data_shards(mesh, local=True), what="per-process batch size")
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


class ShardedStep:
    """A jitted ``(state, *args) -> out`` whose state shardings come from the state's own metadata.

    On a mesh with ``Explicit`` axes (the default of ``jax.make_mesh``) the step is traced and run under
    ``jax.set_mesh(mesh)``, so a model can name ``out_sharding=P(...)`` where JAX asks for one (a matmul
    whose contracting axis is sharded, as in a row-parallel layer).

    The shardings are derived (``state_shardings``) from the first state it is
    called with and cached per tree structure (which includes the nnx metadata),
    so one object serves a replicated data-parallel state and a tensor-parallel
    one. ``lower(state, batch)`` gives the ``jax.stages.Lowered`` step, whose
    ``compile().output_shardings`` show what the compiled program keeps sharded.
    """

    def __init__(self, fn: Callable, mesh: Mesh, *, train: bool, donate_state: bool = False):
        self.fn, self.mesh, self.train, self.donate_state = fn, mesh, train, donate_state
        self._jitted: dict[Any, Any] = {}

    def shardings(self, state: PyTree) -> PyTree:
        """``state_shardings(state, mesh)``."""
        return state_shardings(state, self.mesh)

    def jitted(self, state: PyTree) -> Any:
        """The ``jax.jit``-ed function for states of ``state``'s structure."""
        key = jax.tree.structure(state)
        if key not in self._jitted:
            state_sh, repl, data = self.shardings(state), replicated_sharding(self.mesh), batch_sharding(self.mesh)
            if self.train:
                self._jitted[key] = jax.jit(
                    self.fn,
                    in_shardings=(state_sh, data),
                    out_shardings=(state_sh, repl),
                    donate_argnums=(0,) if self.donate_state else (),
                )
            else:
                self._jitted[key] = jax.jit(self.fn, in_shardings=(state_sh, data))
        return self._jitted[key]

    def _context(self) -> Any:
        """``jax.set_mesh(mesh)`` for a mesh with Explicit axes (a model's ``out_sharding=P(...)`` needs it)."""
        explicit = any(t == jax.sharding.AxisType.Explicit for t in getattr(self.mesh, "axis_types", ()))
        return jax.set_mesh(self.mesh) if explicit else contextlib.nullcontext()

    def lower(self, state: PyTree, batch: PyTree) -> Any:
        with self._context():
            return self.jitted(state).lower(state, batch)

    def _check_state_mesh(self, state: PyTree) -> None:
        """A clear error for a state placed on another mesh (e.g. sharded for 2x4, stepped on 4x2)."""
        for leaf in jax.tree.leaves(state):
            sharding = getattr(leaf, "sharding", None)
            mesh = getattr(sharding, "mesh", None)
            if mesh is None or not getattr(leaf, "committed", True):
                continue
            same = dict(mesh.shape) == dict(self.mesh.shape) and getattr(mesh, "devices", None) is not None
            if same:
                same = np.array_equal(np.vectorize(lambda d: d.id)(mesh.devices), self.mesh.device_ids)
            if not same:
                raise ValueError(
                    f"the state is placed on a mesh {dict(mesh.shape)} but this step runs on {dict(self.mesh.shape)} "
                    "(or other devices); place it for this mesh with shard_state(to_host(state), mesh) first."
                )
            return

    def __call__(self, state: PyTree, batch: PyTree) -> Any:
        self._check_state_mesh(state)
        with self._context():
            return self.jitted(state)(state, batch)


def shard_train_step(
    step: Callable[[PyTree, PyTree], tuple[PyTree, PyTree]], mesh: Mesh, *, donate_state: bool = False
) -> ShardedStep:
    """``jax.jit`` an engine train step ``(state, batch) -> (state, metrics)`` for data/tensor parallelism.

    The batch is sharded along its leading axis (``P("data")``), the metrics are
    replicated, and the state (in and out) has the shardings of its metadata
    (``state_shardings``): replicated for a plain model -- pure data parallelism --
    and split over the ``model`` axis where parameters are annotated. The output
    state keeps the input's shardings, so optimizer moments stay split with their
    parameter. Place inputs with ``shard_state`` (or ``replicate`` for an
    unannotated state) and ``shard_batch``; jit refuses a committed state placed
    differently.

    Args:
      step: the pure step from ``make_train_step``.
      mesh: from ``make_data_mesh`` (data parallel) or ``make_mesh`` (data x model).
      donate_state: let XLA reuse the input state's buffers (saves memory on
        accelerators; the passed-in state must not be used afterwards).
    """
    return ShardedStep(step, mesh, train=True, donate_state=donate_state)


def shard_eval_step(evaluate: Callable[[PyTree, PyTree], PyTree], mesh: Mesh) -> ShardedStep:
    """``jax.jit`` an engine eval step ``(state, batch) -> metrics`` (state as ``shard_train_step``, batch sharded).

    Metrics that are per-example come back sharded; reductions inside the eval
    function (means over the batch) come back replicated.
    """
    return ShardedStep(evaluate, mesh, train=False)


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
        assert num_processes is not None  # None returned above
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
