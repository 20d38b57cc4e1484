"""Properties of the pure hyperspherical maps (gmpjax.hyperspherical)."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy import stats

from gmpjax import hyperspherical as hs


def _canonical_angles(key, shape, dtype):
    """Random angles in the canonical chart: theta_i in (0, pi), last in (-pi, pi)."""
    k1, k2 = jax.random.split(key)
    inner = jax.random.uniform(k1, shape[:-1] + (shape[-1] - 1,), dtype, 0.05, np.pi - 0.05)
    last = jax.random.uniform(k2, shape[:-1] + (1,), dtype, -np.pi + 0.05, np.pi - 0.05)
    return jnp.concatenate([inner, last], axis=-1)


def _unit_numpy(theta):
    """Independent float64 reference of Eq. (11), written as explicit loops."""
    theta = np.asarray(theta, np.float64)
    n = theta.shape[-1] + 1
    u = np.empty(theta.shape[:-1] + (n,))
    for i in range(n):
        prod = np.prod(np.sin(theta[..., :i]), axis=-1)
        u[..., i] = prod * (np.cos(theta[..., i]) if i < n - 1 else 1.0)
    return u


def test_closed_form_low_dimensions():
    t = jnp.array([0.7])
    np.testing.assert_allclose(hs.angles_to_unit(t), [np.cos(0.7), np.sin(0.7)], rtol=1e-6)
    t = jnp.array([0.3, -2.1])
    a, b = 0.3, -2.1
    np.testing.assert_allclose(
        hs.angles_to_unit(t), [np.cos(a), np.sin(a) * np.cos(b), np.sin(a) * np.sin(b)], rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("n", [2, 3, 7, 64])
def test_matches_loop_reference_float64(n):
    with jax.enable_x64(True):
        theta = _canonical_angles(jax.random.key(n), (5, n - 1), jnp.float64)
        np.testing.assert_allclose(hs.angles_to_unit(theta), _unit_numpy(theta), atol=1e-13)
        np.testing.assert_allclose(hs.angles_to_unit(theta, renormalize=False), _unit_numpy(theta), atol=1e-13)


def test_unit_norm_float32_n4096():
    theta = hs.sample_uniform_angles(jax.random.key(0), (64, 4095), jnp.float32)
    u = hs.angles_to_unit(theta)
    assert u.dtype == jnp.float32
    err = np.abs(np.linalg.norm(np.asarray(u, np.float64), axis=-1) - 1).max()
    assert err < 1e-6, err


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_unit_norm_leading_dims(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        theta = jax.random.normal(jax.random.key(1), (3, 4, 9), dtype) * 3
        u = hs.angles_to_unit(theta)
        chex.assert_shape(u, (3, 4, 10))
        assert u.dtype == dtype
        tol = 1e-6 if dtype == jnp.float32 else 1e-14
        np.testing.assert_allclose(jnp.linalg.norm(u, axis=-1), 1.0, atol=tol)


def test_round_trip_angles_unit_angles():
    with jax.enable_x64(True):
        theta = _canonical_angles(jax.random.key(2), (50, 11), jnp.float64)
        back = hs.unit_to_angles(hs.angles_to_unit(theta))
        np.testing.assert_allclose(back, theta, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-6), (jnp.float64, 1e-12)])
def test_round_trip_unit_angles_unit(dtype, tol):
    with jax.enable_x64(dtype == jnp.float64):
        u = hs.sample_uniform_unit(jax.random.key(3), (100, 17), dtype)
        np.testing.assert_allclose(hs.angles_to_unit(hs.unit_to_angles(u)), u, atol=tol)
        # unit_to_angles is scale invariant: any nonzero w gives the angles of w/||w||.
        np.testing.assert_allclose(hs.unit_to_angles(3.5 * u), hs.unit_to_angles(u), atol=10 * tol)


def test_unit_to_angles_trailing_zeros_and_axes():
    with jax.enable_x64(True):
        cases = np.array([[1.0, 0, 0, 0], [0, 0, 0, -1.0], [0, 1.0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, -1.0, 0]])
        theta = hs.unit_to_angles(jnp.asarray(cases))
        assert np.all(np.isfinite(theta))
        np.testing.assert_allclose(hs.angles_to_unit(theta), cases, atol=1e-15)
        # ranges: theta_i in [0, pi], last in (-pi, pi]
        assert np.all((theta[:, :-1] >= 0) & (theta[:, :-1] <= np.pi))
        assert np.all((theta[:, -1] > -np.pi) & (theta[:, -1] <= np.pi))
        grads = jax.grad(lambda u: jnp.sum(jnp.sin(hs.unit_to_angles(u))))(jnp.asarray(cases))
        assert np.all(np.isfinite(grads))


def test_metric_tensor_equals_jacobian_pullback():
    with jax.enable_x64(True):
        theta = jax.random.normal(jax.random.key(4), (6,), jnp.float64) * 2
        jac = jax.jacfwd(lambda t: hs.angles_to_unit(t, impl="cumprod", renormalize=False))(theta)  # (n, n-1)
        np.testing.assert_allclose(jac.T @ jac, jnp.diag(hs.angular_metric(theta)), atol=1e-12)
        # also through the default path (renormalisation must not change derivatives)
        jac2 = jax.jacrev(hs.angles_to_unit)(theta)
        np.testing.assert_allclose(jac2, jac, atol=1e-12)


def test_metric_closed_form():
    theta = jnp.array([0.4, 1.1, -0.8, 2.0])
    s2 = np.sin(np.asarray(theta, np.float64)) ** 2
    expect = [1, s2[0], s2[0] * s2[1], s2[0] * s2[1] * s2[2]]
    np.testing.assert_allclose(hs.angular_metric(theta), expect, rtol=1e-6)


def test_angular_change_bound_and_first_order():
    with jax.enable_x64(True):
        key = jax.random.key(5)
        theta = hs.sample_uniform_angles(key, (200, 9), jnp.float64)
        eps = jax.random.normal(jax.random.key(6), theta.shape, jnp.float64) * 1e-6
        pred = hs.angular_change(theta, eps)
        assert np.all(pred <= jnp.linalg.norm(eps, axis=-1) * (1 + 1e-12))
        u0, u1 = hs.angles_to_unit(theta), hs.angles_to_unit(theta + eps)
        actual = jnp.arccos(jnp.clip(jnp.sum(u0 * u1, -1), -1, 1))
        # first-order agreement: arccos loses ~half the digits near 1, so compare via chord length
        chord = jnp.linalg.norm(u1 - u0, axis=-1)
        np.testing.assert_allclose(chord, pred, rtol=1e-4)
        np.testing.assert_allclose(actual, pred, rtol=1e-2)


def test_check_grads_angles_to_unit():
    """The public map with its default implementation, second order in both modes (every implementation on its own:
    ``tests/test_unit_impls.py::test_check_grads``)."""
    with jax.enable_x64(True):
        theta = jax.random.normal(jax.random.key(7), (3, 5), jnp.float64)
        check_grads(hs.angles_to_unit, (theta,), order=2, modes=("fwd", "rev"))


def test_check_grads_unit_to_angles_and_metric():
    with jax.enable_x64(True):
        u = hs.sample_uniform_unit(jax.random.key(8), (4, 6), jnp.float64)
        check_grads(hs.unit_to_angles, (u,), order=2, modes=("fwd", "rev"))
        theta = jax.random.normal(jax.random.key(9), (4, 5), jnp.float64)
        check_grads(hs.angular_metric, (theta,), order=2, modes=("fwd", "rev"))


def test_gradients_finite_and_exact_at_zero_and_pi():
    """sin(theta_k) = 0 exactly: gradients of the public map are finite and match central differences.

    Every implementation on its own, against the analytic Jacobian: ``test_unit_impls.py``.
    """
    with jax.enable_x64(True):
        theta = jnp.array([[0.0, 1.0, np.pi, 0.5, 0.0], [1.2, 0.0, 0.0, -0.3, 2.0]], jnp.float64)
        c = jax.random.normal(jax.random.key(10), (2, 6), jnp.float64)
        f = lambda t: jnp.sum(c * hs.angles_to_unit(t))  # noqa: E731
        g = jax.grad(f)(theta)
        assert np.all(np.isfinite(g))
        h = 1e-6
        fd = np.zeros(theta.shape)
        for i, j in itertools.product(range(2), range(5)):
            e = jnp.zeros_like(theta).at[i, j].set(h)
            fd[i, j] = (f(theta + e) - f(theta - e)) / (2 * h)
        np.testing.assert_allclose(g, fd, atol=1e-8)
    with jax.enable_x64(False):
        g32 = jax.grad(lambda t: jnp.sum(hs.angles_to_unit(t)))(jnp.zeros((3, 8)))
        assert np.all(np.isfinite(g32))


def test_sample_uniform_angles_is_uniform_on_sphere():
    n = 6
    u = np.asarray(hs.angles_to_unit(hs.sample_uniform_angles(jax.random.key(11), (40000, n - 1))), np.float64)
    np.testing.assert_allclose(u.mean(0), 0, atol=0.02)
    np.testing.assert_allclose(np.cov(u.T), np.eye(n) / n, atol=0.01)
    # marginal of one coordinate of a uniform point on S^{n-1}: (u_k + 1)/2 ~ Beta((n-1)/2, (n-1)/2)
    marginal = stats.beta((n - 1) / 2, (n - 1) / 2)
    for k in (0, n - 1):
        assert stats.kstest((u[:, k] + 1) / 2, marginal.cdf).pvalue > 1e-3


def test_uniformity_check_has_power_against_iid_uniform_angles():
    """The KS check above rejects the bad initialisation (theta iid uniform), so it can fail."""
    n = 6
    bad = jax.random.uniform(jax.random.key(12), (40000, n - 1), minval=0, maxval=np.pi)
    u = np.asarray(hs.angles_to_unit(bad), np.float64)
    marginal = stats.beta((n - 1) / 2, (n - 1) / 2)
    assert stats.kstest((u[:, n - 1] + 1) / 2, marginal.cdf).pvalue < 1e-6


def test_standard_conversion_round_trip_and_equivalence():
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(jax.random.key(13), 3)
        kernel = jax.random.normal(k1, (7, 5), jnp.float64)
        bias = jax.random.normal(k2, (5,), jnp.float64)
        p = hs.from_standard(kernel, bias)
        chex.assert_shape([p["theta"], p["radius"], p["offset"]], [(5, 6), (5,), (5,)])
        back = hs.to_standard(**p)
        np.testing.assert_allclose(back["kernel"], kernel, atol=1e-12)
        np.testing.assert_allclose(back["bias"], bias, atol=1e-12)
        x = jax.random.normal(k3, (11, 7), jnp.float64)
        sp = jax.nn.relu(x @ kernel + bias)
        u = hs.angles_to_unit(p["theta"])
        gmp = p["radius"] * jax.nn.relu(x @ u.T + p["offset"])
        np.testing.assert_allclose(gmp, sp, atol=1e-10)


def test_jit_and_vmap_agree_with_eager():
    theta = jax.random.normal(jax.random.key(14), (4, 3, 7))
    eager = hs.angles_to_unit(theta)
    np.testing.assert_allclose(jax.jit(hs.angles_to_unit)(theta), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(hs.angles_to_unit)(theta), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(hs.unit_to_angles)(eager), hs.unit_to_angles(eager), atol=1e-6)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: hs.angles_to_unit(jnp.zeros((3, 0))), ValueError, "n-1 >= 1"),
        (lambda: hs.angles_to_unit(jnp.zeros((3, 2), jnp.int32)), TypeError, "floating-point"),
        (lambda: hs.angles_to_unit(jnp.zeros((3, 2)), impl="nope"), ValueError, "unknown impl"),
        (lambda: hs.unit_to_angles(jnp.ones((3, 1))), ValueError, "n >= 2"),
        (lambda: hs.sample_uniform_angles(jax.random.key(0), (4, 0)), ValueError, "n-1 >= 1"),
        (lambda: hs.angular_metric(jnp.zeros((0,))), ValueError, "theta"),
        (lambda: hs.from_standard(jnp.ones((1, 3))), ValueError, "n_in >= 2"),
        (lambda: hs.from_standard(jnp.ones((3, 2)), jnp.ones(3)), ValueError, "bias"),
        (lambda: hs.to_standard(jnp.ones((2, 3)), jnp.ones(3), jnp.ones(2)), ValueError, "radius"),
        (lambda: hs.to_standard(jnp.ones(3), jnp.ones(()), jnp.ones(())), ValueError, r"theta\[None\]"),
        (lambda: hs.angular_change(jnp.ones((4, 3)), jnp.ones((4, 2))), ValueError, "eps must have theta's shape"),
        (lambda: hs.angular_change(jnp.ones((3,)), jnp.ones((2, 3))), ValueError, r"\(3,\) or broadcast"),
        (lambda: hs.sample_uniform_angles(jax.random.key(0), "5"), TypeError, "int or a tuple"),
        (lambda: hs.sample_uniform_unit(jax.random.key(0), 1), ValueError, "n >= 2"),
        (
            lambda: hs.from_standard(jnp.array([[1.0, 0.0], [2.0, 0.0]]), jnp.array([0.0, 0.5])),
            ValueError,
            r"columns \[1\] are zero",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_sample_int_shape_means_one_vector():
    theta = hs.sample_uniform_angles(jax.random.key(0), 5)
    assert theta.shape == (5,)
    np.testing.assert_array_equal(theta, hs.sample_uniform_angles(jax.random.key(0), (5,)))
    assert hs.sample_uniform_unit(jax.random.key(0), np.int64(4)).shape == (4,)


def test_angular_change_broadcasts_eps_to_theta():
    theta = jnp.array([[jnp.pi / 2, 0.3], [0.2, 1.0]])
    np.testing.assert_allclose(
        hs.angular_change(theta, jnp.array([0.0, 0.1])),
        hs.angular_change(theta, jnp.array([[0.0, 0.1], [0.0, 0.1]])),
        rtol=1e-6,
    )


@pytest.mark.parametrize("impl", ["scan_vjp", "fast_vjp"])
def test_reverse_only_impl_under_jacfwd_names_forward_mode_impls(impl):
    f = lambda t: hs.angles_to_unit(t, impl=impl)  # noqa: E731
    with pytest.raises(TypeError, match=r"custom_jvp / forward-mode impl instead: one of \(.*'scan_jvp'"):
        jax.jacfwd(f)(jnp.ones((2, 3)))
