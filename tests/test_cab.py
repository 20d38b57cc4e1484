"""CAB geometry (gmpjax.cab) against hand-computed cases and the layers' own forward passes."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax import cab
from gmpjax import hyperspherical as hs
from gmpjax.layers import make_dense
from gmpjax.models import MLP
from gmpjax.train import init_replicas, init_train_state, make_train_step
from gmpjax.train.loop import LoopConfig, fit
from gmpjax.train.rules import Rules


# ----------------------------------------------------------------------------- hand-computed 2-D units
def test_sp_location_hand_case():
    # w = (3, 4), b = -5: ||w||^2 = 25, phi = 5/25 * (3, 4) = (0.6, 0.8), distance |b|/||w|| = 1.
    w, b = jnp.array([3.0, 4.0]), jnp.array(-5.0)
    np.testing.assert_allclose(cab.sp_location(w, b), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(cab.sp_direction(w), [0.6, 0.8], rtol=1e-6)
    # phi lies on the boundary w . phi + b = 0
    assert abs(float(w @ cab.sp_location(w, b) + b)) < 1e-5


def test_sp_location_zero_bias_and_zero_weight():
    np.testing.assert_array_equal(cab.sp_location(jnp.array([1.0, -2.0]), 0.0), [0.0, 0.0])
    out = cab.sp_location(jnp.zeros(2), 1.0)  # no boundary: reported as 0, not NaN
    assert np.all(np.isfinite(out))


def test_gmp_location_hand_case():
    # theta = pi/3 -> u = (1/2, sqrt(3)/2); lambda = 2 -> phi = -(1, sqrt(3)).
    u = cab.gmp_direction(jnp.array([math.pi / 3]))
    np.testing.assert_allclose(cab.gmp_location(u, jnp.array(2.0)), [-1.0, -math.sqrt(3)], atol=1e-6)


def test_gmp_and_sp_agree_through_from_standard():
    key = jax.random.key(0)
    w = jax.random.normal(key, (7, 4))
    b = jax.random.normal(jax.random.key(1), (7,))
    g = hs.from_standard(w.T, b)
    u = cab.gmp_direction(g["theta"])
    np.testing.assert_allclose(cab.gmp_location(u, g["offset"]), cab.sp_location(w, b), atol=1e-5)
    np.testing.assert_allclose(u, cab.sp_direction(w), atol=1e-5)


def test_wn_location_hand_case_1d():
    # 1-D: phi = -b / (sign(v) g); v = -2, g = 3, b = 1.5 -> 0.5.
    np.testing.assert_allclose(cab.wn_location(jnp.array([-2.0]), jnp.array(3.0), jnp.array(1.5)), [0.5])


def test_bn_effective_bias_hand_case_and_boundary():
    # b = 1, gamma = 2, beta = 4, mean = 3, var = 8, eps = 1: sigma = 3, b_eff = 1 + 3 * 4 / 2 - 3 = 4.
    assert float(cab.bn_effective_bias(1.0, 2.0, 4.0, 3.0, 8.0, 1.0)) == pytest.approx(4.0)
    w = jnp.array([1.0, 2.0])
    phi = cab.bn_location(w, 1.0, 2.0, 4.0, 3.0, 8.0, 1.0)
    bn = lambda x: 2.0 * (w @ x + 1.0 - 3.0) / 3.0 + 4.0  # noqa: E731
    assert abs(float(bn(phi))) < 1e-6


# ----------------------------------------------------------------------------- angles
def test_angle_between_basic_cases():
    e1, e2 = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
    assert float(cab.angle_between(e1, e2)) == pytest.approx(math.pi / 2)
    assert float(cab.angle_between(e1, 5 * e1)) == pytest.approx(0.0, abs=1e-7)
    assert float(cab.angle_between(e1, -e1)) == pytest.approx(math.pi)


def test_angle_between_matches_arccos_eq7():
    a = np.random.RandomState(0).randn(50, 5)
    b = np.random.RandomState(1).randn(50, 5)
    ref = np.arccos(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
    with jax.enable_x64(True):
        np.testing.assert_allclose(cab.angle_between(jnp.asarray(a), jnp.asarray(b)), ref, rtol=1e-10)


def test_angle_between_small_angles_are_accurate():
    with jax.enable_x64(True):
        t = 1e-9
        got = float(cab.angle_between(jnp.array([1.0, 0.0]), jnp.array([math.cos(t), math.sin(t)])))
    assert got == pytest.approx(t, rel=1e-6)  # arccos of the rounded cosine would give 0


@pytest.mark.parametrize("delta", [1e-3, 1e-6])
def test_worst_case_perturbation_rotates_by_180_degrees(delta):
    # Prop. 2.3 / 2.4: eps = -(1 + delta) w turns the SP (and WN) normal by exactly pi.
    with jax.enable_x64(True):
        w = jnp.array([1.6e-3, -0.6e-3])
        eps = -(1 + delta) * w
        assert float(cab.angle_between(w, w + eps)) == pytest.approx(math.pi, abs=1e-8)
        g = jnp.linalg.norm(w)
        assert float(cab.angle_between(cab.wn_weight(w, g), cab.wn_weight(w + eps, g))) == pytest.approx(math.pi)
        # The boundary's location jumps to -phi / delta (opposite side, 1/delta times farther).
        b = 1e-3
        np.testing.assert_allclose(cab.sp_location(w + eps, b), -cab.sp_location(w, b) / delta, rtol=1e-6)


def test_gmp_angle_change_bounded_by_perturbation_norm():
    # Thm 3.7: <u(theta), u(theta + eps)> <= ||eps||_2 (and ~ ||eps||_M for small eps).
    with jax.enable_x64(True):
        theta = hs.sample_uniform_angles(jax.random.key(2), (64, 5), jnp.float64)
        eps = 1e-4 * jax.random.normal(jax.random.key(3), (64, 5), jnp.float64)
        ang = cab.angle_between(cab.gmp_direction(theta), cab.gmp_direction(theta + eps))
        assert bool(jnp.all(ang <= jnp.linalg.norm(eps, axis=-1) * (1 + 1e-6)))
        np.testing.assert_allclose(ang, hs.angular_change(theta, eps), rtol=1e-3)


# ----------------------------------------------------------------------------- histories
def test_max_changes_on_a_hand_made_history():
    loc = jnp.array(
        [
            [[0.0, 0.0], [1.0, 1.0]],
            [[3.0, 4.0], [1.0, 1.0]],  # unit 0 moves by 5
            [[3.0, 4.0], [1.0, 0.5]],
        ]
    )  # unit 1 moves by 0.5
    np.testing.assert_allclose(cab.max_location_change(loc), [5.0, 0.5])
    d = jnp.array(
        [
            [[1.0, 0.0], [0.0, 1.0]],
            [[0.0, 1.0], [0.0, 1.0]],  # unit 0 turns 90 deg
            [[0.0, 1.0], [0.0, -1.0]],
        ]
    )  # unit 1 turns 180 deg
    np.testing.assert_allclose(cab.max_angle_change(d), [math.pi / 2, math.pi], atol=1e-6)
    ch = cab.cab_changes(cab.CAB(d, loc))
    chex.assert_shape([ch["max_dphi"], ch["max_dtheta"]], (2,))


def test_step_change_is_cab_changes_of_two_steps():
    prev = cab.CAB(jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([[0.0, 0.0], [1.0, 1.0]]))
    new = cab.CAB(jnp.array([[0.0, 1.0], [0.0, -1.0]]), jnp.array([[3.0, 4.0], [1.0, 0.5]]))
    ch = cab.step_change(prev, new)
    np.testing.assert_allclose(ch["max_dphi"], 5.0)  # unit 0 moves by 5, unit 1 by 0.5
    np.testing.assert_allclose(ch["max_dtheta"], math.pi, atol=1e-6)  # unit 1 turns 180 deg
    # leading axes (replicas, steps) pass through: (R, T, m, n) -> (R, T), equal to cab_changes of each pair
    key = jax.random.split(jax.random.key(0), 4)
    hist = cab.CAB(*(jax.random.normal(k, (3, 6, 5, 2)) for k in key[:2]))
    ch = cab.step_change(cab.CAB(*(a[:, :-1] for a in hist)), cab.CAB(*(a[:, 1:] for a in hist)))
    ref = cab.cab_changes(hist)
    chex.assert_shape([ch["max_dphi"], ch["max_dtheta"]], (3, 5))
    for k in ref:
        np.testing.assert_allclose(ch[k], ref[k], rtol=1e-6)


def test_step_change_as_the_fit_loops_track_hook():
    from gmpjax.train.loop import LoopConfig, fit

    tx = optax.sgd(0.05)
    graphdef, state = init_train_state(MLP(2, (4,), 1, parameterization="gmp", rngs=nnx.Rngs(0)), tx)
    track = cab.track_cab(graphdef)
    x = jax.random.normal(jax.random.key(1), (12, 2))
    data = {"train": (x, jnp.sin(x[:, :1]))}
    loss = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)  # noqa: E731
    hook = lambda prev, new: {**cab.step_change(track(prev), track(new)), "cab": track(new)}  # noqa: E731
    cfg = LoopConfig(max_epochs=3, batching="drop", batch_size=4, monitor_split=None)
    res = jax.jit(
        lambda s: fit(make_train_step(graphdef, tx, loss), None, s, data, cfg, key=jax.random.key(2), track=hook)
    )(state)
    tr = res.history["track"]
    chex.assert_shape([tr["max_dphi"], tr["max_dtheta"]], (3, 3))  # (epochs, steps per epoch)
    flat = jax.tree.map(lambda a: a.reshape((9,) + a.shape[2:]), tr["cab"])
    hist = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), track(state), flat)
    ref = cab.cab_changes(cab.CAB(*hist))
    np.testing.assert_allclose(tr["max_dphi"].reshape(9), ref["max_dphi"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(tr["max_dtheta"].reshape(9), ref["max_dtheta"], rtol=1e-5, atol=1e-7)
    assert float(tr["max_dtheta"].max()) > 0


# ----------------------------------------------------------------------------- layers
def _randomize(layer: nnx.Module, key) -> None:
    """Give every parameter/statistic a random value (positive radius/variance) so no case is trivial."""
    state = nnx.state(layer)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(key, len(leaves))
    new = [a + 0.7 * jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys, strict=True)]
    layer_state = jax.tree.unflatten(treedef, new)
    nnx.update(layer, layer_state)
    for path, var in nnx.iter_graph(layer):
        if isinstance(var, nnx.Variable) and path and path[-1] in ("var", "radius"):
            var[...] = jnp.abs(var[...]) + 0.5
        if isinstance(var, nnx.Variable) and path and path[-1] == "direction":
            var[...] = jnp.where(var[...] == 0, 1.0, jnp.sign(var[...])).astype(var[...].dtype)


@pytest.mark.parametrize("name", ["sp", "wn", "bn", "gmp", "gmp_imn", "wn_mbn"])
@pytest.mark.parametrize("n", [1, 3])
def test_cab_of_layer_is_where_the_unit_switches_on(name, n):
    if n == 1 and name == "gmp_imn":
        pytest.skip("IMN on a 1-D input is not used")
    layer = make_dense(name, n, 4, activation=None, rngs=nnx.Rngs(0))
    _randomize(layer, jax.random.key(n))
    layer.eval()  # BN / IMN / MBN: moving statistics, as cab_of_layer assumes
    c = cab.cab_of_layer(layer)
    chex.assert_shape([c.direction, c.location], (4, n))
    np.testing.assert_allclose(jnp.linalg.norm(c.direction, axis=-1), 1.0, rtol=1e-5)
    # row i of the batch probes unit i: on its boundary, then 0.3 into its active / inactive side
    z_on = jnp.diagonal(layer(c.location))
    np.testing.assert_allclose(z_on, 0.0, atol=1e-4)
    z_in = jnp.diagonal(layer(c.location + 0.3 * c.direction))
    z_out = jnp.diagonal(layer(c.location - 0.3 * c.direction))
    assert bool(jnp.all(z_in > 0)) and bool(jnp.all(z_out < 0)), (z_in, z_out)


def test_cab_of_layer_rejects_unknown_layers():
    with pytest.raises(TypeError, match="unsupported layer"):
        cab.cab_of_layer(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="floating-point"):
        cab.sp_location(jnp.array([1, 2]), 0.0)
    with pytest.raises(ValueError, match="history"):
        cab.max_location_change(jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="last axis"):
        cab.safe_normalize(jnp.array(1.0))


# ----------------------------------------------------------------------------- tracking under jit/vmap/scan
def test_track_cab_vmaps_over_replicas_and_runs_as_the_loops_track_hook():
    tx = optax.adam(0.05)
    make = lambda k: MLP(2, (5,), 1, parameterization="gmp", rngs=nnx.Rngs(k))  # noqa: E731
    keys = jax.random.split(jax.random.key(0), 3)
    graphdef, state = init_replicas(make, keys, tx)
    track = cab.track_cab(graphdef)
    c = jax.jit(jax.vmap(track))(state)
    chex.assert_shape([c.direction, c.location], (3, 5, 2))
    # replica 1 computed alone agrees with the vmapped value
    g1, s1 = init_train_state(make(keys[1]), tx)
    np.testing.assert_allclose(cab.track_cab(g1)(s1).direction, c.direction[1], atol=1e-6)

    loss = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)  # noqa: E731
    step = make_train_step(graphdef, tx, loss)
    batch = (jax.random.normal(jax.random.key(1), (16, 2)), jnp.ones((16, 1)))
    cfg = LoopConfig(7, monitor_split=None, rules=Rules(monitor="loss", restore="never"))
    hook = lambda prev, new: track(new)  # noqa: E731
    run = jax.jit(jax.vmap(lambda s: fit(step, None, s, {"train": batch}, cfg, key=jax.random.key(0), track=hook)))
    out = run(state)
    hist = jax.tree.map(lambda a: a[:, :, 0], out.history["track"])  # (replicas, epochs, steps=1, ...) -> one step
    chex.assert_shape([hist.location, hist.direction], (3, 7, 5, 2))
    full = jax.tree.map(lambda a, b: jnp.concatenate([a[:, None], b], 1), c, hist)
    ch = cab.cab_changes(full)
    chex.assert_shape([ch["max_dphi"], ch["max_dtheta"]], (3, 7))
    chex.assert_tree_all_finite(ch)
    np.testing.assert_allclose(hist.location[:, -1], jax.vmap(track)(out.last).location, atol=1e-6)


def test_track_cab_needs_a_hidden_layer_or_select():
    graphdef, state = init_train_state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    with pytest.raises(TypeError, match="select"):
        cab.track_cab(graphdef)(state)


def test_plot_cab_draws_the_boundary_through_phi_orthogonal_to_u():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u = jnp.array([0.6, 0.8])
    c = cab.CAB(u, cab.gmp_location(u, jnp.array(-0.5)))  # phi = 0.5 u
    fig, ax = plt.subplots()
    assert cab.plot_cab(ax, c, "r", label="unit") is ax
    line, segment = ax.get_lines()
    pts = np.stack(line.get_data(), 1)
    np.testing.assert_allclose((pts - np.asarray(c.location)) @ np.asarray(u), 0.0, atol=1e-9)  # on the boundary
    np.testing.assert_allclose(np.stack(segment.get_data(), 1), [[0, 0], [0.3, 0.4]], atol=1e-7)  # origin -> phi
    with pytest.raises(ValueError, match="one 2-D unit"):
        cab.plot_cab(ax, cab.CAB(jnp.ones((3, 2)), jnp.ones((3, 2))))
    plt.close(fig)
