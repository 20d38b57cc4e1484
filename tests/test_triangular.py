"""Triangular-wave reparameterization: peak maps, Theorem 3.1, TriangleNet / TriangleActivation, two-phase switch."""

import operator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmpjax import triangular as tri
from gmpjax.layers import ReLUMLP, TriangleActivation, TriangleDifference, TriangleNet
from gmpjax.regions import count_linear_regions, relu_mlp
from gmpjax.train.two_phase import TwoPhaseConfig, phase_loop_config, region_snapshot, switch_to_raw, train_two_phase


def _np_forward(layers, x):
    h = x[:, None]
    for k, (W, b) in enumerate(layers):
        h = h @ np.asarray(W) + np.asarray(b)
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h[:, 0]


def _random_peaks(rng, d, lo=0.2, hi=0.8):
    return jnp.asarray(rng.uniform(lo, hi, d + 1), jnp.float64)


# ----------------------------------------------------------------------------- tents and scales


def test_tent_definition_and_relu_form():
    with jax.enable_x64(True):
        a = 0.3
        x = jnp.linspace(0, 1, 1001, dtype=jnp.float64)
        expected = np.where(np.asarray(x) <= a, np.asarray(x) / a, (1 - np.asarray(x)) / (1 - a))
        np.testing.assert_allclose(tri.tent(x, a), expected, atol=1e-15)
        np.testing.assert_allclose(tri.tent_relu(x, a), expected, atol=1e-14)
        assert float(tri.tent(a, a)) == 1.0 and float(tri.tent(0.0, a)) == 0.0 and abs(float(tri.tent(1.0, a))) < 1e-15


def test_theorem31_recurrence_elementwise():
    with jax.enable_x64(True):
        a = _random_peaks(np.random.default_rng(0), 7)
        s = np.asarray(tri.theorem31_scales(a, 0.37))
        an = np.asarray(a)
        assert s.shape == (7,) and s[0] == pytest.approx(0.37)
        for i in range(6):  # s_{i+1} = s_i (1 - a_{i+1}) a_{i+2}
            assert s[i + 1] == pytest.approx(s[i] * (1 - an[i + 1]) * an[i + 2], rel=1e-14)
        # the closed-form ratios S_i = (1 - a_i) a_{i+1}
        np.testing.assert_allclose(tri.scales_to_ratios(s)[1:], (1 - an[1:-1]) * an[2:], rtol=1e-13)


def test_normalised_s0_gives_unit_slope_at_zero():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        for d in (1, 3, 6):
            a = _random_peaks(rng, d)
            s = tri.theorem31_scales(a, tri.normalised_s0(a))
            h = 1e-7  # inside the first linear piece (width >= ~1e-4 for these depths)

            def G(x, a=a, s=s):
                return -(tri.closed_form(x, a, s, -1) - x)

            slope = float((G(jnp.array(h)) - G(jnp.array(0.0))) / h)
            assert slope == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("sign", [-1, 1])
def test_raw_network_equals_closed_form_float64(sign):
    rng = np.random.default_rng(2 + sign)
    with jax.enable_x64(True):
        x = jnp.linspace(0, 1, 4001, dtype=jnp.float64)
        for d in range(1, 11):
            a = _random_peaks(rng, d)
            s = tri.theorem31_scales(a, tri.normalised_s0(a))
            layers = tri.peaks_to_weights(a, s, sign)
            assert len(layers) == d + 1
            y_net = _np_forward(layers, np.asarray(x))
            y_ref = tri.closed_form(x, a, s, sign)
            assert float(jnp.max(jnp.abs(y_net - y_ref))) < 1e-12, d


def test_parameter_count_matches_plain_mlp():
    a = jnp.array([0.3, 0.6, 0.4, 0.5, 0.7, 0.35])
    layers = tri.peaks_to_weights(a, tri.theorem31_scales(a, 0.2), -1)
    assert sum(w.size + b.size for w, b in layers) == tri.num_raw_params(5) == 93


@pytest.mark.parametrize("d", [1, 2, 4, 7])
def test_yarotsky_special_case_sup_error(d):
    with jax.enable_x64(True):
        a = jnp.full((d + 1,), 0.5, jnp.float64)
        s = tri.theorem31_scales(a, 0.25)
        np.testing.assert_allclose(s, 4.0 ** -(np.arange(d) + 1.0), rtol=1e-15)
        # the error x^2 - F_d is maximal at the midpoints between the knots k / 2^d
        mids = (np.arange(2**d) + 0.5) / 2**d
        x = jnp.asarray(np.concatenate([np.linspace(0, 1, 2001), mids]))
        y = relu_mlp(tri.peaks_to_weights(a, s, -1), x[:, None])[:, 0]
        err = np.abs(np.asarray(y) - np.asarray(x) ** 2)
        assert err.max() == pytest.approx(4.0 ** -(d + 1), rel=1e-9)
        knots = np.arange(2**d + 1) / 2**d
        yk = relu_mlp(tri.peaks_to_weights(a, s, -1), jnp.asarray(knots)[:, None])[:, 0]
        assert np.max(np.abs(np.asarray(yk) - knots**2)) < 1e-15


def test_constrained_peaks_range_roundtrip_and_grad():
    u = jnp.linspace(-40, 40, 81)
    a = tri.constrain_peaks(u, 0.05)
    assert float(a.min()) >= 0.05 and float(a.max()) <= 0.95
    v = jnp.array([-2.0, 0.0, 1.5])
    np.testing.assert_allclose(tri.unconstrain_peaks(tri.constrain_peaks(v, 0.02), 0.02), v, atol=1e-5)
    with pytest.raises(ValueError, match="margin"):
        tri.constrain_peaks(v, 0.5)
    with pytest.raises(ValueError, match=r"\(c, 1 - c\)"):
        tri.unconstrain_peaks(jnp.array([0.01, 0.5]), 0.02)


def test_maps_are_jit_grad_vmap_safe():
    a = jnp.array([[0.3, 0.6, 0.45, 0.5], [0.7, 0.25, 0.55, 0.4]], jnp.float32)

    def f(peaks):
        s = tri.theorem31_scales(peaks, tri.normalised_s0(peaks))
        layers = tri.peaks_to_weights(peaks, s, -1)
        x = jnp.linspace(0, 1, 50)[:, None]
        return jnp.mean((relu_mlp(layers, x) - x**3) ** 2)

    vals = jax.jit(jax.vmap(f))(a)
    fj = jax.jit(f)
    loop = jnp.stack([fj(a[0]), fj(a[1])])
    np.testing.assert_allclose(vals, loop, rtol=1e-5)
    g = jax.jit(jax.grad(f))(a[0])
    chex.assert_tree_all_finite(g)
    assert float(jnp.abs(g).sum()) > 0
    assert tri.peaks_to_weights(a[0], tri.theorem31_scales(a[0], 0.3))[1][0].dtype == jnp.float32


@pytest.mark.parametrize(
    "peaks, match",
    [
        ([0.3, 1.2, 0.5], r"open interval \(0, 1\)"),
        ([0.3, float("nan"), 0.5], "NaN"),
        ([0.0, 0.5, 0.5], "open interval"),
    ],
)
def test_invalid_peaks_raise(peaks, match):
    a = jnp.array(peaks)
    with pytest.raises(ValueError, match=match):
        tri.theorem31_scales(a, 0.2)
    with pytest.raises(ValueError, match=match):
        tri.peaks_to_weights(a, jnp.array([0.2, 0.05]), -1)
    with pytest.raises(ValueError, match="peaks"):
        TriangleNet(2, peaks=a)


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="floating-point"):
        tri.check_peaks(jnp.array([1, 2]))
    with pytest.raises(ValueError, match="sign"):
        tri.peaks_to_weights(jnp.array([0.5, 0.5]), jnp.array([0.2]), sign=0)
    with pytest.raises(ValueError, match="length >= 3"):
        tri.peaks_to_weights(jnp.array([0.5, 0.5]), jnp.array([0.2, 0.1, 0.1]))
    with pytest.raises(ValueError, match="positive"):
        tri.peaks_to_weights(jnp.array([0.5, 0.5]), jnp.array([-0.2]))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="depth"):
            TriangleNet(bad, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="depth"):
        TriangleActivation(3, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="features"):
        TriangleActivation(0, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape"):
        TriangleNet(2, peaks=jnp.array([0.3, 0.5]))  # needs depth + 1 = 3 peaks
    net = TriangleNet(2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(\.\.\., 1\)"):
        net(jnp.ones((5,)))
    with pytest.raises(ValueError, match=r"\(\.\.\., 1\)"):
        net(jnp.ones((5, 2)))
    with pytest.raises(TypeError, match="floating"):
        net(jnp.ones((5, 1), jnp.int32))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        TriangleActivation(3, 2, rngs=nnx.Rngs(0))(jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="scales"):
        TriangleNet(2, scales="fixed", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="init"):
        ReLUMLP((1, 4, 1), init="he", rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------- modules


@pytest.mark.parametrize(
    "kw", [dict(), dict(scales="free"), dict(s0="trained", sign=1, output_affine=True), dict(s0="normalised")]
)
def test_trianglenet_matches_closed_form_and_to_raw_preserves(kw):
    with jax.enable_x64(True):
        net = TriangleNet(6, param_dtype=jnp.float64, rngs=nnx.Rngs(3), **kw)
        x = jnp.linspace(0, 1, 3001, dtype=jnp.float64)
        y = net(x[:, None])[:, 0]
        if kw.get("scales") != "free":  # free scales may clip (research notes 2.5); the others are exact
            assert float(jnp.max(jnp.abs(y - net.closed_form(x)))) < 1e-12
        raw = net.to_raw()
        assert isinstance(raw, ReLUMLP)
        xx = jnp.linspace(-0.5, 1.5, 501, dtype=jnp.float64)[:, None]
        assert float(jnp.max(jnp.abs(raw(xx) - net(xx)))) == 0.0
        assert count_linear_regions(net) == 2**6 if kw.get("scales") != "free" else True


def test_raw_mode_starts_from_the_peak_function():
    peaks = jnp.array([0.3, 0.6, 0.45, 0.5])
    a = TriangleNet(3, peaks=peaks)
    b = TriangleNet(3, peaks=peaks, mode="raw")
    x = jnp.linspace(0, 1, 101)[:, None]
    np.testing.assert_allclose(a(x), b(x), atol=1e-6)
    assert set(nnx.state(b, nnx.Param).keys()) == {"raw"}
    with pytest.raises(ValueError, match="mode='peaks'"):
        b.peaks()


def test_triangle_activation_block_diagonal_equals_subnets_one_by_one():
    with jax.enable_x64(True):
        F = 5
        act = TriangleActivation(F, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
        x = jax.random.uniform(jax.random.key(0), (7, F), jnp.float64, -0.5, 1.5)
        y = act(x)
        one_by_one = jnp.stack([relu_mlp(act.subnet_layers(f), x[:, f : f + 1])[:, 0] for f in range(F)], -1)
        np.testing.assert_allclose(y, one_by_one, atol=1e-14)
        bd = act.block_diagonal_layers()
        # hidden weights really are block diagonal with 4x4 blocks
        W = np.asarray(bd[1][0])
        mask = np.kron(np.eye(F), np.ones((4, 4))) > 0
        assert W.shape == (4 * F, 4 * F) and np.all(W[~mask] == 0)
        np.testing.assert_allclose(relu_mlp(bd, x), y, atol=1e-14)
        # each subnet is a convex function with 2^d regions on [0, 1]
        assert count_linear_regions(act.subnet_layers(2)) == 8
        raw = act.to_raw()
        assert raw.mode == "raw" and act.mode == "peaks"
        np.testing.assert_allclose(raw(x), y, atol=1e-14)


def test_block_diagonal_difference_of_subnets():
    with jax.enable_x64(True):
        n1 = TriangleNet(3, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        n2 = TriangleNet(3, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
        layers = tri.block_diagonal([n1.layer_arrays(), n2.layer_arrays()], (1.0, -1.0))
        x = jnp.linspace(0, 1, 301, dtype=jnp.float64)[:, None]
        np.testing.assert_allclose(relu_mlp(layers, x), n1(x) - n2(x), atol=1e-14)
        assert layers[1][0].shape == (8, 8)


def test_triangle_difference_is_f1_minus_f2_and_to_raw_is_exact():
    with jax.enable_x64(True):
        net = TriangleDifference(3, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        x = jnp.linspace(-0.25, 1.25, 301, dtype=jnp.float64)[:, None]
        np.testing.assert_allclose(net(x), net.f1(x) - net.f2(x), atol=0)
        raw = net.to_raw()
        assert isinstance(raw, ReLUMLP) and [W.shape for W, _ in raw.layer_arrays()] == [(1, 8), (8, 8), (8, 8), (8, 1)]
        np.testing.assert_allclose(raw(x), net(x), atol=1e-14)
        W = np.asarray(raw.layer_arrays()[1][0])  # hidden weights: two 4x4 blocks
        assert np.all(W[:4, 4:] == 0) and np.all(W[4:, :4] == 0)
        # each subnet is convex with 2^d regions; both have a trainable gain and offset
        assert count_linear_regions(net.f1) == count_linear_regions(net.f2) == 8
        assert {"gain", "offset"} <= set(nnx.state(net.f1, nnx.Param).keys())
    with pytest.raises(ValueError, match="sign"):
        TriangleDifference(3, sign=1, rngs=nnx.Rngs(0))


# ----------------------------------------------------------------------------- two-phase schedule


def _mse(model, batch):
    x, y = batch
    return jnp.mean((model(x) - y) ** 2)


def test_two_phase_regions_exact_in_phase1_and_switch_keeps_function():
    with jax.enable_x64(True):
        d = 4
        x = jnp.linspace(0, 1, 200, dtype=jnp.float64)[:, None]
        batch = (x, x**3)
        keys = jax.random.split(jax.random.key(0), 3)

        def snap(phase, graphdef, state):
            counts = []
            for r in range(3):
                s = jax.tree.map(operator.itemgetter(r), state)
                counts.append(count_linear_regions(nnx.merge(graphdef, s.params, s.rest)))
            return {"regions": counts}

        cfg = TwoPhaseConfig(pretrain_steps=90, finetune_steps=0, pretrain_lr=1e-2, chunk_steps=30)
        res = train_two_phase(
            lambda k: TriangleNet(d, param_dtype=jnp.float64, rngs=nnx.Rngs(k)),
            keys,
            _mse,
            batch,
            cfg,
            snapshot=snap,
            progress=False,
        )
        assert [s["phase"] for s in res.snapshots] == ["init", "pretrain", "pretrain", "pretrain", "switch"]
        for s in res.snapshots:
            assert s["regions"] == [2**d] * 3, s
        assert res.losses[:, -1].mean() < res.losses[:, 0].mean()  # phase 1 learns
        # the switch keeps the function: the model right before == right after (finetune_steps = 0)
        for r in range(3):
            pre = jax.tree.map(operator.itemgetter(r), res.pretrain_state)
            before = nnx.merge(res.pretrain_graphdef, pre.params, pre.rest)
            after = res.model(r)
            assert isinstance(after, ReLUMLP)
            np.testing.assert_allclose(after(x), before(x), atol=1e-13)
        # phase 2 then starts from a fresh optimizer state (Adam count 0) and the same step counter
        _, sw = switch_to_raw(
            res.pretrain_graphdef, jax.tree.map(lambda a: a[0], res.pretrain_state), __import__("optax").adam(1e-3)
        )
        assert int(sw.step) == 90
        assert int(jax.tree.leaves(sw.opt_state)[0]) == 0


def test_init_method_net_builds_the_papers_rows():
    from gmpjax.layers.triangle import INIT_METHODS, init_method_net

    x = jnp.linspace(0, 1, 33)[:, None]
    kaiming = init_method_net("kaiming", 3, rngs=nnx.Rngs(4))
    np.testing.assert_array_equal(kaiming(x), ReLUMLP((1, 4, 4, 4, 1), init="kaiming", rngs=nnx.Rngs(4))(x))
    peaks = {"margin": 0.05, "peak_range": (0.3, 0.7)}
    noreg, thm31 = (
        init_method_net(m, 3, sign=1, output_affine=True, rngs=nnx.Rngs(0), **peaks) for m in ("noreg", "thm31")
    )
    assert (noreg.scale_mode, thm31.scale_mode, thm31.sign, thm31.margin) == ("free", "theorem31", 1, 0.05)
    convex = init_method_net("thm31", 3, rngs=nnx.Rngs(0), **peaks)  # Theorem 3.1, sign -1: exactly 2^d regions
    assert count_linear_regions(convex.layer_arrays(), min_width=1e-6) == 8
    skip = init_method_net("skip", 3, rngs=nnx.Rngs(0), **peaks)
    assert isinstance(skip, TriangleNet) and skip(x).shape == (33, 1)
    assert len(INIT_METHODS) == 5
    with pytest.raises(ValueError, match="unknown method 'xavier'"):
        init_method_net("xavier", 3, rngs=nnx.Rngs(0))


def test_two_phase_continues_training_after_switch_and_validates_config():
    x = jnp.linspace(0, 1, 100)[:, None]
    cfg = TwoPhaseConfig(pretrain_steps=20, finetune_steps=20, chunk_steps=20)
    res = train_two_phase(
        lambda k: TriangleNet(3, rngs=nnx.Rngs(k)),
        jax.random.split(jax.random.key(1), 2),
        _mse,
        (x, x**3),
        cfg,
        progress=False,
    )
    assert res.losses.shape == (2, 40) and res.switch_step == 20
    # summary: per-replica MSEs of the returned models, the best run and its layers
    test = (x[::7], x[::7] ** 3)
    summ = res.summary((x, x**3), test)
    for r in range(2):
        np.testing.assert_allclose(summ["train_mse"][r], float(jnp.mean((res.model(r)(x) - x**3) ** 2)), rtol=1e-5)
    assert summ["pretrain_mse"].shape == summ["test_mse"].shape == (2,) and summ["switch_step"] == 20
    assert summ["best_run"] == int(np.argmin(summ["test_mse"])) and summ["loss_curve_median"].shape == (40,)
    best = res.model(summ["best_run"]).layer_arrays()
    for (W, b), (W2, b2) in zip(summ["best_layers"], best, strict=True):
        np.testing.assert_allclose(W, W2) and np.testing.assert_allclose(b, b2)
    assert "test_mse" not in res.summary((x, x**3)) and res.summary((x, x**3))["best_run"] == int(
        np.argmin(summ["train_mse"])
    )
    # the first phase-2 loss equals the last phase-1 loss up to one update (no jump at the switch)
    jump = np.abs(res.losses[:, 20] - res.losses[:, 19]) / res.losses[:, 19]
    assert np.all(jump < 0.2)
    with pytest.raises(ValueError, match="pretrain_steps"):
        TwoPhaseConfig(pretrain_steps=-1)
    with pytest.raises(ValueError, match="optimizer"):
        TwoPhaseConfig(optimizer="lbfgs")
    with pytest.raises(TypeError, match="TwoPhaseConfig"):
        train_two_phase(
            lambda k: TriangleNet(2, rngs=nnx.Rngs(k)),
            jax.random.split(jax.random.key(1), 2),
            _mse,
            (x, x),
            {"pretrain_steps": 1},
        )


@pytest.mark.standard_dtype_promotion(
    "trains with optax.adam (int32 count times a Python float in its bias correction)"
)
def test_two_phase_chunks_do_not_change_the_result_and_baselines_skip_phase1():
    x = jnp.linspace(0, 1, 64)[:, None]
    keys = jax.random.split(jax.random.key(2), 2)
    runs = [
        train_two_phase(
            lambda k: TriangleNet(3, rngs=nnx.Rngs(k)),
            keys,
            _mse,
            (x, x**3),
            TwoPhaseConfig(12, 9, chunk_steps=c),
            snapshot=region_snapshot(1e-6),
            progress=False,
        )  # fmt: skip
        for c in (5, 100)
    ]
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)
    chex.assert_trees_all_equal(runs[0].state.params, runs[1].state.params)
    assert [(s["phase"], s["step"]) for s in runs[0].snapshots] == [
        ("init", 0), ("pretrain", 5), ("pretrain", 10), ("pretrain", 12), ("switch", 12),
        ("finetune", 17), ("finetune", 21),
    ]  # fmt: skip
    assert all(s["regions"] == [8, 8] for s in runs[0].snapshots[:5])
    assert runs[0].outputs(x).shape == (2, 64, 1) and runs[0].stacked_layers()[1][0].shape == (2, 4, 4)
    base = train_two_phase(
        lambda k: ReLUMLP((1, 4, 1), rngs=nnx.Rngs(k)), keys, _mse, (x, x), TwoPhaseConfig(12, 9), progress=False
    )
    assert base.switch_step == 0 and base.losses.shape == (2, 9)
    cfg = phase_loop_config(7)
    assert (cfg.max_epochs, cfg.batching, cfg.rules.patience, cfg.rules.restore, cfg.monitor_split) == (
        7,
        "full",
        None,
        "never",
        None,
    )
