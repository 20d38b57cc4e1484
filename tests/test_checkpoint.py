"""Orbax checkpoints: bit-exact round trip, kill-and-resume, kill during a save, clear errors."""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import childproc  # noqa: E402

from gmpjax.models.mlp import MLP  # noqa: E402
from gmpjax.train.checkpoint import (  # noqa: E402
    Checkpointer,
    CheckpointError,
    abstract_state,
    key_from_json,
    key_to_json,
    tree_signature,
)
from gmpjax.train.engine import init_train_state, make_train_step  # noqa: E402

STEPS = 20
SPE = 96 // 16  # tiny_trainer: 96 examples, batch 16 -> steps per epoch
# orbax's failed read of a damaged checkpoint can leave a callback on its closed asyncio loop
# ("Event loop is closed", reported later as an unraisable exception); it is harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


TX = optax.sgd(0.1, momentum=0.9)


def _model(hidden=(6,), parameterization="gmp_imn"):
    # an RBG key: much faster to compile on CPU than the default threefry
    return MLP(3, hidden, 2, parameterization=parameterization, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))


def _abstract(**kw):
    """Abstract TrainState of another model (shapes only, nothing compiled)."""
    return abstract_state(jax.eval_shape(lambda: init_train_state(_model(**kw), TX)[1]))


def _trained_state():
    """A TrainState after two SGD+momentum steps (non-trivial params, IMN means and momentum)."""
    tx = TX
    graphdef = nnx.split(nnx.eval_shape(_model), nnx.Param, ...)[0]
    state = jax.jit(lambda: init_train_state(_model(), tx)[1])()
    step = jax.jit(make_train_step(graphdef, tx, lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)))
    x = jax.random.normal(jax.random.key(1), (8, 3))
    for _ in range(2):
        state, _ = step(state, (x, jnp.ones((8, 2))))
    return state


@pytest.fixture(scope="module")
def state():
    return _trained_state()


def test_round_trip_is_bit_exact(state, tmp_path):
    key = jax.random.key(7, impl="rbg")
    extra = {"data": {"epoch": 3, "index": 48}, "rng": key_to_json(key), "config": {"lr": 0.1}}
    with Checkpointer(tmp_path / "ck", save_every=1) as ckpt:
        assert ckpt.save(2, state, extra)
        ckpt.wait()
        restored, got = ckpt.restore_latest(abstract_state(state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.dtype == b.dtype
    assert got["data"] == extra["data"] and got["config"] == extra["config"]
    np.testing.assert_array_equal(jax.random.key_data(key_from_json(got["rng"])), jax.random.key_data(key))
    # the momentum and the IMN running means are really in there (not trivially zero)
    assert any("mean" in p for p, _, _ in tree_signature(restored.rest))
    assert float(jnp.abs(restored.rest["hidden"][0]["imn"]["mean"][...]).max()) > 0


def test_restore_params_without_the_model(state, tmp_path):
    """``restore_params`` reads the parameters of any step back from the checkpoint's own metadata."""
    with Checkpointer(tmp_path, max_to_keep=None) as ckpt:
        with pytest.raises(CheckpointError, match="no complete checkpoint"):
            ckpt.restore_params()
        ckpt.save(1, state, {})
        ckpt.wait()
        with pytest.raises(CheckpointError, match="no best step"):
            ckpt.restore_params(best=True)
        ckpt.save(2, state, {}, best=0.5)
        ckpt.wait()
        want = jax.tree.leaves(state.params)
        for got in (ckpt.restore_params(1), ckpt.restore_params(), ckpt.restore_params(best=True)):
            assert isinstance(got, dict) and all(isinstance(x, np.ndarray) for x in jax.tree.leaves(got))
            chex.assert_trees_all_equal(jax.tree.leaves(got), [np.asarray(x) for x in want])
        with pytest.raises(ValueError, match="either step or best"):
            ckpt.restore_params(1, best=True)
        with pytest.raises(CheckpointError, match="step 3"):
            ckpt.restore_params(3)


def test_best_step_is_kept_beyond_max_to_keep(state, tmp_path):
    """orbax's best-step tracking: the step saved with the lowest ``best=`` survives ``max_to_keep``."""
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step, value in [(1, 3.0), (2, 1.0), (3, None), (4, 2.0), (5, None)]:
            ckpt.save(step, state, {}, best=value)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5] and ckpt.best_step() == 2
        with pytest.raises(ValueError, match="finite"):
            ckpt.save(6, state, {}, best=float("nan"))
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:  # the ranking is read back from disk
        assert ckpt.best_step() == 2


def test_save_every_max_to_keep_and_empty_dir(state, tmp_path):
    with Checkpointer(tmp_path, save_every=3, max_to_keep=2) as ckpt:
        assert ckpt.restore_latest(abstract_state(state)) is None and ckpt.latest_step() is None
        saved = [s for s in range(1, 11) if ckpt.save(s, state, {"s": s})]
        assert ckpt.save(10, state, {"s": 10}, force=True)
        assert not ckpt.save(10, state, {}, force=True)  # already saved
        ckpt.wait()
        assert saved == [3, 6, 9] and ckpt.all_steps() == [9, 10]
        assert ckpt.restore(9, state)[1] == {"s": 9}


def test_incompatible_checkpoint_names_directory_and_fix(state, tmp_path):
    with Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, state, {})
        ckpt.wait()
        for other in (_abstract(hidden=(7,)), _abstract(parameterization="sp")):
            with pytest.raises(CheckpointError) as err:
                ckpt.restore_latest(other)
            msg = str(err.value)
            assert str(tmp_path / "run" / "1") in msg and "--workdir" in msg and "does not match" in msg
        with pytest.raises(CheckpointError, match="no complete checkpoint for step 5"):
            ckpt.restore(5, state)


@pytest.mark.parametrize("damage", ["state_data", "meta"])
def test_corrupt_checkpoint_clear_error(state, tmp_path, damage):
    with Checkpointer(tmp_path, max_to_keep=None) as ckpt:
        ckpt.save(1, state, {})
        ckpt.save(2, state, {})
        ckpt.wait()
    step_dir = tmp_path / "2"
    if damage == "state_data":
        for root, _, files in os.walk(step_dir / "state"):
            for f in files:
                if f != "commit_success.txt" and not f.startswith("_"):
                    Path(root, f).write_bytes(b"garbage")
    else:
        shutil.rmtree(step_dir / "meta")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(CheckpointError) as err:
            ckpt.restore_latest(abstract_state(state))
    msg = str(err.value)
    assert "corrupt" in msg and str(step_dir) in msg and "resume from step 1" in msg
    with Checkpointer(tmp_path) as ckpt:  # the previous step is still fine
        restored, _ = ckpt.restore(1, abstract_state(state))
    np.testing.assert_array_equal(np.asarray(restored.step), np.asarray(state.step))
    gc.collect()


def test_bad_arguments(state, tmp_path):
    with pytest.raises(ValueError, match="save_every"):
        Checkpointer(tmp_path, save_every=0)
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpointer(tmp_path / "file")
    with Checkpointer(tmp_path / "ok") as ckpt:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            ckpt.save(1, state, {"a": np.ones(2)})
        with pytest.raises(TypeError, match="must be a dict"):
            ckpt.save(1, state, [1])


def test_data_iterator_state_round_trip(state, tmp_path):
    """The grain iterator's state goes into the same step (item ``data``) and is set back on restore."""
    pytest.importorskip("grain")
    from gmpjax.data import images as im

    src = im.digits_source("train", 8)

    def loader(batch=32):
        return im.ImageLoader(
            src,
            global_batch_size=batch,
            preprocess=im.make_preprocess("imagenet32", train=True),
            process_index=0,
            process_count=1,
            workers=0,
            seed=4,
        )

    it = loader().iterate()
    for _ in range(50):  # 44 steps per epoch: into epoch 1
        next(it)
    with Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(50, state, {"note": 1}, data_iterator=it)
        nxt = next(it)  # consumed after the save: not in the checkpoint
        ckpt.save(51, state, {}, force=True)  # saved without the iterator
        ckpt.wait()
        fresh = loader().iterate()
        _, extra = ckpt.restore(50, abstract_state(state), data_iterator=fresh)
        assert extra == {"note": 1} and fresh.position == {"epoch": 1, "step": 6}
        np.testing.assert_array_equal(next(fresh)["image"], nxt["image"])
        with pytest.raises(CheckpointError, match="no data-iterator state"):
            ckpt.restore(51, abstract_state(state), data_iterator=loader().iterate())
        with pytest.raises(CheckpointError, match="global_batch_size 32 vs 16"):
            ckpt.restore(50, abstract_state(state), data_iterator=loader(16).iterate())
        with pytest.raises(TypeError, match="data_iterator"):
            ckpt.save(52, state, {}, data_iterator=[1, 2])
    fresh.close()
    it.close()


def test_abstract_state_keeps_shapes_and_shardings(state):
    abstract = abstract_state(state)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
    assert all(isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None for x in jax.tree.leaves(abstract))


# ------------------------------------------- SIGKILL mid-training and during a save (child processes)
def _batches(stdout: str) -> dict[str, str]:
    """``{position: digest}`` of the ``batch <epoch>:<step> <sha1>`` lines a tiny_trainer run printed."""
    return dict(line.split()[1:3] for line in stdout.splitlines() if line.startswith("batch "))


def test_sigkill_and_resume_match_uninterrupted_run(tmp_path):
    """Uninterrupted run == run SIGKILLed mid-training, resumed, killed inside a checkpoint commit, resumed.

    The interrupted runs load with 2 grain worker processes, the reference in-process: every batch
    after each resume is bitwise the one the uninterrupted run trained on at that position.
    """
    common = ("--steps", STEPS, "--batch-size", 16, "--save-every", 5)
    ref = childproc.run(
        childproc.trainer_cmd(*common, "--workdir", tmp_path / "ref", "--out", tmp_path / "ref.npz"),
        num_devices=8,
        timeout=240,
    )
    assert ref.returncode == 0, ref.stdout[-3000:]
    ref_batches = _batches(ref.stdout)
    assert len(ref_batches) == STEPS and len(set(ref_batches.values())) == STEPS

    work = tmp_path / "run"
    workers = ("--workers", 2)
    # 1) SIGKILL from outside while training (after step 12 was printed; ~0.3 s per step remain)
    proc = childproc.popen(
        childproc.trainer_cmd(*common, *workers, "--workdir", work, "--step-delay", 0.3), num_devices=8
    )
    try:
        lines = childproc.wait_for_line(proc, "step 12", timeout=240)
        proc.kill()
        assert proc.wait(timeout=30) == -9
    finally:
        childproc.kill(proc)
    with Checkpointer(work) as ckpt:
        first = ckpt.latest_step()
    assert first is not None and 0 < first < STEPS, f"unexpected checkpoints after the kill: {first}"

    seen = _batches("".join(lines))
    assert seen and all(ref_batches[k] == v for k, v in seen.items()), "2 workers read other batches than 0"

    # 2) resume, then die in the middle of saving step 15 (files written, commit not done), keeping only 1 checkpoint
    out = childproc.run(
        childproc.trainer_cmd(
            *common, *workers, "--workdir", work, "--resume", "--max-to-keep", 1, "--kill-during-save-at", 15
        ),
        num_devices=8,
        timeout=240,
    )
    assert out.returncode == -9, out.stdout[-3000:]
    position = {"epoch": first // SPE, "step": first % SPE}
    assert f"resumed from step {first} at data position {position}" in out.stdout
    resumed = _batches(out.stdout)
    assert f"{first // SPE}:{first % SPE}" in resumed and all(ref_batches[k] == v for k, v in resumed.items())
    assert "killing during the commit" in out.stdout, "the crash did not hit the save"
    assert any(p.name.startswith("15.orbax-checkpoint-tmp") for p in work.iterdir()), sorted(os.listdir(work))
    with Checkpointer(work) as ckpt:  # the incomplete save is not a step
        survived = ckpt.latest_step()
        assert survived is not None and first <= survived < 15 and 15 not in ckpt.all_steps()

    # 3) resume from the surviving checkpoint and finish
    out = childproc.run(
        childproc.trainer_cmd(*common, *workers, "--workdir", work, "--resume", "--out", tmp_path / "res.npz"),
        num_devices=8,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"resumed from step {survived}" in out.stdout
    resumed = _batches(out.stdout)
    assert len(resumed) == STEPS - survived and all(ref_batches[k] == v for k, v in resumed.items())
    assert json.loads([ln for ln in out.stdout.splitlines() if ln.startswith('{"done"')][-1])["done"] == STEPS
    assert not any("tmp" in p.name for p in work.iterdir()), "the next run did not clean the incomplete save up"
    diff = childproc.max_abs_diff(
        childproc.load_params(tmp_path / "ref.npz"), childproc.load_params(tmp_path / "res.npz")
    )
    assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff}"


@pytest.mark.parametrize(
    "make",
    [lambda: jax.random.key(3), lambda: jax.random.key(3, impl="rbg"), lambda: jax.random.PRNGKey(3)],
    ids=["threefry", "rbg", "raw_uint32"],
)
def test_key_json_round_trip(make):
    key = make()
    back = key_from_json(json.loads(json.dumps(key_to_json(key))))
    assert back.dtype == key.dtype and back.shape == key.shape

    def data(k):
        return jax.random.key_data(k) if jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key) else k

    np.testing.assert_array_equal(np.asarray(data(back)), np.asarray(data(key)))
