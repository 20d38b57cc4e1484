"""A Megatron GmP MLP on both mesh axis types, used by tests/test_tensor_parallel.py (8 host devices).

The model (GmP column parallel, nnx.Linear row parallel with ``out_sharding`` on its output, as JAX
asks for on Explicit axes) is trained 5 SGD steps through ``shard_state`` / ``shard_train_step`` on a
(2, 4) ('data', 'model') mesh from ``jax.make_mesh`` with Auto and with Explicit axes, and on one
device. Prints ``RESULT {...}``: per axis type the max abs parameter difference to one device, theta's
sharding in the compiled step's output and the all-gathers of theta's full shape in that step.

``python tests/scripts/tp_axis_types.py`` with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from unit_sharding import gathers_of

IN, HIDDEN, OUT, BATCH, STEPS = 12, 32, 4, 16, 5


def run(mesh):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from gmpjax.layers import GmPDense
    from gmpjax.train import sharding
    from gmpjax.train.engine import init_train_state, make_train_step

    explicit = mesh is not None and jax.sharding.AxisType.Explicit in mesh.axis_types

    class Megatron(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.up = GmPDense(IN, HIDDEN, rngs=rngs, **sharding.column_parallel("gmp"))
            self.down = nnx.Linear(HIDDEN, OUT, rngs=rngs, **sharding.row_parallel())

        def __call__(self, x):
            return self.down(self.up(x), out_sharding=jax.P("data", None) if explicit else None)

    tx = optax.sgd(0.1)
    graphdef, state = init_train_state(Megatron(nnx.Rngs(0)), tx)
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(STEPS, BATCH, IN)).astype(np.float32) + 0.3
    ys = rng.normal(size=(STEPS, BATCH, OUT)).astype(np.float32)

    def loss_fn(model, batch):
        return jnp.mean((model(batch[0]) - batch[1]) ** 2)

    step = make_train_step(graphdef, tx, loss_fn)
    if mesh is None:
        step = jax.jit(step)
        for i in range(STEPS):
            state, _ = step(state, (xs[i], ys[i]))
        return nnx.to_pure_dict(state.params), None, None
    step = sharding.shard_train_step(step, mesh)
    state = sharding.shard_state(state, mesh)
    first = sharding.shard_batch((xs[0], ys[0]), mesh)
    compiled = step.lower(state, first).compile()
    spec = str(compiled.output_shardings[0].params["up"]["theta"].spec)
    gathers = gathers_of(compiled.as_text(), [(HIDDEN, IN - 1), (HIDDEN, IN)])
    for i in range(STEPS):
        state, _ = step(state, sharding.shard_batch((xs[i], ys[i]), mesh))
    return nnx.to_pure_dict(sharding.to_host(state.params)), spec, gathers


def mesh_mismatch_error() -> str:
    """The message for a state placed on a (2, 4) mesh stepped by a step built for (4, 2) ('' if none)."""
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from gmpjax.layers import GmPDense
    from gmpjax.train import sharding
    from gmpjax.train.engine import init_train_state, make_train_step

    tx = optax.sgd(0.1)
    graphdef, state = init_train_state(GmPDense(IN, HIDDEN, rngs=nnx.Rngs(0), **sharding.column_parallel("gmp")), tx)
    placed = sharding.shard_state(state, sharding.make_mesh("2x4"))
    other = sharding.make_mesh("4x2")
    step = sharding.shard_train_step(make_train_step(graphdef, tx, lambda m, b: jnp.mean(m(b) ** 2)), other)
    try:
        step(placed, sharding.shard_batch(np.ones((BATCH, IN), np.float32), other))
    except ValueError as e:
        return str(e)
    return ""


def main() -> int:
    import jax

    ref, _, _ = run(None)
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}  # noqa: E731
    ref = flat(ref)
    result = {"devices": jax.device_count()}
    for kind in ("auto", "explicit"):
        axis = jax.sharding.AxisType.Auto if kind == "auto" else jax.sharding.AxisType.Explicit
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis, axis))
        params, spec, gathers = run(mesh)
        params = flat(params)
        diff = max(float(np.max(np.abs(params[k] - ref[k]))) for k in ref)
        result[kind] = {"max_abs_diff": diff, "theta_spec": spec, "theta_gathers": gathers}
    result["mesh_mismatch_error"] = mesh_mismatch_error()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
