"""A tiny data-parallel, checkpointed trainer used by tests/test_sharding.py and tests/test_checkpoint.py.

It exercises the whole stack the image experiments use -- ``gmpjax.train.engine``
(pure step), ``gmpjax.train.host`` (the host loop), ``gmpjax.train.sharding`` (mesh, replicated state, sharded
batch, multi-process), ``gmpjax.data.images`` (the grain pipeline: shuffle, flips,
per-process slices, ``--workers`` worker processes) and ``gmpjax.train.checkpoint``
(orbax save/resume of state, data-iterator state and RNG) -- on a small GmP+IMN /
BN conv net and a synthetic 8x8 uint8 image data set, so it runs in seconds on CPU.
Every batch it trains on is printed as ``batch <epoch>:<step> <sha1 of its ids, labels
and pixels> ids=<example ids>`` so that tests can compare the batches of two runs and
the slices that two processes read.

Run it as a script (``python tests/scripts/tiny_trainer.py --workdir /tmp/w --steps 30``)
or call ``main(argv)``, which returns the final parameters as ``{path: np.ndarray}``.
Set ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` for 8 CPU devices.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time

import numpy as np

NUM_EXAMPLES = 96
NUM_CLASSES = 10
IMAGE = (8, 8, 1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="checkpoint directory (no checkpoints if omitted)")
    p.add_argument("--resume", action="store_true", help="restore the latest checkpoint of --workdir")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16, help="global batch size")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=0, help="use the first N global devices (0: all)")
    p.add_argument("--save-every", type=int, default=5)
    p.add_argument("--max-to-keep", type=int, default=3)
    p.add_argument("--step-delay", type=float, default=0.0, help="sleep after each step (to be killed mid-run)")
    p.add_argument(
        "--kill-during-save-at",
        type=int,
        default=-1,
        help="SIGKILL this process while orbax commits the save of this step (all files written to the "
        "tmp directory, not yet renamed); a multiple of --save-every",
    )
    p.add_argument("--out", default=None, help="write the final params (npz) here")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process)")
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="grain worker processes of the data pipeline")
    return p.parse_args(argv)


def make_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``NUM_EXAMPLES`` random uint8 images ``IMAGE`` and integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(NUM_EXAMPLES, *IMAGE), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, size=NUM_EXAMPLES).astype(np.int32)
    return x, y


def make_loader(seed: int, batch_size: int, workers: int):
    """The grain pipeline of the synthetic data: shuffled epochs, random flips, x / 255 - 0.5."""
    from gmpjax.data.images import ArraySource, ImageLoader, make_preprocess

    x, y = make_data(seed)
    pre = make_preprocess("imagenet32", train=True, mean=(0.5,))
    return ImageLoader(ArraySource(x, y), global_batch_size=batch_size, preprocess=pre, seed=seed, workers=workers)


def batch_digest(batch: dict) -> str:
    """sha1 of a batch's example ids, labels and uint8 pixels (to compare the batches of two runs)."""
    h = hashlib.sha1()
    for k in ("index", "label", "image"):
        h.update(np.ascontiguousarray(batch[k]).tobytes())
    return h.hexdigest()[:16]


def make_model(seed: int):
    from flax import nnx

    from gmpjax.layers import SPDense, make_conv, make_dense

    class TinyNet(nnx.Module):
        """GmP+IMN conv -> BN conv -> flatten -> GmP+IMN dense -> SP head."""

        def __init__(self, rngs: nnx.Rngs):
            self.conv1 = make_conv("gmp_imn", IMAGE[-1], 4, (3, 3), rngs=rngs)
            self.conv2 = make_conv("bn", 4, 4, (3, 3), rngs=rngs)
            self.fc = make_dense("gmp_imn", IMAGE[0] * IMAGE[1] * 4, 16, rngs=rngs)
            self.head = SPDense(16, NUM_CLASSES, activation=None, rngs=rngs)

        def __call__(self, x):
            x = self.conv2(self.conv1(x))
            return self.head(self.fc(x.reshape(x.shape[0], -1)))

    return TinyNet(nnx.Rngs(seed))


def kill_in_next_commit() -> None:
    """Make the next orbax commit (tmp dir -> final dir rename) SIGKILL this process instead.

    Test-only hook on orbax internals (``AtomicRenameTemporaryPath.finalize``, a coroutine since about
    orbax-checkpoint 0.11.2x, a plain method before), so a crash in the middle of a save is deterministic
    rather than a race.
    """
    import inspect

    from orbax.checkpoint._src.path import atomicity

    def kill(self) -> None:
        print(f"killing during the commit of {self.get()}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    async def finalize_async(self, *args, **kwargs):
        kill(self)

    def finalize_sync(self, *args, **kwargs):
        kill(self)

    original = atomicity.AtomicRenameTemporaryPath.finalize
    atomicity.AtomicRenameTemporaryPath.finalize = (
        finalize_async if inspect.iscoroutinefunction(original) else finalize_sync
    )


def main(argv=None) -> dict[str, np.ndarray]:
    args = parse_args(argv)
    from gmpjax.train import sharding

    sharding.initialize_distributed(args.coordinator, args.num_processes, args.process_id, initialization_timeout=60)

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    # RBG keys: XLA:CPU compiles them several times faster than threefry (this script is about
    # sharding and checkpoints, not about the random stream); they are checkpointed like any key.
    jax.config.update("jax_default_prng_impl", "rbg")

    from gmpjax.train.checkpoint import Checkpointer, key_from_json, key_to_json
    from gmpjax.train.engine import init_train_state, make_train_step
    from gmpjax.train.host import HostConfig, train

    devices = jax.devices()[: args.devices] if args.devices else None
    mesh = sharding.make_data_mesh(devices)
    rows = sharding.local_batch_slice(args.batch_size, mesh)  # validates divisibility too

    loader = make_loader(args.seed, args.batch_size, args.workers)
    if (rows.start, rows.stop) != (
        loader.process_index * loader.local_batch_size,
        (loader.process_index + 1) * loader.local_batch_size,
    ):
        raise ValueError(f"the devices of this process hold rows {rows} but the loader reads another slice")
    tx = optax.sgd(args.lr, momentum=0.9)
    # one compiled init instead of dozens of eagerly compiled initialiser ops
    graphdef = nnx.split(nnx.eval_shape(lambda: make_model(args.seed)), nnx.Param, ...)[0]
    state = jax.jit(lambda: init_train_state(make_model(args.seed), tx)[1])()

    def loss_fn(model, batch):
        x, y = batch
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    step_fn = sharding.shard_train_step(make_train_step(graphdef, tx, loss_fn), mesh)
    data = loader.iterate()
    rng = jax.random.key(args.seed + 1)

    ckpt = (
        Checkpointer(args.workdir, save_every=args.save_every, max_to_keep=args.max_to_keep) if args.workdir else None
    )
    state = sharding.replicate(state, mesh)
    if args.kill_during_save_at >= 0 and args.kill_during_save_at % args.save_every:
        raise ValueError("--kill-during-save-at must be a multiple of --save-every (a step the loop saves)")

    @jax.jit
    def next_noise(key):
        key, sub = jax.random.split(key)
        return key, 0.05 * jax.random.normal(sub, (args.batch_size, *IMAGE))

    def global_batches():
        nonlocal rng
        while True:
            pos = data.position
            batch = next(data)  # this process's rows of the global batch, from the grain pipeline
            ids = ",".join(str(i) for i in batch["index"])
            print(f"batch {pos['epoch']}:{pos['step']} {batch_digest(batch)} ids={ids}", flush=True)
            rng, noise = next_noise(rng)  # input noise from a checkpointed key, the same on every process
            x = loader.preprocess.finish(batch) + np.asarray(noise)[rows]
            yield sharding.shard_batch((x, batch["label"]), mesh)

    def on_resume(step, extra):
        nonlocal rng
        rng = key_from_json(extra["rng"])
        print(f"resumed from step {step} at data position {data.position}", flush=True)

    def on_step(step, st, rec):
        if ckpt is not None and step == args.kill_during_save_at:
            ckpt.wait()  # earlier saves are committed; the crash hits this step's save (right after this callback)
            kill_in_next_commit()
        elif ckpt is not None and args.kill_during_save_at >= 0 and step == args.kill_during_save_at + 1:
            ckpt.wait()
            print("the commit hook was not reached", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        print(f"step {step}", flush=True)
        if args.step_delay:
            time.sleep(args.step_delay)
        return False

    result = train(
        step_fn,
        None,
        state,
        global_batches(),
        HostConfig(num_steps=args.steps, log_every=0),
        checkpointer=ckpt,
        resume=args.resume,
        data_iterator=data,
        config_json={"seed": args.seed, "batch_size": args.batch_size, "lr": args.lr},
        extra=lambda step: {"rng": key_to_json(rng), "args": vars(args)},
        on_resume=on_resume,
        callbacks=[on_step],
        progress=False,
    )
    state = result.state
    if ckpt is not None:
        ckpt.close()
    data.close()
    params = {
        jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(sharding.to_host(state.params))[0]
    }
    if args.out:
        np.savez(args.out, **params)
    print(
        json.dumps({"done": int(sharding.to_host(state.step)), "process": jax.process_index(), "devices": mesh.size}),
        flush=True,
    )
    return params


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
