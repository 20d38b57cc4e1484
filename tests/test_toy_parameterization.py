"""A new parameterization in one file: its layers and its registry row, and nothing else changed.

The toy "tilt" parameterization multiplies a standard kernel entry-wise by ``cos(tilt)``: ``w_ij * cos(t_ji)``
with the angles ``t`` of shape ``(out, fan_in)`` a new angle-like parameter type ``Tilt`` (a subclass of
``gmpjax.layers.Angle``). Registering its row is all it takes for it to train through ``MLP``, ``VGG6``, the
replica trainer, the column/row-parallel annotations on 8 host devices (this file run as a script in a child
process with 8 CPU devices) and the weight-decay mask, which never decays ``Tilt`` because of its type.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax import cab
from gmpjax.layers import Angle, Parameterization, register, unregister
from gmpjax.layers import registry as R

_EMPTY: Mapping[str, Any] = MappingProxyType({})

# --------------------------------------------------------------------------- the toy parameterization


class Tilt(Angle):
    """Angles ``t`` of shape ``(out, fan_in)`` that scale each kernel entry by ``cos(t)``; never weight-decayed."""


def _tilted(weight: jax.Array, tilt: jax.Array) -> jax.Array:
    """``weight * cos(tilt).T`` reshaped to the kernel's shape ``(..., out)``."""
    return weight * jnp.cos(tilt).T.reshape(weight.shape)


class _TiltBase(nnx.Module):
    def _params(self, shape, rngs, param_dtype, kernel_metadata, tilt_metadata, bias_metadata) -> None:
        k1, k2 = jax.random.split(rngs.params())
        fan_in = int(np.prod(shape[:-1]))
        self.weight = nnx.Param(nnx.initializers.glorot_uniform()(k1, shape, param_dtype), **kernel_metadata)
        tilt = jax.random.uniform(k2, (shape[-1], fan_in), param_dtype, -0.5, 0.5)
        self.tilt = Tilt(tilt, **tilt_metadata)
        self.bias = nnx.Param(jnp.zeros((shape[-1],), param_dtype), **bias_metadata)

    def kernel(self) -> jax.Array:
        return _tilted(self.weight[...], self.tilt[...])


class TiltDense(_TiltBase):
    """``act(x @ (weight * cos(tilt).T) + bias)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation=nnx.relu,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _EMPTY,
        tilt_metadata: Mapping[str, Any] = _EMPTY,
        bias_metadata: Mapping[str, Any] = _EMPTY,
    ):
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self._params((in_features, out_features), rngs, param_dtype, kernel_metadata, tilt_metadata, bias_metadata)

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        y = x @ self.kernel() + self.bias[...]
        return y if self.activation is None else self.activation(y)


class TiltConv(_TiltBase):
    """2-D convolution, stride 1, with the tilted kernel ``(kh, kw, in, out)``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: tuple[int, int],
        *,
        padding: str = "SAME",
        activation=nnx.relu,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = _EMPTY,
        tilt_metadata: Mapping[str, Any] = _EMPTY,
        bias_metadata: Mapping[str, Any] = _EMPTY,
    ):
        self.out_features, self.padding, self.activation = out_features, padding, activation
        shape = (*kernel_size, in_features, out_features)
        self._params(shape, rngs, param_dtype, kernel_metadata, tilt_metadata, bias_metadata)

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        dims = ("NHWC", "HWIO", "NHWC")
        y = jax.lax.conv_general_dilated(x, self.kernel(), (1, 1), self.padding, dimension_numbers=dims)
        y = y + self.bias[...]
        return y if self.activation is None else self.activation(y)


def _tilt_cab(layer: TiltDense) -> cab.CAB:
    w = layer.kernel().T
    return cab.CAB(cab.sp_direction(w), cab.sp_location(w, layer.bias[...]))


TILT = Parameterization(
    "tilt",
    TiltDense,
    TiltConv,
    column_parallel={"kernel_metadata": "kernel", "tilt_metadata": "rows", "bias_metadata": "units"},
    cab=_tilt_cab,
    cv_lr=0.05,
)

# --------------------------------------------------------------------------- tests


@pytest.fixture(autouse=True, scope="module")
def _registered():
    register(TILT)
    yield
    unregister("tilt")


def _mlp(key, **kw):
    from gmpjax.models import MLP

    return MLP(2, (16,), 1, parameterization="tilt", rngs=nnx.Rngs(key), **kw)


def test_the_row_is_found_by_name_and_by_layer():
    assert "tilt" in R.names() and R.default_lr("Tilt") == 0.05
    layer = R.make_dense("tilt", 3, 4, activation=None, rngs=nnx.Rngs(0))
    assert R.row_of_layer(layer) is TILT and not TILT.accepts("init")
    with pytest.raises(TypeError, match=r"make_dense\('tilt'\): TiltDense takes no keyword 'init'"):
        R.make_dense("tilt", 3, 4, init="official", rngs=nnx.Rngs(0))
    # cab_of_layer reads the row: each unit is 0 on its boundary and positive a step into its normal
    c = cab.cab_of_layer(layer)
    np.testing.assert_allclose(jnp.diagonal(layer(c.location)), 0.0, atol=1e-5)
    assert bool(jnp.all(jnp.diagonal(layer(c.location + 0.3 * c.direction)) > 0))


def test_registration_errors_are_clear():
    with pytest.raises(ValueError, match="already registered"):
        register(TILT)
    with pytest.raises(ValueError, match="built-in parameterization 'gmp' cannot be replaced"):
        register(Parameterization("gmp", TiltDense), replace=True)
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister("sp")
    with pytest.raises(ValueError, match="unknown parameterization 'tilted'.*tilt"):
        R.get("tilted")
    with pytest.raises(ValueError, match="name must be lower case"):
        Parameterization("My Param", TiltDense)
    with pytest.raises(ValueError, match="column_parallel maps"):
        Parameterization("bad", TiltDense, column_parallel={"tilt_metadata": "columns"})
    with pytest.raises(TypeError, match="give layer_type"):
        Parameterization("bad", lambda i, o, **kw: TiltDense(i, o, **kw))


def test_weight_decay_mask_reads_the_new_angle_type():
    from gmpjax.train import param_labels, weight_decay_mask

    model = _mlp(0)
    mask, labels = nnx.to_pure_dict(weight_decay_mask(model)), nnx.to_pure_dict(param_labels(model))
    assert mask["hidden"][0] == {"weight": True, "tilt": False, "bias": False}
    assert labels["hidden"][0] == {"weight": "other", "tilt": "angle", "bias": "other"}
    assert mask["head"] == {"kernel": True, "bias": False}
    # decoupled weight decay with a zero data gradient: the weight shrinks, the tilt angles do not move
    tx = optax.chain(optax.add_decayed_weights(0.5, mask=weight_decay_mask), optax.sgd(1e-2))
    params = nnx.state(model, nnx.Param)
    opt = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, opt, params)
    moved = nnx.to_pure_dict(jax.tree.map(lambda u: float(jnp.abs(u).max()), updates))["hidden"][0]
    assert moved["tilt"] == 0.0 and moved["weight"] > 0.0


def _sweep_replicas(make, x, y, steps: int, seeds: int):
    """Train ``seeds`` replicas of ``make(key)`` full batch (SGD + momentum) with ``train_replicas``.

    Returns the per-replica train-loss history ``(seeds, steps)``.
    """
    from gmpjax.train import LoopConfig, train_replicas
    from gmpjax.train.losses import mse, on_batch

    keys = jax.random.split(jax.random.key(0), seeds)
    config = LoopConfig(steps, monitor_split=None)
    out = train_replicas(
        make, lambda lr: optax.sgd(lr, momentum=0.9), on_batch(mse), {"train": (x, y)}, config, keys=keys, lrs=0.05
    )
    return np.asarray(out.result.history["train_loss"])


def test_mlp_trains_through_the_replica_trainer():
    x = jax.random.normal(jax.random.key(1), (64, 2))
    y = jnp.sin(2 * x[:, :1]) + x[:, 1:] ** 2
    hist = _sweep_replicas(_mlp, x, y, steps=60, seeds=2)
    assert hist.shape == (2, 60)
    assert np.all(hist[:, -1] < 0.5 * hist[:, 0]), hist[:, [0, -1]]


def test_vgg6_trains():
    from gmpjax.models import VGG6
    from gmpjax.train import init_train_state, make_train_step

    model = VGG6(3, parameterization="tilt", widths=(4, 4, 8), rngs=nnx.Rngs(0))
    assert all(isinstance(c, TiltConv) for c in model.convs) and type(model.head).__name__ == "SPDense"
    x = jax.random.normal(jax.random.key(2), (8, 8, 8, 3))
    y = jnp.arange(8) % 3
    tx = optax.sgd(0.1, momentum=0.9)
    graphdef, state = init_train_state(model, tx)
    loss = lambda m, b: optax.softmax_cross_entropy_with_integer_labels(m(b[0]), b[1]).mean()  # noqa: E731
    step = jax.jit(make_train_step(graphdef, tx, loss))
    losses = []
    for _ in range(20):
        state, metrics = step(state, (x, y))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses


# --------------------------------------------------------------------------- tensor parallel (8 host devices)


def test_column_and_row_parallel_on_8_devices_match_one_device():
    sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
    import childproc

    proc = childproc.run([sys.executable, __file__], num_devices=8, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT ") :])
    assert res["devices"] == 8
    for name in ("mlp", "vgg"):
        r = res[name]
        assert r["tilt_spec"] == "P('model', None)", r
        assert r["loss_moved"] > 1e-3, r  # training changed the loss, so equal losses are not trivial
        assert r["max_loss_diff"] <= 1e-5 and r["max_param_diff"] <= 1e-5, r


class _Megatron(nnx.Module):
    """Toy layer column parallel (split over 'model'), then ``nnx.Linear`` row parallel, then an SP head."""

    def __init__(self, rngs: nnx.Rngs):
        from gmpjax.layers import SPDense
        from gmpjax.layers.parallel import column_parallel, row_parallel

        self.up = R.make_dense("tilt", 6, 16, rngs=rngs, **column_parallel("tilt"))
        self.down = nnx.Linear(16, 8, rngs=rngs, **row_parallel())
        self.head = SPDense(8, 3, activation=None, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.down(self.up(x))))


def _run_sharded(make, x, y, mesh, steps: int = 4):
    """Losses of ``steps`` SGD steps on ``mesh``, the final parameters, and the sharding of the first tilt."""
    from gmpjax.train import init_train_state, make_train_step, masked_weight_decay, sharding

    tx = optax.chain(masked_weight_decay(1e-2), optax.sgd(0.1, momentum=0.9))
    graphdef, state = init_train_state(make(nnx.Rngs(0)), tx)
    loss = lambda m, b: optax.softmax_cross_entropy_with_integer_labels(m(b[0]), b[1]).mean()  # noqa: E731
    step = sharding.shard_train_step(make_train_step(graphdef, tx, loss), mesh)
    state = sharding.shard_state(state, mesh)
    spec = next(str(v.sharding.spec) for p, v in jax.tree_util.tree_leaves_with_path(state.params) if "tilt" in str(p))
    losses = []
    for _ in range(steps):
        state, metrics = step(state, sharding.shard_batch((x, y), mesh))
        losses.append(float(metrics["loss"]))
    return np.array(losses), [np.asarray(v) for v in jax.tree.leaves(sharding.to_host(state.params))], spec


def _tensor_parallel_main() -> None:
    from gmpjax.models import VGG6
    from gmpjax.train import sharding

    register(TILT)
    models = {
        "mlp": (_Megatron, (16, 6)),
        "vgg": (
            lambda rngs: VGG6(3, parameterization="tilt", widths=(8, 8, 16), model_axis="model", rngs=rngs),
            (16, 8, 8, 3),
        ),
    }
    result: dict[str, Any] = {"devices": jax.device_count()}
    for name, (make, shape) in models.items():
        x = jax.random.normal(jax.random.key(1), shape)
        y = jnp.arange(shape[0]) % 3
        one = _run_sharded(make, x, y, sharding.make_mesh((1, 1), devices=jax.devices()[:1]))
        many = _run_sharded(make, x, y, sharding.make_mesh("2x4"))
        result[name] = {
            "loss_moved": float(abs(one[0][-1] - one[0][0])),
            "max_loss_diff": float(np.max(np.abs(one[0] - many[0]))),
            "max_param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(one[1], many[1], strict=True)),
            "tilt_spec": many[2],
        }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    _tensor_parallel_main()
