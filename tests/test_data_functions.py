"""gmpjax.data.functions: the triangular-wave paper's 1-D targets and their dense / sparse samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmpjax.data.functions import TARGETS, dense_samples, sparse_samples, stable_tag


def test_targets_are_the_papers_with_the_sign_of_their_curvature():
    x = jnp.linspace(0.0, 1.0, 101)
    for name, t in TARGETS.items():
        y = np.asarray(t.fn(x))
        second = np.diff(y, 2)
        # sign -1: convex on [0, 1] (x - G_d); +1: concave (x + G_d, with a gain and offset head)
        assert np.all(second * t.sign <= 1e-7), name
        assert t.output_affine == (t.sign == 1)
    assert [t.label for t in TARGETS.values()] == ["x^3", "x^11", "sin x", "tanh 3x"]


def test_dense_and_sparse_samples_shapes_values_and_reproducibility():
    x, y = dense_samples(TARGETS["x11"].fn, 7, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    assert x.shape == y.shape == (7, 1) and float(x[0, 0]) == 0.0 and float(x[-1, 0]) == 1.0
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) ** 11, rtol=1e-6)
    key = jax.random.fold_in(jax.random.key(1), stable_tag("sin"))
    (xtr, ytr), (xte, yte) = sparse_samples(jnp.sin, key, runs=4, n_train=10, n_test=3)
    assert xtr.shape == ytr.shape == (4, 10, 1) and xte.shape == yte.shape == (4, 3, 1)
    np.testing.assert_allclose(np.asarray(ytr), np.sin(np.asarray(xtr)), rtol=1e-6)
    k1, k2 = jax.random.split(key)  # training draws from the first half of the split, test from the second
    np.testing.assert_array_equal(np.asarray(xtr), np.asarray(jax.random.uniform(k1, (4, 10, 1))))
    np.testing.assert_array_equal(np.asarray(xte), np.asarray(jax.random.uniform(k2, (4, 3, 1))))
    assert len({stable_tag(n) for n in (*TARGETS, "x3-x")}) == 5 and all(0 <= stable_tag(n) < 2**31 for n in TARGETS)


def test_bad_sample_sizes_are_refused():
    with pytest.raises(ValueError, match="n must be >= 1"):
        dense_samples(jnp.sin, 0)
    with pytest.raises(ValueError, match="runs, n_train and n_test must be >= 1"):
        sparse_samples(jnp.sin, jax.random.key(0), runs=2, n_train=0, n_test=3)
