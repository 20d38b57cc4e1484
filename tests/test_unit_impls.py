"""Every implementation of u(theta) is exact: values, gradients, edge angles, dtypes, layouts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from gmpjax import _unit_impls as U
from gmpjax import hyperspherical as hs
from gmpjax.layers import GmPDense

IMPLS = tuple(U.IMPLS)


def closed_form(theta: np.ndarray) -> np.ndarray:
    """u(theta) in float64 numpy, straight from Eq. (11): u_i = cos(theta_i) prod_{k<i} sin(theta_k)."""
    theta = np.asarray(theta, np.float64)
    n = theta.shape[-1] + 1
    u = np.empty(theta.shape[:-1] + (n,))
    prod = np.ones(theta.shape[:-1])
    for i in range(n - 1):
        u[..., i] = prod * np.cos(theta[..., i])
        prod = prod * np.sin(theta[..., i])
    u[..., n - 1] = prod
    return u


def jacobian_product_rule(theta: np.ndarray) -> np.ndarray:
    """d u_i / d theta_k for one angle vector by the product rule (no division), float64, shape (n, n-1).

    ``d u_k / d theta_k = -sin(theta_k) prod_{j<k} sin(theta_j)`` and, for ``i > k``,
    ``d u_i / d theta_k = cos(theta_k) cos(theta_i) prod_{j<i, j != k} sin(theta_j)`` (``cos(theta_n) := 1``).
    """
    theta = np.asarray(theta, np.float64)
    n = theta.size + 1
    s, c = np.sin(theta), np.cos(theta)
    cos_ext = np.append(c, 1.0)
    before = np.concatenate([[1.0], np.cumprod(s)[:-1]])  # prod_{j<k} s_j
    jac = np.zeros((n, n - 1))
    for k in range(n - 1):
        jac[k, k] = -s[k] * before[k]
        between = np.concatenate([[1.0], np.cumprod(s[k + 1 :])])[: n - k - 1]  # prod_{k<j<i} s_j, i = k+1..n-1
        jac[k + 1 :, k] = c[k] * cos_ext[k + 1 :] * before[k] * between
    return jac


EDGE = np.array([0.0, 1.0, np.pi, 0.5, 0.0, 0.0, -0.3, 2.0])  # exact zeros (two adjacent) and pi


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(1,), (2, 3, 9)])
def test_values_match_closed_form_float32(impl, shape):
    theta = jax.random.normal(jax.random.key(0), shape) * 2.0
    u = U.IMPLS[impl](theta)
    assert u.shape == shape[:-1] + (shape[-1] + 1,) and u.dtype == jnp.float32
    np.testing.assert_allclose(u, closed_form(theta), atol=1e-6)
    np.testing.assert_allclose(u, U.unit_cumprod(theta), atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_values_and_grads_float64(impl):
    with jax.enable_x64(True):
        theta = jax.random.normal(jax.random.key(1), (4, 6), jnp.float64) * 2.0
        u = U.IMPLS[impl](theta)
        assert u.dtype == jnp.float64
        np.testing.assert_allclose(u, closed_form(theta), atol=1e-13)
        g = jax.random.normal(jax.random.key(2), (4, 7), jnp.float64)
        grad = jax.grad(lambda t: jnp.sum(g * U.IMPLS[impl](t)))(theta)
        pairs = zip(np.asarray(theta), np.asarray(g), strict=True)
        expect = np.stack([jacobian_product_rule(t).T @ gi for t, gi in pairs])
        np.testing.assert_allclose(grad, expect, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_grads_float32_match_float64_reference(impl):
    theta = hs.sample_uniform_angles(jax.random.key(3), (4, 200))
    g = jax.random.normal(jax.random.key(4), (4, 201))
    grad = jax.grad(lambda t: jnp.sum(g * U.IMPLS[impl](t)))(theta)
    pairs = zip(np.asarray(theta), np.asarray(g, np.float64), strict=True)
    expect = np.stack([jacobian_product_rule(t).T @ gi for t, gi in pairs])
    scale = np.abs(expect).max()
    np.testing.assert_allclose(np.asarray(grad) / scale, expect / scale, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_grads_finite_and_exact_at_zero_and_pi(impl, dtype):
    with jax.enable_x64(dtype == "float64"):
        theta = jnp.asarray(EDGE, dtype)
        g = jnp.asarray(np.random.default_rng(5).normal(size=EDGE.size + 1), dtype)
        grad = jax.grad(lambda t: jnp.sum(g * U.IMPLS[impl](t)))(theta)
        assert np.all(np.isfinite(grad))
        expect = jacobian_product_rule(np.asarray(theta)).T @ np.asarray(g, np.float64)
        np.testing.assert_allclose(grad, expect, atol=1e-6 if dtype == "float32" else 1e-13)
        # the Jacobian itself, through reverse mode
        jac = jax.jacrev(U.IMPLS[impl])(theta)
        assert np.all(np.isfinite(jac))
        tol = 1e-6 if dtype == "float32" else 1e-13
        np.testing.assert_allclose(jac, jacobian_product_rule(np.asarray(theta)), atol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_check_grads(impl):
    with jax.enable_x64(True):
        theta = jax.random.normal(jax.random.key(6), (2, 4), jnp.float64)
        modes = ("fwd", "rev") if impl in U.FORWARD_MODE else ("rev",)
        # second order where a hand-written rule is differentiated again (the others are plain autodiff
        # or the same rule with jnp.sin/jnp.cos); first order everywhere
        order = 2 if impl in ("fast", "fast_vjp", "scan_vjp", "tiled", "native", "pallas") else 1
        check_grads(U.IMPLS[impl], (theta,), order=order, modes=modes)
    # float32 path of the default (polynomial sin/cos), first order
    theta32 = jax.random.normal(jax.random.key(7), (2, 4))
    check_grads(U.IMPLS[impl], (theta32,), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("impl", U.FORWARD_MODE)
def test_forward_mode(impl):
    theta = jax.random.normal(jax.random.key(8), (6,))
    jf = jax.jacfwd(U.IMPLS[impl])(theta)
    np.testing.assert_allclose(jf, jacobian_product_rule(np.asarray(theta)), atol=2e-6)


@pytest.mark.parametrize("impl", sorted(set(IMPLS) - set(U.FORWARD_MODE)))
def test_custom_vjp_impl_refuses_forward_mode_with_a_clear_error(impl):
    # documented: scan_vjp, fast_vjp and tiled are reverse-mode only; FORWARD_MODE lists the others
    assert impl in ("scan_vjp", "fast_vjp", "tiled")
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jacfwd(U.IMPLS[impl])(jnp.ones(3))


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_vmap_and_leading_dims_agree(impl):
    theta = jax.random.normal(jax.random.key(9), (3, 4, 6))
    f = U.IMPLS[impl]
    direct = f(theta)
    np.testing.assert_allclose(jax.jit(f)(theta), direct, atol=1e-7)
    np.testing.assert_allclose(jax.vmap(f)(theta), direct, atol=1e-7)
    np.testing.assert_allclose(f(theta[1, 2]), direct[1, 2], atol=1e-7)


def test_sincos_accuracy_float32():
    x = jnp.concatenate(
        [
            jax.random.uniform(jax.random.key(10), (200_000,), minval=-4.0, maxval=4.0),
            jax.random.uniform(jax.random.key(11), (200_000,), minval=-U.SINCOS_F32_RANGE, maxval=U.SINCOS_F32_RANGE),
            jnp.asarray([0.0, -0.0, np.pi, -np.pi, np.pi / 2, 2 * np.pi, 1e-30, 1e-45], jnp.float32),
        ]
    )
    s, c = U.sincos(x)
    assert s.dtype == c.dtype == jnp.float32
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(s, np.sin(x64), atol=2e-7, rtol=0)
    np.testing.assert_allclose(c, np.cos(x64), atol=2e-7, rtol=0)
    # tiny sines keep their relative accuracy (they multiply the whole tail of u)
    tiny = np.abs(np.sin(x64)) < 1e-3
    np.testing.assert_allclose(np.asarray(s)[tiny], np.sin(x64)[tiny], rtol=1e-5, atol=1e-30)
    s0, c0 = U.sincos(jnp.zeros(3))
    assert np.all(np.asarray(s0) == 0) and np.all(np.asarray(c0) == 1)


def test_sincos_other_dtypes_use_jnp():
    with jax.enable_x64(True):
        x = jnp.linspace(-50, 50, 1001, dtype=jnp.float64)
        s, c = U.sincos(x)
        np.testing.assert_array_equal(s, jnp.sin(x))
        np.testing.assert_array_equal(c, jnp.cos(x))
    xb = jnp.linspace(-3, 3, 11, dtype=jnp.bfloat16)
    assert U.sincos(xb)[0].dtype == jnp.bfloat16


def test_defaults_are_registered():
    for backend in ("cpu", "gpu", "cuda", "tpu", "something-new"):
        assert U.default_for_backend(backend) == "native"
    assert hs.default_impl("cpu") == hs.default_impl() == "native"
    theta = jax.random.normal(jax.random.key(12), (3, 4))
    for impl in IMPLS:
        np.testing.assert_allclose(hs.angles_to_unit(theta, impl=impl), hs.angles_to_unit(theta), atol=1e-6)
    with pytest.raises(ValueError, match="unknown impl"):
        hs.angles_to_unit(theta, impl="fastest")


def _count_primitives(jaxpr, names: set[str]) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)

    def visit(j):
        for eqn in j.eqns:
            if eqn.primitive.name in names:
                counts[eqn.primitive.name] += 1
            for v in eqn.params.values():
                for sub in v if isinstance(v, (list, tuple)) else (v,):
                    if hasattr(sub, "eqns"):
                        visit(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        visit(sub.jaxpr)

    visit(jaxpr.jaxpr)
    return counts


@pytest.mark.parametrize("impl", ["scan_jvp", "scan_vjp", "fast"])
def test_train_step_computes_sin_cos_once(impl):
    """Forward and backward of a GmPDense loss share one evaluation of sin/cos (no recomputation)."""
    layer = GmPDense(16, 8, impl=impl, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    x = jnp.ones((4, 16))

    def loss(p, x):
        return jnp.mean(nnx.merge(graphdef, p, rest)(x) ** 2)

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    counts = _count_primitives(jaxpr, {"sin", "cos", "round"})
    if impl == "fast":  # float32: one shared range reduction, no libm calls
        assert counts == {"sin": 0, "cos": 0, "round": 1}, counts
    else:
        assert counts == {"sin": 1, "cos": 1, "round": 0}, counts


@pytest.mark.parametrize("k", [U.TILE - 1, U.TILE, U.TILE + 1, 3 * U.TILE + 5])
def test_tiled_across_tile_boundaries_float64(k):
    """Values and gradients of ``tiled`` (with and without the fused renormalisation) at and across tile edges."""
    with jax.enable_x64(True):
        theta = np.asarray(jax.random.normal(jax.random.key(13), (3, k), jnp.float64)) * 2.0
        theta[0, U.TILE - 1 : U.TILE + 1] = 0.0  # exact zeros on both sides of the first tile edge
        theta[1, min(U.TILE, k - 1)] = np.pi
        theta = jnp.asarray(theta)
        g = jax.random.normal(jax.random.key(14), (3, k + 1), jnp.float64)
        np.testing.assert_allclose(U.unit_tiled(theta), closed_form(theta), atol=1e-13)
        grad = jax.grad(lambda t: jnp.sum(g * U.unit_tiled(t)))(theta)
        pairs = zip(np.asarray(theta), np.asarray(g), strict=True)
        expect = np.stack([jacobian_product_rule(t).T @ gi for t, gi in pairs])
        np.testing.assert_allclose(grad, expect, atol=1e-12)
        # the fused renormalisation equals angles_to_unit's generic one, value and gradient
        generic = lambda t: hs.angles_to_unit(t, impl="scan_jvp")  # noqa: E731
        fused = lambda t: hs.angles_to_unit(t, impl="tiled")  # noqa: E731
        np.testing.assert_allclose(fused(theta), generic(theta), atol=1e-13)
        np.testing.assert_allclose(
            jax.grad(lambda t: jnp.sum(g * fused(t)))(theta),
            jax.grad(lambda t: jnp.sum(g * generic(t)))(theta),
            atol=1e-12,
        )


def _residual_numbers(fn, theta) -> int:
    _, pullback = jax.vjp(fn, theta)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(pullback) if hasattr(leaf, "shape"))


def test_tiled_keeps_no_per_angle_residuals():
    """``tiled`` saves theta and one row per tile; ``fast`` saves sin, cos, u and P (4x theta)."""
    theta = hs.sample_uniform_angles(jax.random.key(15), (16, 4 * U.TILE))
    tiled = _residual_numbers(lambda t: hs.angles_to_unit(t, impl="tiled"), theta)
    fast = _residual_numbers(lambda t: hs.angles_to_unit(t, impl="fast"), theta)
    assert tiled <= theta.size + theta.size // U.TILE + 3 * theta.shape[0], tiled
    assert fast >= 4 * theta.size


def test_native_keeps_only_theta_as_residual():
    """Successor of the test above for the default: the backward kernel recomputes everything from theta."""
    theta = hs.sample_uniform_angles(jax.random.key(15), (16, 4 * U.TILE))
    assert _residual_numbers(lambda t: hs.angles_to_unit(t), theta) == theta.size
    assert _residual_numbers(U.unit_native, theta) == theta.size


def test_default_train_step_runs_each_kernel_once():
    """A GmPDense value-and-grad traces one forward and one backward primitive, and no XLA sin/cos."""
    layer = GmPDense(16, 8, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(p, x):
        return jnp.mean(nnx.merge(graphdef, p, rest)(x) ** 2)

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, argnums=(0, 1)))(params, jnp.ones((4, 16)))
    counts = _count_primitives(jaxpr, {"sin", "cos", "round", "gmp_unit", "gmp_unit_bwd", "gmp_unit_tangent"})
    assert counts == {"sin": 0, "cos": 0, "round": 0, "gmp_unit": 1, "gmp_unit_bwd": 1, "gmp_unit_tangent": 0}
