"""Parameter labels and the weight-decay mask: decayed adamw must not turn GmP units towards e_1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax import hyperspherical as hs
from gmpjax.layers import GmPDense, InputMeanNorm, SPDense, WNDense
from gmpjax.train import optim
from gmpjax.train.engine import init_train_state, make_train_step


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.imn = InputMeanNorm(6)
        self.hidden = GmPDense(6, 5, rngs=rngs)
        self.wn = WNDense(5, 4, rngs=rngs)
        self.head = SPDense(4, 2, activation=None, rngs=rngs)
        self.blocks = nnx.List([GmPDense(2, 2, rngs=rngs)])

    def __call__(self, x):
        return self.blocks[0](self.head(self.wn(self.hidden(self.imn(x)))))


def _pure(tree):
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def test_labels_on_module_state_trainstate_and_pure_dict():
    model = Net(nnx.Rngs(0))
    expected = {
        "hidden": {"theta": "angle", "radius": "radius", "offset": "offset"},
        "wn": {"v": "other", "g": "other", "bias": "other"},
        "head": {"kernel": "other", "bias": "other"},
        "blocks": {0: {"theta": "angle", "radius": "radius", "offset": "offset"}},
    }
    params = nnx.state(model, nnx.Param)
    _, state = init_train_state(model, optax.sgd(0.1))
    for tree in (model, params, state.params, nnx.to_pure_dict(params)):
        assert _pure(optim.param_labels(tree)) == expected
    mask = _pure(optim.weight_decay_mask(params))
    assert mask["hidden"] == {"theta": False, "radius": False, "offset": False}
    assert mask["wn"] == {"v": True, "g": False, "bias": False}
    assert mask["head"] == {"kernel": True, "bias": False}
    assert _pure(optim.weight_decay_mask(params, decay_radius=True))["hidden"]["radius"] is True
    assert set(jax.tree.leaves(optim.param_labels(params))) <= set(optim.LABELS)
    with pytest.raises(ValueError, match="no array leaves"):
        optim.param_labels({})
    with pytest.raises(ValueError, match="weight_decay"):
        optim.masked_weight_decay(-1.0)


_ADAM = "optax.adamw's bias correction mixes a Python float with the int32 step count (an optax limitation)"


def _zero_grad_adamw_run(mask, steps: int = 200, wd: float = 0.1):
    """Train a GmP layer with a loss whose data gradient is exactly zero; return (u before, u after, state)."""
    layer = GmPDense(8, 4, rngs=nnx.Rngs(3))
    tx = optax.adamw(1e-2, weight_decay=wd, mask=mask)
    graphdef, state = init_train_state(layer, tx)
    loss_fn = lambda model, batch: 0.0 * jnp.sum(model(batch))  # noqa: E731
    step = jax.jit(make_train_step(graphdef, tx, loss_fn))
    theta0 = np.asarray(state.params["theta"][...])
    x = jnp.ones((2, 8))
    for _ in range(steps):
        state, _ = step(state, x)
    return theta0, np.asarray(state.params["theta"][...]), state


@pytest.mark.standard_dtype_promotion(_ADAM)
def test_masked_adamw_leaves_theta_unchanged_under_zero_gradient():
    theta0, theta1, state = _zero_grad_adamw_run(optim.weight_decay_mask)
    np.testing.assert_array_equal(theta1, theta0)
    np.testing.assert_array_equal(np.asarray(state.params["radius"][...]), 1.0)


@pytest.mark.standard_dtype_promotion(_ADAM)
def test_unmasked_adamw_turns_units_towards_e1():
    """The hazard the mask prevents: default adamw decay shrinks theta, so u(theta) -> u(0) = e_1."""
    theta0, theta1, _ = _zero_grad_adamw_run(None)
    assert np.all(np.abs(theta1) < np.abs(theta0))
    u0, u1 = np.asarray(hs.angles_to_unit(theta0)), np.asarray(hs.angles_to_unit(theta1))
    assert np.all(u1[:, 0] > u0[:, 0] + 0.05), (u0[:, 0], u1[:, 0])


def test_multi_transform_with_labels_freezes_angles_only():
    model = Net(nnx.Rngs(1))
    tx = optax.multi_transform(
        {"angle": optax.set_to_zero(), "radius": optax.sgd(0.1), "offset": optax.sgd(0.1), "other": optax.sgd(0.1)},
        optim.param_labels,
    )
    graphdef, state = init_train_state(model, tx)
    loss_fn = lambda m, x: jnp.mean(m(x) ** 2)  # noqa: E731
    new, _ = jax.jit(make_train_step(graphdef, tx, loss_fn))(state, jax.random.normal(jax.random.key(0), (16, 6)))
    old_p, new_p = nnx.to_pure_dict(state.params), nnx.to_pure_dict(new.params)
    np.testing.assert_array_equal(new_p["hidden"]["theta"], old_p["hidden"]["theta"])
    assert not np.allclose(new_p["head"]["kernel"], old_p["head"]["kernel"])
    assert not np.allclose(new_p["hidden"]["radius"], old_p["hidden"]["radius"])


def test_masked_sgd_decay_chain_matches_manual_decay():
    params = {
        "layer": {"theta": jnp.full((2, 3), 0.5), "radius": jnp.ones(2), "offset": jnp.ones(2)},
        "kernel": jnp.full((3, 2), 2.0),
        "bias": jnp.ones(2),
    }
    tx = optax.chain(optim.masked_weight_decay(0.5), optax.sgd(0.1))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * 2.0)
    for leaf in (updates["layer"]["theta"], updates["layer"]["radius"], updates["layer"]["offset"], updates["bias"]):
        np.testing.assert_array_equal(leaf, 0.0)


def test_make_optimizer_decays_through_the_mask():
    params = {
        "conv": {"theta": jnp.full((2, 3), 0.5), "radius": jnp.ones(2)},
        "head": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.ones(2)},
    }
    zeros = jax.tree.map(jnp.zeros_like, params)
    tx = optim.make_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.5)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1 * 0.5 * 2.0)
    for leaf in (updates["conv"]["theta"], updates["conv"]["radius"], updates["head"]["bias"]):
        np.testing.assert_array_equal(leaf, 0.0)
    tx = optim.make_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.5, decay_all=True)  # unmasked L2 decays theta
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["theta"], -0.1 * 0.5 * 0.5)


def test_make_optimizer_adamw_is_the_clipped_masked_adamw_with_an_injected_rate():
    """The injected-hyperparameter adamw takes the same steps as optax's own chain; bad names and values are named."""
    params = {"layer": {"theta": jnp.full((2, 3), 0.5), "radius": jnp.ones(2)}, "kernel": jnp.full((3, 2), 2.0)}
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10, end_value=1e-3)
    ours = optim.make_optimizer("adamw", schedule, b2=0.99, weight_decay=0.1, clip_norm=1.0)
    ref = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, b2=0.99, weight_decay=0.1, mask=optim.weight_decay_mask)
    )
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix int counts and floats
        p_ours, p_ref, s_ours, s_ref = params, params, ours.init(params), ref.init(params)
        for i in range(4):
            grads = jax.tree.map(lambda x, i=i: jnp.sin(x + i) * 3.0, p_ours)  # norm > 1: the clip acts
            u, s_ours = ours.update(grads, s_ours, p_ours)
            p_ours = optax.apply_updates(p_ours, u)
            u, s_ref = ref.update(grads, s_ref, p_ref)
            p_ref = optax.apply_updates(p_ref, u)
        want = schedule(3)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(s_ours.hyperparams["learning_rate"], want, rtol=1e-6)  # plateau decay's handle
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        optim.make_optimizer("adam", 0.1)
    for kw, match in [({"momentum": 1.0}, "momentum"), ({"weight_decay": -1.0}, "weight_decay"),
                      ({"clip_norm": 0.0}, "clip_norm")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            optim.make_optimizer("sgd", 0.1, **kw)
    with pytest.raises(ValueError, match="learning_rate"):
        optim.make_optimizer("sgd", 0.0)


def test_mask_reads_types_not_names_and_never_decays_biases():
    """theta is never decayed whatever it is called; 2-D attention biases are biases; no silent guess on plain trees."""

    class Renamed(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            layer = GmPDense(4, 3, rngs=rngs)
            self.angles = layer.theta  # the Angle variable under another name
            self.attn = nnx.MultiHeadAttention(4, 8, rngs=rngs, decode=False)

    model = Renamed(nnx.Rngs(0))
    mask = _pure(optim.weight_decay_mask(nnx.state(model, nnx.Param)))
    labels = _pure(optim.param_labels(model))
    assert mask["angles"] is False and labels["angles"] == "angle"
    for proj in ("query", "key", "value"):
        assert np.ndim(nnx.state(model, nnx.Param)["attn"][proj]["bias"][...]) == 2
        assert mask["attn"][proj] == {"kernel": True, "bias": False}
    # a mask computed from the typed model fits nnx.Optimizer's plain updates: a zero-gradient adamw step leaves the
    # renamed angles alone and decays the kernels
    theta0, kernel0 = np.asarray(model.angles[...]), np.asarray(model.attn.query.kernel[...])
    tx = optax.adamw(0.1, weight_decay=0.5, mask=optim.weight_decay_mask(model))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    with jax.numpy_dtype_promotion("standard"):  # optax.adamw's bias correction (see _ADAM)
        opt.update(model, grads)
    np.testing.assert_array_equal(np.asarray(model.angles[...]), theta0)
    np.testing.assert_allclose(np.asarray(model.attn.query.kernel[...]), kernel0 * (1 - 0.1 * 0.5), rtol=1e-6)
    # the callable form sees only names in nnx.Optimizer's updates: the renamed angles are refused, not decayed
    opt = nnx.Optimizer(model, optax.adamw(0.1, weight_decay=0.5, mask=optim.weight_decay_mask), wrt=nnx.Param)
    with pytest.raises(ValueError, match="'angles'.*unknown name"), jax.numpy_dtype_promotion("standard"):
        opt.update(model, grads)


@pytest.mark.parametrize(
    "tree, match",
    [
        (jnp.zeros((4, 2)), "bare array"),
        ([jnp.zeros((4, 2)), jnp.ones((3, 2)), jnp.ones(2)], "has no name"),
        ({"angles": jnp.zeros((4, 2))}, "'angles'.*unknown name"),
    ],
)
def test_plain_trees_that_need_a_guess_are_refused(tree, match):
    for fn in (optim.weight_decay_mask, optim.param_labels):
        with pytest.raises(ValueError, match=match):
            fn(tree)


@pytest.mark.standard_dtype_promotion(_ADAM)
def test_keras_adam_is_adam_with_keras_epsilon_and_an_injected_rate():
    from gmpjax.train.optim import keras_adam

    params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([1e-6, 3.0])}
    tx, ref, torch_eps = keras_adam(0.1), optax.adam(0.1, eps=1e-7), optax.adam(0.1)
    state, ref_state, torch_state = tx.init(params), ref.init(params), torch_eps.init(params)
    for _ in range(3):
        u, state = tx.update(grads, state, params)
        r, ref_state = ref.update(grads, ref_state, params)
        t, torch_state = torch_eps.update(grads, torch_state, params)
        np.testing.assert_allclose(np.asarray(u["w"]), np.asarray(r["w"]), rtol=1e-5)  # lr held as float32
    # Keras' epsilon shows on the tiny gradient: -lr g / (|g| + eps) = -0.1 / 1.1 (optax's 1e-8: -0.1 / 1.01)
    assert float(u["w"][0]) == pytest.approx(-0.1 / 1.1, rel=1e-4) and float(t["w"][0]) == pytest.approx(
        -0.1 / 1.01, rel=1e-4
    )
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        keras_adam(0.1, eps=0.0)
