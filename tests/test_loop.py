"""The compiled fit loop (gmpjax.train.loop) and the one plateau rule (gmpjax.train.plateau)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax.layers import GmPDense
from gmpjax.train.engine import init_replicas, init_train_state, make_eval_step, make_train_step
from gmpjax.train.loop import LoopConfig, fit, num_batches, sweep
from gmpjax.train.plateau import PlateauConfig, plateau_init, plateau_update
from gmpjax.train.rules import Rules

# --------------------------------------------------------------------------- Keras references (host floats)


def keras_reduce_on_plateau(values, *, patience, factor, min_delta, lr=1.0):
    """Keras ReduceLROnPlateau(mode="min", cooldown=0, min_lr=0) as written in its documentation: lr per check."""
    best, wait, out = np.inf, 0, []
    for v in values:
        if v < best - min_delta:
            best, wait = v, 0
        else:
            wait += 1
            if wait >= patience:
                lr, wait = lr * factor, 0
        out.append(lr)
    return out


def keras_early_stopping(values, *, patience, min_delta=0.0):
    """Keras EarlyStopping(mode="min"): (epochs run, best epoch 1-based, stopped)."""
    best, wait, best_epoch = np.inf, 0, 0
    for epoch, v in enumerate(values, 1):
        wait += 1
        if v < best - min_delta:
            best, best_epoch, wait = v, epoch, 0
            continue
        if wait >= patience:
            return epoch, best_epoch, True
    return len(values), best_epoch, False


@pytest.mark.parametrize("min_delta", [0.0, 1e-4, 0.05])
@pytest.mark.parametrize("patience", [1, 3])
def test_plateau_is_keras_reduce_on_plateau(min_delta, patience):
    rng = np.random.default_rng(patience)
    # a noisy decreasing curve with ties and flat stretches
    values = np.round(np.maximum.accumulate(rng.uniform(0, 1, 60))[::-1] + rng.choice([0, 0, 1e-4, 0.1], 60), 4)
    values = values.astype(np.float32)
    p, ours = plateau_init(), []
    for v in values:
        p = plateau_update(p, jnp.asarray(v), patience=patience, factor=0.5, min_delta=min_delta)
        ours.append(float(p.scale))
    ref = keras_reduce_on_plateau([float(v) for v in values], patience=patience, factor=0.5, min_delta=min_delta)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert min(ref) < 1.0  # the sequence does trigger reductions


def test_plateau_rejects_bad_settings():
    with pytest.raises(ValueError, match="patience"):
        plateau_update(plateau_init(), 1.0, patience=0)
    with pytest.raises(ValueError, match="factor"):
        PlateauConfig(patience=2, factor=1.5)


# --------------------------------------------------------------------------- a tiny regression problem


def _mse(model, batch):
    x, y = batch
    return jnp.mean((model(x) - y) ** 2)


def _problem(n=40, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(k1, (n, 3))
    y = jnp.sin(x @ jnp.array([[1.0], [-2.0], [0.5]])) + 0.1 * jax.random.normal(k2, (n, 1))
    return {"train": (x[: n // 2], y[: n // 2]), "val": (x[n // 2 :], y[n // 2 :])}


def _setup(seed=0, lr=0.05):
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
    model = nnx.Sequential(GmPDense(3, 8, rngs=nnx.Rngs(seed)), nnx.Linear(8, 1, rngs=nnx.Rngs(seed + 1)))
    graphdef, state = init_train_state(model, tx)
    return graphdef, tx, state


def _fns(graphdef, tx):
    return make_train_step(graphdef, tx, _mse), make_eval_step(graphdef, lambda m, b: {"mse": _mse(m, b)})


@pytest.mark.parametrize(
    "batching, bs, expect", [("full", None, (1, 10)), ("drop", 4, (2, 4)), ("wrap", 4, (3, 4)), ("even", 4, (3, 3))]
)
def test_num_batches(batching, bs, expect):
    assert num_batches(LoopConfig(5, batching, bs), 10) == expect


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        LoopConfig(5, "drop")
    with pytest.raises(ValueError, match="max_epochs"):
        LoopConfig(0)
    with pytest.raises(ValueError, match="restore"):
        LoopConfig(5, rules=Rules(restore="sometimes"))  # type: ignore[arg-type]


def test_missing_split_and_metric_are_clear_errors():
    graphdef, tx, state = _setup()
    step, ev = _fns(graphdef, tx)
    data = _problem()
    with pytest.raises(ValueError, match="monitor_split='test'"):
        fit(
            step,
            ev,
            state,
            data,
            LoopConfig(3, monitor_split="test", rules=Rules(monitor="mse", restore="always")),
            key=jax.random.key(0),
        )
    with pytest.raises(ValueError, match="monitor='acc'"):
        fit(step, ev, state, data, LoopConfig(3, rules=Rules(monitor="acc", restore="always")), key=jax.random.key(0))


def test_full_batch_loop_equals_hand_written_steps():
    graphdef, tx, state = _setup()
    step, ev = _fns(graphdef, tx)
    data = _problem()
    out = jax.jit(
        lambda s: fit(
            step, ev, s, data, LoopConfig(7, rules=Rules(monitor="mse", restore="never")), key=jax.random.key(0)
        )
    )(state)
    ref, vals = state, []
    jstep, jev = jax.jit(step), jax.jit(ev)
    for _ in range(7):
        ref, _ = jstep(ref, data["train"])
        vals.append(float(jev(ref, data["val"])["mse"]))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out.state.params, ref.params)
    np.testing.assert_allclose(np.asarray(out.history["monitor"]), vals, rtol=1e-5)
    assert int(out.epochs) == 7 and int(out.best_epoch) == int(np.argmin(vals)) + 1


@pytest.mark.parametrize("batching", ["drop", "wrap", "even"])
def test_each_epoch_is_a_permutation_of_the_rows(batching):
    """The tracking hook sees each step's batch: rows used per epoch follow the batching policy."""
    n, bs = 10, 4
    x = jnp.arange(n, dtype=jnp.float32)[:, None]
    graphdef, tx, state = _setup()

    def step(s, batch):
        return s.replace(step=s.step + 1), {"loss": jnp.zeros(()), "rows": batch[0][:, 0]}

    seen = {}

    def track(prev, new):
        return {"step": new.step}

    cfg = LoopConfig(3, batching, bs, monitor_split=None, rules=Rules(monitor="loss", restore="always"))
    from gmpjax.train.loop import _epoch_indices

    for ep in range(3):
        idx = np.asarray(_epoch_indices(cfg, jax.random.fold_in(jax.random.key(0), ep), n))
        seen[ep] = idx
        flat = idx.reshape(-1)
        if batching == "wrap":
            assert set(flat.tolist()) == set(range(n)) and idx.shape == (3, 4)
        else:
            assert len(set(flat.tolist())) == flat.size  # no row twice
            assert flat.size == {"drop": 8, "even": 9}[batching]
    out = fit(step, None, state, {"train": (x,)}, cfg, key=jax.random.key(0), track=track)
    steps = np.asarray(out.history["track"]["step"])
    assert steps.shape == (3, num_batches(cfg, n)[0]) and steps.reshape(-1).tolist() == list(range(1, steps.size + 1))
    assert not np.array_equal(seen[0], seen[1])  # a fresh permutation each epoch


def test_early_stopping_matches_keras_and_restore_rules():
    graphdef, tx, state = _setup(lr=0.3)
    step, ev = _fns(graphdef, tx)
    data = _problem()
    runs = {}
    for restore in ("always", "if_stopped", "never"):
        cfg = LoopConfig(200, "drop", 5, rules=Rules(monitor="mse", patience=4, restore=restore))
        runs[restore] = jax.jit(lambda s, c=cfg: fit(step, ev, s, data, c, key=jax.random.key(3)))(state)
    out = runs["always"]
    hist = np.asarray(out.history["monitor"])
    epochs = int(out.epochs)
    assert np.all(np.isnan(hist[epochs:])) and np.all(np.isfinite(hist[:epochs]))
    ref_epochs, ref_best, ref_stopped = keras_early_stopping(hist[:epochs].tolist(), patience=4)
    assert (epochs, int(out.best_epoch), bool(out.stopped)) == (ref_epochs, ref_best, ref_stopped)
    assert bool(out.stopped)
    np.testing.assert_allclose(float(out.best_value), hist[ref_best - 1], rtol=1e-6)
    best_val = float(ev(out.state, data["val"])["mse"])
    np.testing.assert_allclose(best_val, float(out.best_value), rtol=1e-5)
    # stopped -> if_stopped restores too; never keeps the last parameters
    jax.tree.map(np.testing.assert_array_equal, runs["if_stopped"].state.params, out.state.params)
    jax.tree.map(np.testing.assert_array_equal, runs["never"].state.params, out.last.params)


def test_if_stopped_keeps_last_params_when_patience_never_ran_out():
    graphdef, tx, state = _setup(lr=0.05)
    step, ev = _fns(graphdef, tx)
    data = _problem()
    out = fit(
        step,
        ev,
        state,
        data,
        LoopConfig(5, rules=Rules(monitor="mse", patience=50, restore="if_stopped")),
        key=jax.random.key(0),
    )
    assert not bool(out.stopped) and int(out.epochs) == 5
    jax.tree.map(np.testing.assert_array_equal, out.state.params, out.last.params)


def test_plateau_in_the_loop_scales_the_learning_rate():
    graphdef, tx, state = _setup(lr=0.2)
    step, ev = _fns(graphdef, tx)
    data = _problem()
    cfg = LoopConfig(60, rules=Rules(monitor="mse", plateau=PlateauConfig(patience=2, factor=0.5), restore="always"))
    out = jax.jit(lambda s: fit(step, ev, s, data, cfg, key=jax.random.key(0), lr=0.2))(state)
    hist = np.asarray(out.history["monitor"]).tolist()
    ref = keras_reduce_on_plateau(hist, patience=2, factor=0.5, min_delta=0.0, lr=0.2)
    np.testing.assert_allclose(np.asarray(out.history["lr"]), ref, rtol=1e-6)
    assert ref[-1] < 0.2
    np.testing.assert_allclose(float(out.lr_scale), ref[-1] / 0.2, rtol=1e-6)


def test_mode_max_and_train_metric_monitor():
    graphdef, tx, state = _setup()
    step, ev = _fns(graphdef, tx)
    data = _problem()
    neg = make_eval_step(graphdef, lambda m, b: {"score": -_mse(m, b)})
    a = fit(
        step,
        ev,
        state,
        data,
        LoopConfig(20, rules=Rules(monitor="mse", patience=3, restore="always")),
        key=jax.random.key(0),
    )
    b = fit(
        step,
        neg,
        state,
        data,
        LoopConfig(20, rules=Rules(monitor="score", mode="max", patience=3, restore="always")),
        key=jax.random.key(0),
    )
    assert int(a.epochs) == int(b.epochs) and int(a.best_epoch) == int(b.best_epoch)
    np.testing.assert_allclose(float(b.best_value), -float(a.best_value), rtol=1e-6)
    c = fit(
        step,
        None,
        state,
        data,
        LoopConfig(20, monitor_split=None, rules=Rules(monitor="loss", restore="always")),
        key=jax.random.key(0),
    )
    np.testing.assert_allclose(np.asarray(c.history["monitor"]), np.asarray(c.history["train_loss"]))


def _replicas(R=6):
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)

    def make(key):
        return nnx.Sequential(GmPDense(3, 8, rngs=nnx.Rngs(key)), nnx.Linear(8, 1, rngs=nnx.Rngs(key)))

    keys = jax.random.split(jax.random.key(0), R)
    graphdef, states = init_replicas(make, keys, tx)
    return graphdef, tx, states, keys


@pytest.mark.filterwarnings("ignore")
def test_sweep_equals_fit_per_replica_and_segments_change_nothing():
    with jax.numpy_dtype_promotion("standard"):  # optax.adam's bias correction mixes int and float
        R = 6
        graphdef, tx, states, keys = _replicas(R)
        step, ev = _fns(graphdef, tx)
        data = _problem(60)
        lrs = jnp.array([0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
        cfg = LoopConfig(
            24, "even", 8, rules=Rules(monitor="mse", patience=3, plateau=PlateauConfig(2, 0.5), restore="always")
        )
        whole = sweep(step, ev, states, data, cfg, keys=keys, lrs=lrs, data_axis=None)
        seg = sweep(step, ev, states, data, cfg, keys=keys, lrs=lrs, data_axis=None, segment=5, min_bucket=3)
        epochs = np.asarray(whole.epochs)
        assert len(set(epochs.tolist())) > 1  # replicas stop at different epochs, so compaction is exercised
        np.testing.assert_array_equal(np.asarray(seg.epochs), epochs)
        np.testing.assert_array_equal(np.asarray(seg.best_epoch), np.asarray(whole.best_epoch))
        # a smaller batch of replicas may round differently in XLA's batched matmuls: equal to float32 rounding
        for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(seg), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        for r in (4,):
            one = jax.tree.map(lambda a, r=r: a[r], states)
            alone = jax.jit(lambda s, k, lr: fit(step, ev, s, data, cfg, key=k, lr=lr))(one, keys[r], lrs[r])
            assert int(alone.epochs) == int(whole.epochs[r])
            np.testing.assert_allclose(
                np.asarray(alone.history["monitor"]), np.asarray(whole.history["monitor"][r]), rtol=2e-5
            )


def test_sweep_with_per_replica_data():
    with jax.numpy_dtype_promotion("standard"):
        graphdef, tx, states, keys = _replicas(3)
        step, ev = _fns(graphdef, tx)
        splits = [_problem(40, seed=s) for s in range(3)]
        data = jax.tree.map(lambda *a: jnp.stack(a), *splits)
        cfg = LoopConfig(4, rules=Rules(monitor="mse", restore="always"))
        out = sweep(step, ev, states, data, cfg, keys=keys)
        one = jax.tree.map(lambda a: a[2], states)
        alone = fit(step, ev, one, splits[2], cfg, key=keys[2])
        np.testing.assert_allclose(
            np.asarray(out.history["monitor"][2]), np.asarray(alone.history["monitor"]), rtol=2e-5
        )


def test_stopped_replicas_are_not_changed_by_later_epochs():
    """Under vmap the loop keeps going for the others; a stopped replica's state and history stay as they were."""
    with jax.numpy_dtype_promotion("standard"):
        graphdef, tx, states, keys = _replicas(4)
        step, ev = _fns(graphdef, tx)
        data = _problem(60)
        lrs = jnp.array([1.0, 0.003, 0.003, 0.003])
        short = LoopConfig(30, rules=Rules(monitor="mse", patience=2, restore="never"))
        out = sweep(step, ev, states, data, short, keys=keys, lrs=lrs, data_axis=None)
        e = np.asarray(out.epochs)
        assert e[0] < e[1:].max()
        alone = fit(step, ev, jax.tree.map(lambda a: a[0], states), data, short, key=keys[0], lr=lrs[0])
        # Replica 0 takes Adam steps at lr 1.0, which amplify the float rounding differences between the batched and
        # the unbatched matmuls to 3e-6 (tiled, cumprod u) .. 9e-6 (native u), and to 7e-4 with the XLA of the
        # dependency floors (scripts/lowest_versions.sh). One more epoch would move a parameter by about 0.4 (40x).
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-2, atol=1e-2), out.state.params, alone.state.params
        )


def test_sweep_chunks_and_data_index_give_each_replica_its_own_fit():
    with jax.numpy_dtype_promotion("standard"):
        graphdef, tx, states, keys = _replicas(3)
        step, ev = _fns(graphdef, tx)
        splits = [_problem(40, seed=s) for s in range(2)]
        data = jax.tree.map(lambda *a: jnp.stack(a), *splits)  # (S=2, ...)
        idx = jnp.array([1, 0, 1])
        cfg = LoopConfig(12, "even", 6, rules=Rules(monitor="mse", patience=2, restore="always"))
        out = sweep(step, ev, states, data, cfg, keys=keys, data_index=idx, chunk=2)  # batches [0, 1], [2, 2]
        assert out.epochs.shape == (3,)
        for r in range(3):
            one = jax.tree.map(lambda a, r=r: a[r], states)
            alone = fit(step, ev, one, splits[int(idx[r])], cfg, key=keys[r])
            assert int(alone.epochs) == int(out.epochs[r])
            np.testing.assert_allclose(
                np.asarray(out.history["monitor"][r]), np.asarray(alone.history["monitor"]), rtol=2e-5
            )
        with pytest.raises(ValueError, match="chunk or segment"):
            sweep(step, ev, states, data, cfg, keys=keys, data_index=idx, chunk=2, segment=3)
