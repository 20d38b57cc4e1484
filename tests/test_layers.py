"""GmP layers, IMN and the baselines (gmpjax.layers)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads
from scipy import stats

from gmpjax import hyperspherical as hs
from gmpjax import layers as L


def _params(m):
    return nnx.to_pure_dict(nnx.state(m, nnx.Param))


def test_gmp_dense_shapes_and_init():
    m = L.GmPDense(5, 7, rngs=nnx.Rngs(0))
    p = _params(m)
    chex.assert_shape([p["theta"], p["radius"], p["offset"]], [(7, 4), (7,), (7,)])
    np.testing.assert_array_equal(p["radius"], 1.0)
    np.testing.assert_array_equal(p["offset"], 0.0)
    chex.assert_shape(m(jnp.ones((3, 5))), (3, 7))
    chex.assert_shape(m(jnp.ones((2, 3, 5))), (2, 3, 7))


def test_gmp_dense_computes_eq13():
    with jax.enable_x64(True):
        m = L.GmPDense(4, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
        m.radius[...] = jnp.array([0.5, 2.0, 1.5])
        m.offset[...] = jnp.array([0.1, -0.3, 0.2])
        x = jax.random.normal(jax.random.key(0), (6, 4), jnp.float64)
        u = hs.angles_to_unit(m.theta[...])
        expect = m.radius[...] * np.maximum(x @ u.T + m.offset[...], 0)
        np.testing.assert_allclose(m(x), expect, atol=1e-14)
        lin = L.GmPDense(4, 3, activation=None, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
        np.testing.assert_allclose(lin(x), x @ hs.angles_to_unit(lin.theta[...]).T, atol=1e-14)


def test_gmp_equals_standard_layer_for_converted_params():
    with jax.enable_x64(True):
        sp = L.SPDense(6, 5, param_dtype=jnp.float64, rngs=nnx.Rngs(2))
        sp.bias[...] = jax.random.normal(jax.random.key(1), (5,), jnp.float64)
        gmp = L.GmPDense(6, 5, param_dtype=jnp.float64, rngs=nnx.Rngs(3))
        conv = hs.from_standard(sp.kernel[...], sp.bias[...])
        gmp.theta[...], gmp.radius[...], gmp.offset[...] = conv["theta"], conv["radius"], conv["offset"]
        x = jax.random.normal(jax.random.key(2), (20, 6), jnp.float64)
        np.testing.assert_allclose(gmp(x), sp(x), atol=1e-10)


def test_fan_in_one_direction_is_fixed_and_untrained():
    m = L.GmPDense(1, 50, rngs=nnx.Rngs(0))
    assert m.theta is None
    d0 = np.asarray(m.direction[...])
    assert set(np.unique(d0)) == {-1.0, 1.0}
    assert "direction" not in _params(m)
    opt = nnx.Optimizer(m, optax.sgd(0.5), wrt=nnx.Param)
    x = jnp.linspace(-1, 1, 32)[:, None]

    @nnx.jit
    def step(m, opt):
        loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x).sum(-1) - jnp.sin(x[:, 0])) ** 2))(m)
        opt.update(m, g)
        return loss

    r0 = np.asarray(m.radius[...])
    for _ in range(3):
        step(m, opt)
    np.testing.assert_array_equal(m.direction[...], d0)
    assert not np.allclose(m.radius[...], r0)


def test_official_init_half_sphere_and_glorot_radius():
    n, m_out = 9, 400
    m = L.GmPDense(n, m_out, init="official", rngs=nnx.Rngs(0))
    u = hs.angles_to_unit(m.theta[...])
    assert np.all(u[:, -1] >= 0)
    limit = np.sqrt(6 / (n + m_out))
    r = np.asarray(m.radius[...])
    assert np.all((r > 0) & (r <= limit * np.sqrt(n) + 1e-6))
    # E||w||^2 = n * limit^2 / 3 for a box-uniform w
    assert abs(np.mean(r**2) / (n * limit**2 / 3) - 1) < 0.1
    with pytest.raises(ValueError, match="init"):
        L.GmPDense(3, 2, init="glorot", rngs=nnx.Rngs(0))


def test_init_direction_distribution_does_not_depend_on_width():
    """Remark 3.5: u(theta) at init is uniform on the sphere for any layer width."""
    n = 5
    marginal = stats.beta((n - 1) / 2, (n - 1) / 2)
    samples = {}
    for width in (16, 4096):
        init_many = jax.jit(jax.vmap(lambda k: L.GmPDense(n, width, rngs=nnx.Rngs(k)).theta[...]))  # noqa: B023
        theta = init_many(jax.random.split(jax.random.key(width), 8192 // width))
        samples[width] = np.asarray(hs.angles_to_unit(theta.reshape(-1, n - 1)))[:, 0]
        assert stats.kstest((samples[width] + 1) / 2, marginal.cdf).pvalue > 1e-3
    assert stats.ks_2samp(samples[16], samples[4096]).pvalue > 1e-3


def test_check_grads_gmp_dense():
    with jax.enable_x64(True):
        m = L.GmPDense(4, 3, activation=jnp.tanh, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(m)
        x = jax.random.normal(jax.random.key(0), (5, 4), jnp.float64)

        def f(params, x):
            return nnx.merge(graphdef, params)(x)

        check_grads(f, (params, x), order=2, modes=("rev",))


def test_jit_vmap_grad_split_merge():
    m = L.GmPDense(3, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (8, 3))
    y = m(x)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(m, x), y, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(m, x), y, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(m)(x[:, None, :])[:, 0], y, rtol=1e-6)
    g, state = nnx.split(m)
    np.testing.assert_allclose(nnx.merge(g, state)(x), y, rtol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(m)
    assert set(nnx.to_pure_dict(grads)) == {"theta", "radius", "offset"}
    chex.assert_tree_all_finite(grads)


def test_forward_pass_leaves_parameters_unchanged():
    for name in L.PARAMETERIZATIONS:
        m = L.make_dense(name, 3, 4, rngs=nnx.Rngs(0))
        before = jax.tree.map(np.array, _params(m))
        m(jax.random.normal(jax.random.key(1), (16, 3)))
        chex.assert_trees_all_equal(before, _params(m))


def test_gmp_conv_equals_dense_on_1x1():
    dense = L.GmPDense(3, 5, rngs=nnx.Rngs(0))
    conv = L.GmPConv(3, 5, (1, 1), rngs=nnx.Rngs(1))
    conv.theta[...] = dense.theta[...]
    conv.radius[...], conv.offset[...] = dense.radius[...] * 1.5, dense.offset[...] + 0.2
    dense.radius[...], dense.offset[...] = conv.radius[...], conv.offset[...]
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    np.testing.assert_allclose(conv(x), dense(x), atol=1e-5)


def test_gmp_conv_hwio_flattening_matches_explicit_patches():
    with jax.enable_x64(True):
        conv = L.GmPConv(2, 3, (2, 3), padding="VALID", activation=None, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        u = np.asarray(hs.angles_to_unit(conv.theta[...]))  # (3, 2*3*2)
        kern = np.asarray(conv.unit_kernel())
        for i in range(2):
            for j in range(3):
                for c in range(2):
                    np.testing.assert_array_equal(kern[i, j, c], u[:, (i * 3 + j) * 2 + c])
        x = np.asarray(jax.random.normal(jax.random.key(1), (1, 4, 5, 2), jnp.float64))
        out = np.asarray(conv(jnp.asarray(x)))
        for a in range(3):
            for b in range(3):
                patch = x[0, a : a + 2, b : b + 3, :].reshape(-1)  # (h, w, c) row-major = (i*kw+j)*C + c
                np.testing.assert_allclose(out[0, a, b], u @ patch, atol=1e-12)


def test_gmp_conv_strides_padding_match_nnx_conv():
    gc = L.GmPConv(3, 4, (3, 3), strides=2, padding="SAME", kernel_dilation=1, activation=None, rngs=nnx.Rngs(0))
    ref = nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
    ref.kernel[...] = gc.unit_kernel()
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    np.testing.assert_allclose(gc(x), ref(x), atol=1e-5)


def test_input_mean_norm():
    imn = L.InputMeanNorm(3)
    x = jax.random.normal(jax.random.key(0), (4, 5, 6, 3)) + jnp.array([1.0, -2.0, 3.0])
    y = imn(x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(imn.mean[...], 0.01 * jnp.mean(x, axis=(0, 1, 2)), rtol=1e-5)
    assert nnx.state(imn, nnx.Param) == nnx.State({})
    imn.eval()
    np.testing.assert_allclose(imn(x), x - imn.mean[...], rtol=1e-6)
    off = L.InputMeanNorm(3, epsilon=1e-6)
    np.testing.assert_allclose(off(x), (x - x.mean((0, 1, 2))) / np.sqrt(1 + 1e-6), rtol=1e-5, atol=1e-6)


def test_wn_init_equals_sp_function():
    wn = L.WNDense(4, 6, rngs=nnx.Rngs(0))
    sp = L.SPDense(4, 6, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (5, 4))
    np.testing.assert_allclose(wn(x), sp(x), rtol=1e-5, atol=1e-6)
    wc, sc = L.WNConv(3, 4, (3, 3), rngs=nnx.Rngs(0)), L.SPConv(3, 4, (3, 3), rngs=nnx.Rngs(0))
    xi = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))
    np.testing.assert_allclose(wc(xi), sc(xi), rtol=1e-5, atol=1e-5)


def test_bn_layer_normalises_in_training_mode():
    bn = L.BNDense(4, 6, activation=None, rngs=nnx.Rngs(0))
    y = bn(jax.random.normal(jax.random.key(0), (256, 4)) * 3 + 1)
    np.testing.assert_allclose(jnp.mean(y, 0), 0, atol=1e-4)
    np.testing.assert_allclose(jnp.var(y, 0), 1, atol=1e-2)
    assert bn.norm.epsilon == 1e-3 and bn.norm.momentum == 0.99


def test_registry_and_linen_bridge():
    x = jnp.ones((2, 3))
    for name in L.PARAMETERIZATIONS:
        assert L.make_dense(name, 3, 4, rngs=nnx.Rngs(0))(x).shape == (2, 4)
    assert L.check_parameterization("GmP+IMN") == "gmp_imn"
    with pytest.raises(ValueError, match="unknown parameterization 'relu'"):
        L.make_dense("relu", 3, 4, rngs=nnx.Rngs(0))
    # usable from linen through the nnx bridge
    from flax.nnx import bridge

    lin = bridge.ToLinen(L.GmPDense, args=(3, 4))
    variables = lin.init(jax.random.key(0), x)
    assert lin.apply(variables, x).shape == (2, 4)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: L.GmPDense(0, 4, rngs=nnx.Rngs(0)), ValueError, "in_features"),
        (lambda: L.GmPDense(3, -1, rngs=nnx.Rngs(0)), ValueError, "out_features"),
        (lambda: L.GmPDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 5))), ValueError, "in_features=3"),
        (lambda: L.GmPDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3), jnp.int32)), TypeError, "floating-point"),
        # an int kernel_size is a 1-D kernel, as in nnx.Conv: rank-3 input (N, L, C) or more
        (lambda: L.GmPConv(3, 4, 3, rngs=nnx.Rngs(0))(jnp.ones((3,))), ValueError, "int, which means a 1-D"),
        (lambda: L.GmPConv(3, 4, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((5, 3))), ValueError, "rank 4"),
        (lambda: L.GmPConv(3, 4, (3, 0), rngs=nnx.Rngs(0)), ValueError, "kernel_size"),
        (lambda: L.InputMeanNorm(0), ValueError, "num_features"),
        (lambda: L.SPDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 2))), ValueError, "last axis"),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_learning_rates_resolve_cv_by_the_registry_and_refuse_bad_values():
    from gmpjax.layers.registry import default_lr, learning_rates, names

    for name in names():
        assert learning_rates(("cv",), name) == (default_lr(name),)
    assert learning_rates(("cv", "0.1", 0.3, "0.3"), "gmp") == (0.1, 0.3)  # duplicates once, order kept
    assert learning_rates(("0.01", "cv"), "GmP+IMN") == (0.01, 0.1)  # any spelling of the name
    assert learning_rates(["2e-3"]) == (0.002,)
    for bad in ("fast", "-1", "0", "inf", "nan"):
        with pytest.raises(ValueError, match="must be 'cv' or positive numbers"):
            learning_rates([bad], "sp")
    with pytest.raises(ValueError, match="'cv' needs a parameterization"):
        learning_rates(["cv"])
    with pytest.raises(ValueError, match="unknown parameterization"):
        learning_rates(["cv"], "foo")
