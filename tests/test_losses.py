"""gmpjax.train.losses against numpy and optax on random inputs (sums for the host trainer's evaluation included),
and the replica trainer's argument errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax.train import losses as L
from gmpjax.train.host import sum_batches
from gmpjax.train.loop import LoopConfig
from gmpjax.train.replicas import replica_grid, train_replicas
from gmpjax.train.rules import Rules
from gmpjax.train.trainer import mean_metrics


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_regression_losses_match_numpy(rng):
    p, t = rng.normal(size=(17, 3)).astype(np.float32), rng.normal(size=(17, 3)).astype(np.float32)
    np.testing.assert_allclose(float(L.mse(p, t)), np.mean((p - t) ** 2), rtol=1e-6)
    np.testing.assert_allclose(float(L.mae(p, t)), np.mean(np.abs(p - t)), rtol=1e-6)


def test_bce_matches_the_logistic_formula(rng):
    z, y = rng.normal(size=40) * 4, rng.integers(0, 2, 40).astype(np.float64)
    ref = np.mean(np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0) - z * y)  # stable log(1 + e^z) - z y
    np.testing.assert_allclose(float(L.bce(jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32))), ref, rtol=1e-5)


def test_xent_accuracy_and_top_k_match_numpy_and_optax(rng):
    logits, y = rng.normal(size=(50, 7)).astype(np.float32), rng.integers(0, 7, 50)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(float(L.xent(logits, y)), -np.mean(logp[np.arange(50), y]), rtol=1e-5)
    np.testing.assert_allclose(float(L.accuracy(logits, y)), np.mean(logits.argmax(1) == y))
    for k in (1, 3, 7):
        ref = np.mean([y[i] in np.argsort(-logits[i])[:k] for i in range(50)])
        np.testing.assert_allclose(float(L.top_k_accuracy(logits, y, k)), ref)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        L.top_k_accuracy(logits, y, 0)


def test_binary_accuracy_and_on_batch():
    z, y = jnp.array([0.5, -2.0, 3.0, -0.1]), jnp.array([1, 0, 0, 1])
    assert float(L.accuracy(z, y)) == 0.5
    model = lambda x: jnp.concatenate([x, -x], axis=1)  # noqa: E731
    batch = (jnp.array([[1.0], [2.0]]), jnp.array([1.0, 1.0]))
    assert float(L.on_batch(L.mse, squeeze=True)(model, batch)) == 0.5
    assert L.on_batch({"mae": L.mae}, squeeze=True)(model, batch) == {"mae": pytest.approx(0.5)}


def test_train_replicas_checks_its_arguments_and_takes_built_states():
    x = jax.random.normal(jax.random.key(0), (16, 2))
    data, cfg = {"train": (x, x[:, :1])}, LoopConfig(3, monitor_split=None, rules=Rules(monitor="loss"))
    make = lambda k: nnx.Linear(2, 1, rngs=nnx.Rngs(k))  # noqa: E731
    keys = jax.random.split(jax.random.key(1), 2)
    with pytest.raises(ValueError, match="1-D array of PRNG keys"):
        train_replicas(make, optax.sgd, L.on_batch(L.mse), data, cfg, keys=keys[None])
    with pytest.raises(ValueError, match="one per replica"):
        train_replicas(make, optax.sgd, L.on_batch(L.mse), data, cfg, keys=keys, lrs=[0.1, 0.2, 0.3])
    with pytest.raises(TypeError, match="inject_hyperparams"):
        train_replicas(make, optax.sgd, L.on_batch(L.mse), data, cfg, keys=keys, lrs=[0.1, 0.2])
    first = train_replicas(make, optax.sgd, L.on_batch(L.mse), data, cfg, keys=keys, lrs=0.1)
    again = train_replicas((first.graphdef, first.init), optax.sgd, L.on_batch(L.mse), data, cfg, keys=keys, lrs=0.1)
    jax.tree.map(np.testing.assert_array_equal, first.result.state.params, again.result.state.params)
    assert first.model(1)(x).shape == (16, 1) and replica_grid(1, [0.5])[1].tolist() == [0.5]


def test_top_k_hits_mean_is_top_k_accuracy_and_k_above_classes_hits_everything(rng):
    logits, y = jnp.asarray(rng.normal(size=(40, 7))), jnp.asarray(rng.integers(0, 7, 40))
    hits = L.top_k_hits(logits, y, (1, 3, 9))
    assert {k: v.shape for k, v in hits.items()} == {"top1": (40,), "top3": (40,), "top9": (40,)}
    np.testing.assert_allclose(float(hits["top1"].mean()), float(L.accuracy(logits, y)))
    np.testing.assert_allclose(float(hits["top3"].mean()), float(L.top_k_accuracy(logits, y, 3)))
    assert bool(jnp.all(hits["top9"] == 1.0)) and hits["top1"].dtype == jnp.float32
    with pytest.raises(ValueError, match="ks must be ints >= 1"):
        L.top_k_hits(logits, y, (0,))


def test_xent_top_k_is_xent_with_the_top_k_accuracies(rng):
    logits, y = jnp.asarray(rng.normal(size=(30, 6)), jnp.float32), jnp.asarray(rng.integers(0, 6, 30))
    loss, tops = L.xent_top_k(logits, y, (1, 2))
    assert float(loss) == float(L.xent(logits, y)) and sorted(tops) == ["top1", "top2"]
    np.testing.assert_allclose(float(tops["top1"]), float(L.accuracy(logits, y)))
    np.testing.assert_allclose(float(tops["top2"]), float(L.top_k_accuracy(logits, y, 2)))


def test_xent_sums_with_a_mask_are_the_sums_of_the_kept_rows(rng):
    logits, y = jnp.asarray(rng.normal(size=(40, 7)), jnp.float32), jnp.asarray(rng.integers(0, 7, 40))
    keep = rng.random(40) < 0.6
    masked = L.xent_sums(logits, y, jnp.asarray(keep, jnp.float32), ks=(1, 5))
    kept = L.xent_sums(logits[keep], y[keep], ks=(1, 5))
    assert list(masked) == ["loss", "top1", "top5", "count"] == list(kept)
    for k in masked:
        np.testing.assert_allclose(float(masked[k]), float(kept[k]), rtol=1e-6)
    hits = L.top_k_hits(logits[keep], y[keep], (1, 5))
    assert float(kept["top1"]) == float(hits["top1"].sum()) and float(kept["top5"]) == float(hits["top5"].sum())
    assert float(kept["count"]) == keep.sum()
    np.testing.assert_allclose(float(kept["loss"] / kept["count"]), float(L.xent(logits[keep], y[keep])), rtol=1e-6)
    with pytest.raises(ValueError, match="mask must have the shape of labels"):
        L.xent_sums(logits, y, jnp.ones((40, 1)))


def test_xent_sums_of_sequences_count_every_position(rng):
    logits, y = jnp.asarray(rng.normal(size=(3, 5, 11)), jnp.float32), jnp.asarray(rng.integers(0, 11, (3, 5)))
    s = L.xent_sums(logits, y)
    assert list(s) == ["loss", "count"] and float(s["count"]) == 15.0 and s["count"].dtype == jnp.float32
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    np.testing.assert_allclose(float(s["loss"] / s["count"]), float(ref), rtol=1e-6)


def test_xent_sums_over_padded_batches_give_the_means_of_the_split(rng):
    logits, y = rng.normal(size=(10, 4)).astype(np.float32), rng.integers(0, 4, 10)
    pad = lambda a: np.concatenate([a, np.zeros((2, *a.shape[1:]), a.dtype)])  # noqa: E731
    mask = pad(np.ones(10, np.float32))
    batches = iter([(pad(logits)[i : i + 4], pad(y)[i : i + 4], mask[i : i + 4]) for i in (0, 4, 8)])
    sums = sum_batches(lambda _, b: L.xent_sums(*b, ks=(2,)), None, batches, 3)
    got = mean_metrics(sums)
    np.testing.assert_allclose(got["val_loss"], float(L.xent(logits, y)), rtol=1e-6)
    np.testing.assert_allclose(got["val_top2"], float(L.top_k_accuracy(jnp.asarray(logits), jnp.asarray(y), 2)))
