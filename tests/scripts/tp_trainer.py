"""Tensor-parallel equality check used by tests/test_tensor_parallel.py (run with 8 CPU devices).

Trains a Megatron-style GmP MLP (column-parallel GmP+IMN layer, row-parallel SP
layer, SP head) and a small GmP+IMN VGG-6 (convs column parallel, head row
parallel) for ``--steps`` steps (MLP: adamw, VGG: SGD + momentum, both with the
weight-decay mask) on one device and on each ``--meshes`` ("DxM") mesh, and
prints one JSON line ``RESULT {...}`` with, per model and mesh, the max abs
parameter difference to one device and the shardings the compiled step gives
theta and its optimizer moment (adam ``mu`` / momentum ``trace``).

``python tests/scripts/tp_trainer.py --meshes 2x4 4x2`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

IN, HIDDEN, OUT = 12, 32, 10
IMAGE = (8, 8, 3)
BATCH = 16


def make_mlp(rngs):
    from flax import nnx

    from gmpjax.layers import SPDense, make_dense
    from gmpjax.train import sharding

    class MegatronMLP(nnx.Module):
        """IMN -> GmP (column parallel, split over 'model') -> nnx.Linear (row parallel) -> SP head (replicated)."""

        def __init__(self, rngs: nnx.Rngs):
            self.up = make_dense("gmp_imn", IN, HIDDEN, rngs=rngs, **sharding.column_parallel("gmp"))
            self.down = nnx.Linear(HIDDEN, 16, rngs=rngs, **sharding.row_parallel())
            self.head = SPDense(16, OUT, activation=None, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.down(self.up(x))))

    return MegatronMLP(rngs)


def make_vgg(rngs):
    from gmpjax.models import VGG6

    return VGG6(
        OUT, parameterization="gmp_imn", in_channels=IMAGE[-1], widths=(8, 8, 16), model_axis="model", rngs=rngs
    )


def theta_paths(tree) -> list[str]:
    import jax

    return [
        jax.tree_util.keystr(p)
        for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
        if "theta" in jax.tree_util.keystr(p)
    ]


def run(make_model, mesh, steps: int, seed: int = 0):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from gmpjax.train import masked_weight_decay, sharding, weight_decay_mask
    from gmpjax.train.engine import init_train_state, make_train_step

    model = make_model(nnx.Rngs(seed))
    is_mlp = "MegatronMLP" in type(model).__name__
    if is_mlp:  # adamw: both moments must follow theta's sharding
        tx = optax.adamw(1e-3, weight_decay=1e-2, mask=weight_decay_mask)
        moment = lambda opt_state: opt_state[0].mu  # noqa: E731  (chain: scale_by_adam, masked decay, lr)
    else:
        # SGD + momentum with the masked decay (the image experiments' optimizer). adamw on this VGG gives
        # 3e-5 on the (4, 2) mesh: adam divides near-zero gradients by their own magnitude, which amplifies
        # the float summation-order differences of the sharded reductions; SGD's update is linear in them.
        tx = optax.chain(masked_weight_decay(1e-2), optax.sgd(0.05, momentum=0.9))
        moment = lambda opt_state: opt_state[1][0].trace  # noqa: E731
    graphdef, state = init_train_state(model, tx)
    rng = np.random.default_rng(seed)
    shape = (BATCH, IN) if is_mlp else (BATCH, *IMAGE)
    xs = rng.normal(size=(max(steps, 1), *shape)).astype(np.float32) + 0.3
    ys = rng.integers(0, OUT, size=(max(steps, 1), BATCH)).astype(np.int32)

    def loss_fn(model, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    step = sharding.shard_train_step(make_train_step(graphdef, tx, loss_fn), mesh)
    state = sharding.shard_state(state, mesh)
    init = {
        jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(sharding.to_host(state.params))[0]
    }
    first = sharding.shard_batch((jnp.asarray(xs[0]), jnp.asarray(ys[0])), mesh)
    compiled = step.lower(state, first).compile()
    out_state_sh = compiled.output_shardings[0]
    for i in range(steps):
        state, _ = step(state, sharding.shard_batch((xs[i], ys[i]), mesh))
    flat = {
        jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(sharding.to_host(state.params))[0]
    }
    # shardings of theta: compiled output shardings (params and the adam moment mu) and the actual output array
    compiled_params = {
        jax.tree_util.keystr(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(out_state_sh.params)[0]
    }
    mu = moment(out_state_sh.opt_state)
    compiled_mu = {jax.tree_util.keystr(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(mu)[0]}
    actual = {
        jax.tree_util.keystr(p): (a.sharding.spec, a.addressable_shards[0].data.shape, a.shape)
        for p, a in jax.tree_util.tree_flatten_with_path(state.params)[0]
    }
    thetas = theta_paths(state.params)
    info = {
        k: {
            "compiled": str(compiled_params[k]),
            "compiled_mu": str(compiled_mu.get(k)),
            "actual": str(actual[k][0]),
            "shard_shape": list(actual[k][1]),
            "shape": list(actual[k][2]),
        }
        for k in thetas
    }
    return init, flat, info


def indivisible_error() -> str:
    """The message ``state_shardings`` gives for 6 units split over a model axis of 4 ('' if none)."""
    from flax import nnx

    from gmpjax.layers import GmPDense
    from gmpjax.train import sharding

    state = nnx.state(GmPDense(3, 6, rngs=nnx.Rngs(0), **sharding.column_parallel("gmp")))
    try:
        sharding.state_shardings(state, sharding.make_mesh("2x4"))
    except ValueError as e:
        return str(e)
    return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meshes", nargs="+", default=["2x4", "4x2"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=["mlp", "vgg"])
    args = ap.parse_args(argv)

    # XLA:CPU backend optimisation level 0 halves this script's compile time; the single-device reference and
    # the sharded runs are compiled with the same flags, so the comparison is unaffected.
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    import jax

    jax.config.update("jax_default_prng_impl", "rbg")
    from gmpjax.train import sharding

    makers = {"mlp": make_mlp, "vgg": make_vgg}
    result: dict = {"devices": jax.device_count()}
    for name in args.models:
        init, ref, _ = run(makers[name], sharding.make_mesh((1, 1), devices=jax.devices()[:1]), args.steps)
        # the training did something: parameters moved away from their initial values
        result[name] = {"moved": max(float(np.max(np.abs(ref[k] - init[k]))) for k in ref)}
        for m in args.meshes:
            _, params, info = run(makers[name], sharding.make_mesh(m), args.steps)
            diffs = {k: float(np.max(np.abs(params[k].astype(np.float64) - ref[k]))) for k in ref}
            worst = max(diffs, key=diffs.get)
            result[name][m] = {"max_abs_diff": diffs[worst], "worst": worst, "theta": info, "num_params": len(params)}
    result["indivisible_error"] = indivisible_error()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
