"""``HostTrainer.fit`` on a tiny GmP regression, for tests/test_trainer.py: train, SIGKILL mid-run, or resume.

Every batch is a pure function of its step, so a resumed run sees the batches an uninterrupted
one would. ``--kill-at N`` SIGKILLs the process right after step N (before that step's
evaluation and checkpoint); ``--out`` writes the final parameters as npz.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal

import numpy as np


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step``: 16 rows of ``x ~ N(0, 1)^3`` and ``y = sin(x1 + x2) - x3 / 2``."""
    x = np.random.default_rng(step).normal(size=(16, 3)).astype(np.float32)
    return x, (np.sin(x[:, :1] + x[:, 1:2]) - x[:, 2:] / 2).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--kill-at", type=int, default=-1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gmpjax.layers import GmPDense, SPDense
    from gmpjax.train.host import HostConfig
    from gmpjax.train.optim import make_optimizer
    from gmpjax.train.plateau import PlateauConfig
    from gmpjax.train.rules import Rules
    from gmpjax.train.sharding import make_data_mesh, shard_batch
    from gmpjax.train.trainer import HostTrainer

    def make_model(key: jax.Array) -> nnx.Module:
        rngs = nnx.Rngs(key)
        return nnx.Sequential(GmPDense(3, 8, rngs=rngs), SPDense(8, 1, activation=None, rngs=rngs))

    def loss(model: nnx.Module, b: tuple) -> jax.Array:
        return jnp.mean((model(b[0]) - b[1]) ** 2)

    def sums(model: nnx.Module, b: tuple) -> dict:
        return {"mse": jnp.sum((model(b[0]) - b[1]) ** 2), "count": jnp.float32(b[0].shape[0])}

    mesh = make_data_mesh()
    trainer = HostTrainer(make_model, make_optimizer("sgd", 0.05), loss, mesh, eval_fn=sums)
    val = shard_batch(batch(10**6), mesh)
    rules = Rules("val_mse", patience=4, restore="always", plateau=PlateauConfig(patience=1, factor=0.5))
    config = HostConfig(num_steps=args.steps, eval_every=3, log_every=2, rules=rules)

    def kill(step: int, state: object, record: dict) -> bool:
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return False

    run = trainer.fit(
        jax.random.key(0),
        lambda start: (shard_batch(batch(s), mesh) for s in itertools.count(start)),
        config,
        args.workdir,
        eval_batches=lambda: itertools.repeat(val),
        resume=args.resume,
        save_every=2,
        callbacks=[kill],
        progress=False,
        config_json={"lr": 0.05},
    )
    if args.out:
        leaves = jax.tree_util.tree_flatten_with_path(run.result.state.params)[0]
        np.savez(args.out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    print(f"done step {run.result.step} resumed_from {run.result.resumed_from} best {run.result.best_step}", flush=True)


if __name__ == "__main__":
    main()
