"""GmP layers as drop-in nnx.Linear / nnx.Conv replacements (issue 12 items 1, 2, 5, 6).

Constructor parity, the mixed-precision policy, layer-level conversion and clear errors for bad input.
"""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.nnx import bridge

from gmpjax import hyperspherical as hs
from gmpjax import layers as L
from gmpjax.models import MLP

# ---------------------------------------------------------------------------
# constructor parity
# ---------------------------------------------------------------------------

DROPPED_DENSE = {"bias_init", "kernel_metadata", "bias_metadata"}
# Compiled calls: one XLA program per layer/shape instead of dozens of eagerly compiled ops (fast tests).
_call = nnx.jit(lambda m, x: m(x))


def _randn(seed, shape, dtype=jnp.float32):
    """Standard-normal test data from numpy (eager jax.random compiles a program per shape)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _out(make, x):
    """Abstract output of a freshly built layer (tracing only, nothing compiled)."""
    return jax.eval_shape(lambda x: make()(x), x)


def _keywords(fn):
    return {n: p for n, p in inspect.signature(fn).parameters.items() if n != "self"}


@pytest.mark.parametrize(
    "gmp,ref,dropped",
    [(L.GmPDense, nnx.Linear, DROPPED_DENSE), (L.GmPConv, nnx.Conv, DROPPED_DENSE | {"mask"})],
)
def test_signature_has_every_nnx_keyword_with_nnx_defaults(gmp, ref, dropped):
    ours, theirs = _keywords(gmp), _keywords(ref.__init__)
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    for name, p in theirs.items():
        if name not in dropped and name != "kernel_init":  # accepted, default None: the init= preset draws
            assert ours[name].default == p.default, name
            assert ours[name].kind == p.kind, name
    # dropped keywords are in the signature only to explain themselves
    for name in dropped:
        with pytest.raises(TypeError, match=f"does not take {name}"):
            gmp(3, 4, *(((3,),) if gmp is L.GmPConv else ()), rngs=nnx.Rngs(0), **{name: object()})
    for extra in (
        "theta_init",
        "radius_init",
        "offset_init",
        "theta_metadata",
        "radius_metadata",
        "offset_metadata",
        "activation",
        "init",
        "impl",
        "use_offset",
    ):
        assert extra in ours
    # positional sizes keep their names and order
    assert list(ours)[:2] == ["in_features", "out_features"]


@pytest.mark.parametrize(
    "cls,ref", [(L.SPDense, nnx.Linear), (L.WNDense, nnx.Linear), (L.SPConv, nnx.Conv), (L.WNConv, nnx.Conv)]
)
def test_baseline_signatures_have_nnx_keywords(cls, ref):
    missing = set(_keywords(ref.__init__)) - set(_keywords(cls)) - {"mask"}
    assert not missing


def _mean_pairwise_cosine(u: np.ndarray) -> float:
    u = u / np.linalg.norm(u, axis=-1, keepdims=True)
    cos = u @ u.T
    return float((cos.sum() - np.trace(cos)) / (len(u) * (len(u) - 1)))


def test_kernel_init_is_split_into_directions_and_radii():
    """nnx's kernel_init is accepted: the drawn kernel becomes u = w/||w||, r = ||w|| (Dense and Conv layouts)."""
    init = jax.nn.initializers.glorot_uniform()
    dense = L.GmPDense(16, 32, kernel_init=init, activation=None, rngs=nnx.Rngs(0))
    lin = nnx.Linear(16, 32, kernel_init=init, rngs=nnx.Rngs(0))
    w = np.asarray(init(jax.random.fold_in(nnx.Rngs(0).params(), 3), (16, 32), jnp.float32))
    np.testing.assert_allclose(np.asarray(dense.radius[...]), np.linalg.norm(w, axis=0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dense.unit()), (w / np.linalg.norm(w, axis=0)).T, atol=1e-6)
    assert abs(_mean_pairwise_cosine(np.asarray(dense.unit()))) < 0.1  # not collapsed
    assert lin.kernel[...].shape == (16, 32)
    conv = L.GmPConv(3, 8, (3, 3), kernel_init=init, rngs=nnx.Rngs(0))
    assert conv.theta[...].shape == (8, 26) and abs(_mean_pairwise_cosine(np.asarray(conv.unit()))) < 0.2
    with pytest.raises(ValueError, match="either kernel_init or those"):
        L.GmPDense(4, 3, kernel_init=init, theta_init=hs.sample_uniform_angles, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="kernel_init returned shape"):
        L.GmPDense(4, 3, kernel_init=lambda k, s, d: jnp.ones((3, 4), d), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("init", [jax.nn.initializers.glorot_uniform(), jax.nn.initializers.normal(0.01)])
def test_kernel_initializer_as_theta_init_is_refused(init):
    """The collapse the issue measured (mean pairwise cosine 0.98) cannot happen silently."""
    with pytest.raises(ValueError, match="near e_1.*kernel_init="):
        L.GmPDense(64, 32, theta_init=init, rngs=nnx.Rngs(0))
    default = L.GmPDense(64, 32, theta_init=hs.sample_uniform_angles, rngs=nnx.Rngs(0))
    assert abs(_mean_pairwise_cosine(np.asarray(default.unit()))) < 0.05


# Each new option goes through the flax idioms; options are grouped to keep compilations few.
DENSE_OPTIONS = [
    {"dtype": jnp.bfloat16, "use_bias": False, "precision": jax.lax.Precision.HIGHEST, "activation": "relu"},
    {
        "theta_init": hs.sample_uniform_angles,
        "radius_init": nnx.initializers.constant(2.0),
        "offset_init": nnx.initializers.normal(0.5),
        "preferred_element_type": jnp.float32,
        "activation": None,
        "theta_metadata": {"out_sharding": ("model", None), "eager_sharding": False},
        "radius_metadata": {"out_sharding": ("model",), "eager_sharding": False},
    },
]
CONV_OPTIONS = [
    {"kernel_size": (3,), "input_dilation": 2, "kernel_dilation": 2, "padding": "CIRCULAR", "strides": 2},
    {
        "kernel_size": (2, 2, 2),
        "feature_group_count": 2,
        "dtype": jnp.bfloat16,
        "use_offset": False,
        "padding": "VALID",
    },
]


def _idioms(make, x, linen_args):
    """split/merge, nnx.jit, nnx.vmap and bridge.to_linen all give the eager output."""
    m = make()
    y = _call(m, x)
    tol = {"rtol": 2e-2, "atol": 2e-2} if y.dtype == jnp.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    g, state = nnx.split(m)
    np.testing.assert_allclose(_call(nnx.merge(g, state), x), y, **tol)
    ys = nnx.jit(nnx.vmap(lambda m, x: m(x), in_axes=(None, 0)))(m, jnp.stack([x, 2 * x]))
    np.testing.assert_allclose(ys[0], y, **tol)
    lin = bridge.to_linen(*linen_args)
    variables = jax.jit(lin.init)(jax.random.key(0), x)
    assert jax.jit(lin.apply)(variables, x).shape == y.shape
    assert y.dtype == jax.eval_shape(m, x).dtype


@pytest.mark.parametrize("opts", DENSE_OPTIONS, ids=["bf16,no-offset,precision", "hooks,metadata,preferred"])
def test_dense_options_with_flax_idioms(opts):
    x = _randn(0, (5, 6))
    m = L.GmPDense(6, 4, **opts, rngs=nnx.Rngs(0))
    if opts.get("use_bias") is False:
        assert m.offset is None and "offset" not in nnx.to_pure_dict(nnx.state(m, nnx.Param))
        assert jax.eval_shape(m, x).dtype == jnp.bfloat16
    if "radius_init" in opts:
        np.testing.assert_array_equal(m.radius[...], 2.0)
        assert float(jnp.std(m.offset[...])) > 0
        specs = nnx.get_partition_spec(nnx.state(m))
        assert specs["theta"].get_value() == jax.P("model", None)
        assert specs["radius"].get_value() == jax.P("model")
        with jax.numpy_dtype_promotion("standard"):  # dtype=None promotes bf16 x with f32 params, as nnx does
            assert jax.eval_shape(m, x.astype(jnp.bfloat16)).dtype == jnp.float32
    _idioms(lambda: L.GmPDense(6, 4, **opts, rngs=nnx.Rngs(0)), x, (_Partial(L.GmPDense, **opts), 6, 4))


class _Partial:
    """A picklable partial with a __name__ (bridge.to_linen wants a class-like callable)."""

    def __init__(self, cls, **kw):
        self.cls, self.kw, self.__name__ = cls, kw, cls.__name__

    def __call__(self, *args, **kwargs):
        return self.cls(*args, **self.kw, **kwargs)


@pytest.mark.parametrize("opts", CONV_OPTIONS, ids=["1d,dilations,circular", "3d,groups,bf16,no-offset"])
def test_conv_options_with_flax_idioms(opts):
    opts = dict(opts)
    k = opts.pop("kernel_size")
    x = _randn(0, (2, *([6] * len(k)), 4))
    _idioms(lambda: L.GmPConv(4, 6, k, **opts, rngs=nnx.Rngs(0)), x, (_Partial(L.GmPConv, **opts), 4, 6, k))


def test_grouped_conv_and_batch_axes_match_nnx_conv():
    """One direction per output channel over its group's fan-in; batch axes handled as nnx.Conv does."""
    m = L.GmPConv(6, 9, (3, 3), feature_group_count=3, rngs=nnx.Rngs(0))
    assert m.fan_in == 3 * 3 * 2 and m.theta.shape == (9, 17) and m.unit_kernel().shape == (3, 3, 2, 9)
    np.testing.assert_allclose(jnp.linalg.norm(m.unit_kernel().reshape(-1, 9), axis=0), 1.0, rtol=1e-6)
    dw = L.GmPConv(4, 4, (3, 3), feature_group_count=4, activation=None, rngs=nnx.Rngs(0))  # depthwise
    ref = nnx.Conv(4, 4, (3, 3), feature_group_count=4, use_bias=False, rngs=nnx.Rngs(0))
    ref.kernel[...] = dw.unit_kernel()
    assert ref.kernel.shape == (3, 3, 1, 4)
    x = _randn(0, (2, 3, 6, 6, 4))  # two batch axes
    np.testing.assert_allclose(_call(dw, x), _call(ref, x), atol=1e-5)
    np.testing.assert_allclose(_call(dw, x[0, 0]), _call(ref, x[0, 0]), atol=1e-5)  # unbatched


def test_precomputed_unit_and_custom_functions_are_used():
    calls = []

    def dot_general(x, k, dims, precision=None, **kw):
        calls.append(("dot", precision))
        return jax.lax.dot_general(x, k, dims, precision=precision, **kw)

    def conv(*args, **kw):
        calls.append(("conv", kw["precision"], kw["feature_group_count"]))
        return jax.lax.conv_general_dilated(*args, **kw)

    def promote(args, dtype=None):
        calls.append(("promote", dtype))
        return nnx.nn.dtypes.promote_dtype(args, dtype=dtype)

    hi = jax.lax.Precision.HIGHEST
    d = L.GmPDense(3, 4, precision=hi, dot_general=dot_general, promote_dtype=promote, rngs=nnx.Rngs(0))
    x = _randn(0, (2, 3))
    u = nnx.jit(lambda d: d.unit())(d)
    with_u = nnx.jit(lambda d, x, u: d(x, unit=u))
    np.testing.assert_allclose(with_u(d, x, u), _call(d, x), rtol=1e-6)
    np.testing.assert_allclose(with_u(d, x, -u), d.radius[...] * jax.nn.relu(-x @ u.T + d.offset[...]), atol=1e-6)
    c = L.GmPConv(4, 4, (3,), feature_group_count=2, precision=hi, conv_general_dilated=conv, rngs=nnx.Rngs(0))
    jax.eval_shape(c, jnp.ones((1, 5, 4)))
    assert ("dot", hi) in calls and ("promote", None) in calls and ("conv", hi, 2) in calls


def test_metadata_under_a_mesh_and_with_partitioning_initializers():
    # Auto axes: under Explicit axes the u(theta) implementations' concatenations need sharding rules.
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        d = L.GmPDense(
            4,
            6,
            theta_init=nnx.with_partitioning(hs.sample_uniform_angles, ("model", None)),
            radius_metadata={"out_sharding": ("model",)},
            offset_metadata={"out_sharding": ("model",)},
            rngs=nnx.Rngs(0),
        )
        c = L.GmPConv(2, 6, (3, 3), theta_metadata={"out_sharding": ("model", None)}, rngs=nnx.Rngs(0))
        one = L.GmPDense(1, 6, radius_metadata={"out_sharding": ("model",)}, rngs=nnx.Rngs(0))
        sp = L.SPDense(6, 3, kernel_metadata={"out_sharding": ("model", None)}, rngs=nnx.Rngs(0))
        wn = L.WNDense(
            6,
            3,
            kernel_metadata={"out_sharding": ("model", None)},
            g_metadata={"out_sharding": (None,)},
            rngs=nnx.Rngs(0),
        )
        bn = L.BNDense(
            3,
            6,
            kernel_metadata={"out_sharding": (None, "model")},
            norm_metadata={"out_sharding": ("model",)},
            rngs=nnx.Rngs(0),
        )
        y = jax.eval_shape(lambda x: sp(d(x)), jnp.ones((2, 4)))
    spec = nnx.get_partition_spec(nnx.state(d))
    assert spec["theta"].get_value() == jax.P("model", None) and spec["offset"].get_value() == jax.P("model")
    assert nnx.get_partition_spec(nnx.state(c))["theta"].get_value() == jax.P("model", None)
    assert nnx.get_partition_spec(nnx.state(one))["direction"].get_value() == jax.P("model")
    assert nnx.get_partition_spec(nnx.state(sp))["kernel"].get_value() == jax.P("model", None)
    assert nnx.get_partition_spec(nnx.state(wn))["v"].get_value() == jax.P("model", None)
    bn_spec = nnx.get_partition_spec(nnx.state(bn))
    assert bn_spec["norm"]["scale"].get_value() == jax.P("model")
    assert bn_spec["norm"]["mean"].get_value() == jax.P("model")
    assert y.shape == (2, 3)


# ---------------------------------------------------------------------------
# mixed precision
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_dt,p_dt,dt,pref",
    [
        (jnp.float32, jnp.float32, None, None),
        (jnp.bfloat16, jnp.float32, None, None),
        (jnp.bfloat16, jnp.bfloat16, None, None),
        (jnp.float32, jnp.float32, jnp.bfloat16, None),
        (jnp.float32, jnp.bfloat16, jnp.float32, None),
        (jnp.bfloat16, jnp.float32, jnp.bfloat16, jnp.float32),
    ],
)
@pytest.mark.standard_dtype_promotion("compares with nnx.Linear's implicit promotion of mixed dtypes")
def test_output_dtype_follows_nnx_linear_and_conv(x_dt, p_dt, dt, pref):
    kw = {"dtype": dt, "param_dtype": p_dt, "preferred_element_type": pref}
    x = jnp.ones((2, 4), x_dt)
    xi = jnp.ones((1, 5, 5, 4), x_dt)
    for ours, ref, inp in (
        (L.GmPDense, nnx.Linear, x),
        (L.SPDense, nnx.Linear, x),
        (L.WNDense, nnx.Linear, x),
        (L.GmPConv, nnx.Conv, xi),
        (L.WNConv, nnx.Conv, xi),
    ):
        args = (4, 3) if ref is nnx.Linear else (4, 3, (3, 3))
        want = _out(lambda ref=ref, args=args: ref(*args, **kw, rngs=nnx.Rngs(0)), inp).dtype
        got = _out(lambda ours=ours, args=args: ours(*args, **kw, rngs=nnx.Rngs(0)), inp).dtype
        assert got == want, (ours.__name__, got, want)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_bf16_compute_with_f32_params_dense_and_conv():
    x = _randn(0, (16, 512))
    f32 = L.GmPDense(512, 64, activation=None, rngs=nnx.Rngs(1))
    bf = L.GmPDense(512, 64, activation=None, dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    y = _call(bf, x)
    assert y.dtype == jnp.bfloat16 and bf.theta[...].dtype == jnp.float32
    assert _rel(y, _call(f32, x)) < 2e-2  # bf16 has an 8-bit mantissa: 2**-8 = 3.9e-3 per rounding
    xi = _randn(2, (2, 8, 8, 16))
    c32 = L.GmPConv(16, 8, (3, 3), activation=None, rngs=nnx.Rngs(3))
    cbf = L.GmPConv(16, 8, (3, 3), activation=None, dtype=jnp.bfloat16, rngs=nnx.Rngs(3))
    yi = _call(cbf, xi)
    assert yi.dtype == jnp.bfloat16 and _rel(yi, _call(c32, xi)) < 2e-2


@pytest.mark.parametrize(
    "make", [lambda **k: L.GmPDense(512, 32, **k), lambda **k: L.GmPConv(8, 32, (8, 8), **k)], ids=["dense", "conv"]
)
def test_bf16_params_unit_computed_in_f32(make):
    with pytest.warns(UserWarning, match="stored in float32"):
        m = make(param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert m.theta[...].dtype == jnp.float32 and m.fan_in == 512  # float32 copies (see the mixed-precision policy)
    u = nnx.jit(lambda m: m.unit())(m)
    assert u.dtype == jnp.float32
    ref = jax.jit(hs.angles_to_unit)(m.theta[...])
    assert float(jnp.max(jnp.abs(jnp.linalg.norm(u, axis=-1) - 1))) <= 1e-6
    assert _rel(u, ref) <= 1e-6
    # computing u from bf16 angles instead (what a naive layer does) is three orders of magnitude worse
    naive = jax.jit(lambda t: hs.angles_to_unit(t, renormalize=False))(m.theta[...].astype(jnp.bfloat16))
    assert float(jnp.max(jnp.abs(jnp.linalg.norm(naive.astype(jnp.float32), axis=-1) - 1))) > 1e-4


@pytest.mark.standard_dtype_promotion("optax.adam's bias correction mixes a Python float with the int32 step count")
def test_bf16_parameters_train_like_float32_parameters():
    """param_dtype=bf16 trains: 20 adam steps move theta and r exactly as float32 parameters with bf16 compute do."""
    x = jax.random.normal(jax.random.key(1), (32, 16)).astype(jnp.bfloat16)

    def train(param_dtype):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = L.GmPDense(16, 8, dtype=jnp.bfloat16, param_dtype=param_dtype, rngs=nnx.Rngs(0))
        start = {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}
        opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

        @nnx.jit
        def step(model, opt):
            grads = nnx.grad(lambda m: jnp.mean(jnp.square(m(x).astype(jnp.float32) - 1.0)))(model)
            opt.update(model, grads)

        for _ in range(20):
            step(model, opt)
        end = {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(model, nnx.Param)).items()}
        return start, end

    start, end = train(jnp.bfloat16)
    assert np.mean(end["theta"] != start["theta"]) > 0.9 and np.all(end["radius"] != start["radius"])
    _, end32 = train(jnp.float32)
    for k in end:
        np.testing.assert_array_equal(end[k], end32[k])


# ---------------------------------------------------------------------------
# layer-level conversion
# ---------------------------------------------------------------------------


def _NORMAL(key, shape, dtype):
    """Standard-normal initializer drawn with numpy (eager jax.random costs seconds of compilation here)."""
    del key
    return jnp.asarray(np.random.default_rng(list(shape)).normal(size=shape), dtype)


def test_from_linear_to_linear_identical_function_float64():
    with jax.enable_x64(True):
        lin = nnx.Linear(7, 5, param_dtype=jnp.float64, kernel_init=_NORMAL, bias_init=_NORMAL, rngs=nnx.Rngs(0))
        x = _randn(1, (11, 7), jnp.float64)
        for act, f in ((None, lambda z: z), ("relu", jax.nn.relu), (jax.nn.leaky_relu, jax.nn.leaky_relu)):
            g = L.GmPDense.from_linear(lin, activation=act)
            assert g.theta[...].dtype == jnp.float64
            y = _call(g, x)
            np.testing.assert_allclose(y, f(_call(lin, x)), atol=1e-10, rtol=0)
            back = g.to_linear()
            np.testing.assert_allclose(back.kernel[...], lin.kernel[...], atol=1e-10)
            np.testing.assert_allclose(f(_call(back, x)), y, atol=1e-10, rtol=0)
        no_bias = nnx.Linear(3, 2, use_bias=False, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        g = L.GmPDense.from_linear(no_bias, impl="cumprod")
        assert g.offset is None and g.impl == "cumprod" and g.to_linear().bias is None


def test_from_conv_to_conv_identical_function_float64():
    cases = [
        ((3,), {"padding": "CAUSAL", "kernel_dilation": 2}),
        ((2, 2, 2), {"strides": 2, "feature_group_count": 2, "input_dilation": 2, "padding": ((0, 0), (1, 0), 1)}),
    ]
    with jax.enable_x64(True):
        for k, kw in cases:
            conv = nnx.Conv(
                4, 6, k, param_dtype=jnp.float64, kernel_init=_NORMAL, bias_init=_NORMAL, rngs=nnx.Rngs(0), **kw
            )
            x = _randn(1, (2, *([4] * len(k)), 4), jnp.float64)
            g = L.GmPConv.from_conv(conv, activation="relu")
            y = _call(conv, x)
            np.testing.assert_allclose(_call(g, x), jax.nn.relu(y), atol=1e-10, rtol=0)
            np.testing.assert_allclose(_call(g.to_conv(), x), y, atol=1e-10, rtol=0)


def test_zero_kernel_column_converts_exactly_or_names_the_column():
    with jax.enable_x64(True):
        lin = nnx.Linear(4, 3, param_dtype=jnp.float64, kernel_init=_NORMAL, rngs=nnx.Rngs(0))
        lin.kernel[...] = lin.kernel[...].at[:, 1].set(0.0)
        x = _randn(1, (9, 4), jnp.float64)
        lin.bias[...] = jnp.array([0.3, -0.5, 0.1])
        g = L.GmPDense.from_linear(lin, activation="relu")  # relu(-0.5) = 0: radius 0 is exact
        assert float(g.radius[1]) == 0.0
        np.testing.assert_allclose(_call(g, x), jax.nn.relu(_call(lin, x)), atol=1e-10, rtol=0)
        with pytest.raises(ValueError, match=r"columns \[1\] .* bias \[-0.5\]"):
            L.GmPDense.from_linear(lin)  # identity: the constant -0.5 is not representable
        lin.bias[...] = jnp.array([0.3, 0.5, 0.1])
        with pytest.raises(ValueError, match=r"columns \[1\]"):
            L.GmPDense.from_linear(lin, activation="relu")
        with pytest.raises(ValueError, match=r"columns \[1\]"):
            hs.from_standard(lin.kernel[...], lin.bias[...])
        lin.bias[...] = jnp.array([0.3, 0.0, 0.1])
        np.testing.assert_allclose(_call(L.GmPDense.from_linear(lin), x), _call(lin, x), atol=1e-10, rtol=0)


def test_fan_in_one_converts_to_fixed_sign_form():
    with jax.enable_x64(True):
        lin = nnx.Linear(1, 4, param_dtype=jnp.float64, kernel_init=_NORMAL, rngs=nnx.Rngs(0))
        lin.kernel[...] = jnp.array([[2.0, -0.5, 0.0, 1.5]])
        lin.bias[...] = jnp.array([1.0, 1.0, -1.0, -3.0])
        g = L.GmPDense.from_linear(lin, activation="relu")
        assert g.theta is None
        np.testing.assert_array_equal(g.direction[...], [1.0, -1.0, 1.0, 1.0])
        x = jnp.linspace(-3, 3, 25, dtype=jnp.float64)[:, None]
        y = _call(lin, x)
        np.testing.assert_allclose(_call(g, x), jax.nn.relu(y), atol=1e-12, rtol=0)
        np.testing.assert_allclose(_call(g.to_linear(), x), jnp.where(g.radius[...] > 0, y, 0.0), atol=1e-12)


def test_conversion_rejects_what_it_cannot_represent():
    lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exact only"):
        L.GmPDense.from_linear(lin, activation="tanh")
    with pytest.raises(TypeError, match="nnx.Linear"):
        L.GmPDense.from_linear(L.SPDense(3, 2, rngs=nnx.Rngs(0)))
    g = L.GmPDense(3, 2, rngs=nnx.Rngs(0))
    g.radius[...] = jnp.array([1.0, -1.0])
    with pytest.raises(ValueError, match=r"units \[1\] have radius < 0"):
        g.to_linear()
    with pytest.raises(ValueError, match="relu or leaky_relu"):
        L.GmPDense(3, 2, activation="tanh", rngs=nnx.Rngs(0)).to_linear()


def test_to_standard_on_leading_dims_and_1d_theta():
    theta = _randn(0, (2, 3, 4))
    radius = abs(_randn(1, (2, 3)))
    offset = _randn(2, (2, 3))
    out = jax.jit(hs.to_standard)(theta, radius, offset)
    assert out["kernel"].shape == (2, 5, 3) and out["bias"].shape == (2, 3)
    one = jax.jit(hs.to_standard)(theta[1], radius[1], offset[1])
    np.testing.assert_allclose(out["kernel"][1], one["kernel"], rtol=1e-6)
    np.testing.assert_allclose(out["bias"][1], one["bias"], rtol=1e-6)
    back = hs.from_standard(out["kernel"], out["bias"])  # eager: checks zero columns
    np.testing.assert_allclose(back["radius"], radius, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(hs.to_standard)(**back)["kernel"], out["kernel"], atol=1e-5)
    with pytest.raises(ValueError, match=r"theta\[None\]"):
        hs.to_standard(theta[0, 0], radius[0, 0], offset[0, 0])


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,shape,expected", [("theta", (4, 3), r"\(4, 2\)"), ("radius", (5,), r"\(4,\)"), ("offset", (4, 1), r"\(4,\)")]
)
def test_wrong_shaped_update_names_parameter_and_shape(name, shape, expected):
    m = L.GmPDense(3, 4, rngs=nnx.Rngs(0))
    state = nnx.state(m, nnx.Param)
    state[name] = nnx.Param(jnp.zeros(shape))
    nnx.update(m, state)
    with pytest.raises(ValueError, match=f"GmPDense.{name} has shape .* expects {expected}"):
        m(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=f"GmPDense.{name}"):
        nnx.jit(lambda m: m(jnp.ones((2, 3))))(m)


def test_activation_by_name():
    x = _randn(0, (4, 6))
    ref = _call(L.GmPDense(6, 4, rngs=nnx.Rngs(0)), x)
    np.testing.assert_array_equal(_call(L.GmPDense(6, 4, activation="relu", rngs=nnx.Rngs(0)), x), ref)
    assert L.GmPDense(3, 2, activation="identity", rngs=nnx.Rngs(0)).activation is None
    assert L.GmPConv(3, 2, (1,), activation="gelu", rngs=nnx.Rngs(0)).activation is jax.nn.gelu
    assert L.SPDense(3, 2, activation="linear", rngs=nnx.Rngs(0)).activation is None
    with pytest.raises(ValueError, match="unknown activation 'rleu'"):
        L.GmPDense(3, 2, activation="rleu", rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="activation must be"):
        L.GmPDense(3, 2, activation=5, rngs=nnx.Rngs(0))


def test_numpy_int_sizes_are_accepted():
    m = L.GmPDense(np.int64(6), np.int32(4), rngs=nnx.Rngs(0))
    assert type(m.in_features) is int and jax.eval_shape(m, jnp.ones((2, 6))).shape == (2, 4)
    c = L.GmPConv(np.int64(4), np.int64(6), (np.int64(3), 3), strides=np.int32(2), rngs=nnx.Rngs(0))
    assert jax.eval_shape(c, jnp.ones((1, 6, 6, 4))).shape == (1, 3, 3, 6)
    assert jax.eval_shape(L.SPDense(np.int16(3), np.uint8(2), rngs=nnx.Rngs(0)), jnp.ones((1, 3))).shape == (1, 2)
    assert L.InputMeanNorm(np.int64(3)).num_features == 3
    for bad in (3.0, True, "3"):
        with pytest.raises(ValueError, match="in_features must be a positive int"):
            L.GmPDense(bad, 4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: L.GmPConv(3, 4, (3, 3), padding="FOO", rngs=nnx.Rngs(0)), ValueError, "padding 'FOO'"),
        (lambda: L.GmPConv(3, 4, (3, 3), padding="CAUSAL", rngs=nnx.Rngs(0)), ValueError, "1-D kernel"),
        (lambda: L.GmPConv(3, 4, (3, 3), padding=((1, 1),), rngs=nnx.Rngs(0)), ValueError, "padding must be"),
        (lambda: L.SPConv(3, 4, (3, 3), padding="FOO", rngs=nnx.Rngs(0)), ValueError, "padding 'FOO'"),
        (lambda: L.GmPConv(3, 4, (3, 3, 3, 3), rngs=nnx.Rngs(0)), ValueError, "length 1, 2 or 3"),
        (lambda: L.GmPConv(4, 6, (3,), feature_group_count=4, rngs=nnx.Rngs(0)), ValueError, "divide"),
        (lambda: L.GmPDense(3, 4, impl="foo", rngs=nnx.Rngs(0)), ValueError, "unknown impl 'foo'"),
        (lambda: L.GmPConv(3, 4, (3,), impl="foo", rngs=nnx.Rngs(0)), ValueError, "unknown impl 'foo'"),
        (lambda: L.GmPDense(3, 4, use_bias=False, use_offset=True, rngs=nnx.Rngs(0)), ValueError, "contradicts"),
        (lambda: L.GmPDense(3, 4, theta_metadata=("model", None), rngs=nnx.Rngs(0)), TypeError, "theta_metadata"),
        (
            lambda: L.GmPDense(3, 4, radius_init=lambda k, s, d: jnp.ones(3), rngs=nnx.Rngs(0)),
            ValueError,
            "radius_init returned shape",
        ),
        (lambda: L.GmPConv(3, 4, (3, 3), mask=jnp.ones((3, 3, 3, 4)), rngs=nnx.Rngs(0)), TypeError, "mask"),
        (
            lambda: L.GmPDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3)), unit=jnp.ones((3, 4))),
            ValueError,
            r"unit must be u\(theta\) of shape \(4, 3\)",
        ),
        (lambda: L.InputMeanNorm(3)(jnp.ones((1, 3))), ValueError, "one sample per feature"),
        (lambda: L.GmPDense(3, 4, rngs=0), TypeError, "nnx.Rngs"),
        (lambda: MLP(2, "4", 1, rngs=nnx.Rngs(0)), TypeError, "hidden"),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_input_mean_norm_single_row_is_fine_in_eval_mode():
    imn = L.InputMeanNorm(3)
    imn(_randn(0, (8, 3)))
    imn.eval()
    np.testing.assert_allclose(imn(jnp.ones((1, 3))), 1.0 - imn.mean[...][None], rtol=1e-6)
    assert L.InputMeanNorm(3)(jnp.ones((1, 2, 2, 3))).shape == (1, 2, 2, 3)  # 4 samples per channel


def test_mlp_accepts_int_hidden():
    a = MLP(6, 4, 1, parameterization="gmp", rngs=nnx.Rngs(0))
    b = MLP(6, (4,), 1, parameterization="gmp", rngs=nnx.Rngs(0))
    assert len(a.hidden) == 1
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(a)), nnx.to_pure_dict(nnx.state(b)))


def test_scan_vjp_under_jacfwd_says_to_use_a_custom_jvp_impl():
    m = L.GmPDense(3, 2, impl="scan_vjp", rngs=nnx.Rngs(0))
    g, params, rest = nnx.split(m, nnx.Param, ...)
    f = lambda p: nnx.merge(g, p, rest)(jnp.ones((1, 3)))  # noqa: E731
    with pytest.raises(TypeError, match="custom_jvp.*'scan_jvp'"):
        jax.jacfwd(f)(params)
    jax.eval_shape(jax.jacrev(f), params)  # reverse mode is what scan_vjp is for


def test_int_kernel_size_means_what_it_means_in_nnx_conv():
    """GmPConv(6, 4, 3) is nnx.Conv(6, 4, 3): a 1-D kernel, and the same function after from_conv."""
    conv = nnx.Conv(6, 4, 3, rngs=nnx.Rngs(0))
    gmp = L.GmPConv(6, 4, 3, rngs=nnx.Rngs(0))
    assert gmp.kernel_size == tuple(conv.kernel_size) == (3,) and gmp.kernel.shape == conv.kernel.shape == (3, 6, 4)
    x = _randn(4, (2, 5, 7, 6))  # a 2-D batch: both treat (2, 5) as batch axes of a 1-D convolution
    np.testing.assert_allclose(L.GmPConv.from_conv(conv)(x), conv(x), atol=1e-5)
    assert gmp(x).shape == conv(x).shape


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_kernel_and_bias_properties_are_the_standard_layer(kind):
    """layer.kernel = (r u)^T and layer.bias = r lambda, read-only, equal to to_linear / to_conv's parameters."""
    if kind == "dense":
        layer = L.GmPDense(
            5, 3, offset_init=nnx.initializers.normal(0.3), radius_init=nnx.initializers.ones, rngs=nnx.Rngs(0)
        )
        std = layer.to_linear()
    else:
        layer = L.GmPConv(2, 3, (2, 2), offset_init=nnx.initializers.normal(0.3), rngs=nnx.Rngs(0))
        std = layer.to_conv()
    np.testing.assert_allclose(layer.kernel, std.kernel[...], atol=1e-6)
    np.testing.assert_allclose(layer.bias, std.bias[...], atol=1e-6)
    assert "kernel" not in nnx.to_pure_dict(nnx.state(layer, nnx.Param))  # computed, never stored
    with pytest.raises(AttributeError):
        layer.kernel = jnp.zeros_like(layer.kernel)
