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
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.dtype == b.dtype
    assert got["data"] == extra["data"] and got["config"] == extra["config"]
    np.testing.assert_array_equal(jax.random.key_data(key_from_json(got["rng"])), jax.random.key_data(key))
    # the momentum and the IMN running means are really in there (not trivially zero)
    assert any("mean" in p for p, _, _ in tree_signature(restored.rest))
    assert float(jnp.abs(restored.rest["hidden"][0]["imn"]["mean"][...]).max()) > 0


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


def test_abstract_state_keeps_shapes_and_shardings(state):
    abstract = abstract_state(state)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
    assert all(isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None for x in jax.tree.leaves(abstract))


# ------------------------------------------- SIGKILL mid-training and during a save (child processes)
def test_sigkill_and_resume_match_uninterrupted_run(tmp_path):
    """Uninterrupted run == run SIGKILLed mid-training, resumed, killed inside a checkpoint commit, resumed."""
    common = ("--steps", STEPS, "--batch-size", 16, "--save-every", 5)
    ref = childproc.run(childproc.trainer_cmd(*common, "--workdir", tmp_path / "ref", "--out", tmp_path / "ref.npz"),
                        num_devices=8, timeout=240)
    assert ref.returncode == 0, ref.stdout[-3000:]

    work = tmp_path / "run"
    # 1) SIGKILL from outside while training (after step 12 was printed; ~0.3 s per step remain)
    proc = childproc.popen(childproc.trainer_cmd(*common, "--workdir", work, "--step-delay", 0.3), num_devices=8)
    try:
        childproc.wait_for_line(proc, "step 12", timeout=240)
        proc.kill()
        assert proc.wait(timeout=30) == -9
    finally:
        childproc.kill(proc)
    with Checkpointer(work) as ckpt:
        first = ckpt.latest_step()
    assert first is not None and 0 < first < STEPS, f"unexpected checkpoints after the kill: {first}"

    # 2) resume, then die in the middle of saving step 15 (files written, commit not done), keeping only 1 checkpoint
    out = childproc.run(childproc.trainer_cmd(*common, "--workdir", work, "--resume", "--max-to-keep", 1,
                                              "--kill-during-save-at", 15), num_devices=8, timeout=240)
    assert out.returncode == -9, out.stdout[-3000:]
    assert f"resumed from step {first}" in out.stdout
    assert "killing during the commit" in out.stdout, "the crash did not hit the save"
    assert any(p.name.startswith("15.orbax-checkpoint-tmp") for p in work.iterdir()), sorted(os.listdir(work))
    with Checkpointer(work) as ckpt:  # opening cleans the incomplete save up
        survived = ckpt.latest_step()
        assert survived is not None and first <= survived < 15 and 15 not in ckpt.all_steps()
    assert not any("tmp" in p.name for p in work.iterdir())

    # 3) resume from the surviving checkpoint and finish
    out = childproc.run(childproc.trainer_cmd(*common, "--workdir", work, "--resume", "--out", tmp_path / "res.npz"),
                        num_devices=8, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"resumed from step {survived}" in out.stdout
    assert json.loads(out.stdout.strip().splitlines()[-1])["done"] == STEPS
    diff = childproc.max_abs_diff(childproc.load_params(tmp_path / "ref.npz"), childproc.load_params(tmp_path / "res.npz"))
    assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff}"


@pytest.mark.parametrize("make", [lambda: jax.random.key(3), lambda: jax.random.key(3, impl="rbg"),
                                  lambda: jax.random.PRNGKey(3)], ids=["threefry", "rbg", "raw_uint32"])
def test_key_json_round_trip(make):
    key = make()
    back = key_from_json(json.loads(json.dumps(key_to_json(key))))
    assert back.dtype == key.dtype and back.shape == key.shape
    data = (lambda k: jax.random.key_data(k) if jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key) else k)
    np.testing.assert_array_equal(np.asarray(data(back)), np.asarray(data(key)))
