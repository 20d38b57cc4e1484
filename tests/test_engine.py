"""The training engine (gmpjax.train.engine)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax.layers import GmPDense
from gmpjax.models import MLP
from gmpjax.train import engine as E
from gmpjax.train.loop import LoopConfig, fit
from gmpjax.train.rules import Rules

_ADAM = "optax.adam's bias correction mixes a Python float with the int32 step count (an optax limitation)"


def _mse(model, batch):
    x, y = batch
    return jnp.mean((model(x) - y) ** 2)


def _data(n=32):
    x = jnp.linspace(-2, 2, n)[:, None]
    return x, jnp.sin(2 * x)


@pytest.mark.standard_dtype_promotion(_ADAM)
def test_train_step_decreases_loss_and_updates_batch_stats():
    tx = optax.adam(1e-2)
    graphdef, state = E.init_train_state(MLP(1, (16,), 1, parameterization="bn", rngs=nnx.Rngs(0)), tx)
    step = jax.jit(E.make_train_step(graphdef, tx, _mse))
    batch = _data()
    state, m0 = step(state, batch)
    for _ in range(50):
        state, m = step(state, batch)
    assert float(m["loss"]) < float(m0["loss"])
    assert int(state.step) == 51
    model = E.merge_model(graphdef, state)
    assert not np.allclose(model.hidden[0].norm.mean[...], 0)  # moving mean carried across steps


def test_train_step_traces_once():
    tx = optax.sgd(0.1)
    graphdef, state = E.init_train_state(MLP(1, (8,), 1, parameterization="gmp", rngs=nnx.Rngs(0)), tx)
    step = jax.jit(chex.assert_max_traces(E.make_train_step(graphdef, tx, _mse), n=1))
    batch = _data()
    for _ in range(4):
        state, _ = step(state, batch)


@pytest.mark.standard_dtype_promotion(_ADAM)
def test_vmapped_replicas_equal_individual_runs():
    tx = optax.adam(3e-2)
    keys = jax.random.split(jax.random.key(0), 3)
    make = lambda k: MLP(1, (8,), 1, parameterization="gmp_imn", rngs=nnx.Rngs(k))  # noqa: E731
    graphdef, states = E.init_replicas(make, keys, tx)
    step = E.make_train_step(graphdef, tx, _mse)
    batch = _data()
    cfg = LoopConfig(20, monitor_split=None, rules=Rules(monitor="loss", restore="never"))
    run = jax.jit(jax.vmap(lambda s: fit(step, None, s, {"train": batch}, cfg, key=jax.random.key(0))))
    out = run(states)
    chex.assert_shape(out.history["train_loss"], (3, 20))
    for i, k in enumerate(keys):
        g1, s1 = E.init_train_state(make(k), tx)
        for _ in range(20):
            s1, m1 = step(s1, batch)
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], out.last.params), s1.params, atol=1e-5)
        np.testing.assert_allclose(out.history["train_loss"][i, -1], m1["loss"], rtol=1e-5)


def test_eval_step_uses_moving_statistics():
    tx = optax.sgd(0.0)
    graphdef, state = E.init_train_state(MLP(1, (8,), 1, parameterization="bn", rngs=nnx.Rngs(0)), tx)
    batch = (jnp.full((16, 1), 3.0) + jnp.linspace(0, 1, 16)[:, None], jnp.zeros((16, 1)))
    train_loss = E.make_train_step(graphdef, tx, _mse)(state, batch)[1]["loss"]
    eval_loss = E.make_eval_step(graphdef, _mse)(state, batch)["metric"]
    # at init the moving stats are (0, 1), so eval and train normalisation differ
    assert not np.isclose(float(train_loss), float(eval_loss))


def test_early_stopping_keeps_best_and_freezes():
    es = E.early_stopping_init({"w": jnp.zeros(2)})
    values = [5.0, 3.0, 4.0, 4.0, 1.0, 0.5]
    for t, v in enumerate(values):
        es = E.early_stopping_update(es, jnp.asarray(v), {"w": jnp.full(2, float(t))}, t, patience=2)
    # stopped after two non-improvements at t=2,3; later improvements are ignored
    assert bool(es.stopped)
    assert float(es.best) == 3.0 and int(es.best_step) == 1
    np.testing.assert_array_equal(es.best_params["w"], 1.0)


def test_early_stopping_is_vmappable():
    es = jax.vmap(lambda _: E.early_stopping_init(jnp.zeros(())))(jnp.arange(2))
    upd = jax.vmap(lambda e, v: E.early_stopping_update(e, v, v, 0, patience=1))
    es = upd(es, jnp.array([1.0, 2.0]))
    es = upd(es, jnp.array([0.5, 3.0]))
    np.testing.assert_array_equal(es.best, [0.5, 2.0])
    np.testing.assert_array_equal(es.stopped, [False, True])


# --- gradient accumulation -------------------------------------------------------------------


def _accum_setup(parameterization, tx):
    model = MLP(3, (16, 8), 2, parameterization=parameterization, rngs=nnx.Rngs(1))
    graphdef, state = E.init_train_state(model, tx)
    x = jax.random.normal(jax.random.key(2), (24, 3))
    y = jax.random.normal(jax.random.key(3), (24, 2))
    return graphdef, state, (x, y)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("parameterization", ["gmp", "sp"])
def test_accumulated_step_equals_one_big_batch_step(parameterization):
    """k microbatches (u(theta) hoisted for GmP) give the big-batch loss, gradient and update to 1e-6."""
    tx = optax.sgd(0.1, momentum=0.9)
    graphdef, state, batch = _accum_setup(parameterization, tx)
    big = jax.jit(E.make_train_step(graphdef, tx, _mse))
    acc = jax.jit(E.make_train_step(graphdef, tx, _mse, microbatches=4))
    s_big, s_acc = state, state
    for _ in range(3):
        s_big, m_big = big(s_big, batch)
        s_acc, m_acc = acc(s_acc, batch)
        np.testing.assert_allclose(m_acc["loss"], m_big["loss"], rtol=1e-6, atol=1e-7)
    assert int(s_acc.step) == 3
    assert _max_diff(s_acc.params, s_big.params) < 1e-6
    # the gradients themselves
    run = jax.jit(E.accumulate_gradients(graphdef, _mse, 6))
    _, _, _, g_acc = run(state.params, state.rest, batch)

    def loss(p):
        return _mse(nnx.merge(graphdef, p, state.rest), batch)

    g_big = jax.grad(loss)(state.params)
    assert _max_diff(g_acc, g_big) < 1e-6


def test_accumulated_step_computes_the_map_once(monkeypatch):
    """The microbatch body never calls angles_to_unit: it runs once per GmP layer per step."""
    from gmpjax import hyperspherical as hs

    tx = optax.sgd(0.1)
    graphdef, state, batch = _accum_setup("gmp", tx)
    calls = []
    original = hs.angles_to_unit
    monkeypatch.setattr(hs, "angles_to_unit", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    jax.make_jaxpr(E.make_train_step(graphdef, tx, _mse, microbatches=4))(state, batch)
    model = E.merge_model(graphdef, state)
    n_gmp = sum(isinstance(m, GmPDense) for _, m in nnx.iter_modules(model))
    assert n_gmp == 2 and len(calls) == n_gmp  # the two hidden GmP layers of MLP(3, (16, 8), 2)
    # and the module is left intact: unit() is the layer's own method again
    assert all("unit" not in vars(m) for _, m in nnx.iter_modules(model))


def test_accumulated_step_with_batch_statistics_runs_per_microbatch():
    """IMN/BN: each microbatch is normalised on its own and the moving mean is updated k times."""
    tx = optax.sgd(0.05)
    graphdef, state, batch = _accum_setup("gmp_imn", tx)
    acc = jax.jit(E.make_train_step(graphdef, tx, _mse, microbatches=3))
    new, metrics = acc(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    # reference: three plain steps' worth of moving-mean updates, parameters held fixed
    model = E.merge_model(graphdef, state)
    for mb in range(3):
        model(batch[0][mb * 8 : (mb + 1) * 8])
    _, _, rest_ref = nnx.split(model, nnx.Param, ...)
    assert _max_diff(new.rest, rest_ref) < 1e-6


@pytest.mark.parametrize("k, match", [(0, "microbatches"), (5, "divisible by 5")])
def test_accumulation_rejects_bad_microbatches(k, match):
    tx = optax.sgd(0.1)
    graphdef, state, batch = _accum_setup("gmp", tx)
    with pytest.raises(ValueError, match=match):
        jax.jit(E.make_train_step(graphdef, tx, _mse, microbatches=k))(state, batch)
