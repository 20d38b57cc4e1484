"""Whole-model conversion to GmP and back: the same function, sharding metadata kept, export of the folded model."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmpjax.layers import GmPConv, GmPDense, SPDense, to_gmp, to_standard
from gmpjax.models import MLP


class UserMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = nnx.Linear(6, 16, param_dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(16, 16, param_dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(16, 3, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.gelu(self.fc2(jnp.tanh(self.fc1(x)))))  # any activation: the GmP layers are linear


class UserCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dtype=jnp.float32):
        self.stem = nnx.Conv(4, 8, (3, 3), param_dtype=dtype, rngs=rngs)
        self.grouped = nnx.Conv(8, 8, (3, 3), feature_group_count=2, strides=2, param_dtype=dtype, rngs=rngs)
        self.depthwise = nnx.Conv(8, 8, (3, 3), feature_group_count=8, padding="VALID", param_dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(8, 5, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.stem(x))
        h = nnx.relu(self.depthwise(nnx.relu(self.grouped(h))))
        return self.head(jnp.mean(h, axis=(1, 2)))


class Block(nnx.Module):
    """A pre-norm transformer block: attention (LinearGeneral projections) + an nnx.Linear MLP."""

    def __init__(self, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(2, 8, rngs=rngs, decode=False)
        self.up = nnx.Linear(8, 32, rngs=rngs)
        self.down = nnx.Linear(32, 8, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.down(nnx.relu(self.up(self.norm(x))))


def _layer_types(model) -> dict[str, str]:
    return {".".join(map(str, p)): type(m).__name__ for p, m in nnx.iter_modules(model) if p}


@pytest.mark.parametrize("make, shape", [(UserMLP, (5, 6)), (UserCNN, (2, 9, 9, 4))])
def test_round_trip_is_the_same_function_float64(make, shape):
    with jax.enable_x64(True):
        model = make(nnx.Rngs(0), jnp.float64)
        x = jnp.asarray(np.random.default_rng(0).normal(size=shape))
        gmp = to_gmp(model)
        kinds = set(_layer_types(gmp).values())
        assert "Linear" not in kinds and "Conv" not in kinds and "GmPDense" in kinds
        assert _layer_types(model)["fc1" if make is UserMLP else "stem"] in ("Linear", "Conv")  # model untouched
        np.testing.assert_allclose(gmp(x), model(x), atol=1e-12)
        back = to_standard(gmp)
        assert _layer_types(back) == _layer_types(model)
        np.testing.assert_allclose(back(x), model(x), atol=1e-12)
    if make is UserCNN:
        assert gmp.grouped.feature_group_count == 2 and gmp.depthwise.feature_group_count == 8


def test_float32_and_the_projects_models():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 6)), jnp.float32)
    model = UserMLP(nnx.Rngs(1))
    np.testing.assert_allclose(to_gmp(model)(x), model(x), atol=1e-6)
    sp = MLP(6, (16, 16), 3, parameterization="sp", rngs=nnx.Rngs(2))  # SPDense layers carry their relu
    gmp = to_gmp(sp)
    assert {type(m).__name__ for _, m in nnx.iter_modules(gmp)} >= {"GmPDense"}
    assert not any(isinstance(m, SPDense) for _, m in nnx.iter_modules(gmp))
    np.testing.assert_allclose(gmp(x), sp(x), atol=1e-5)
    native = MLP(6, (16,), 3, parameterization="gmp", rngs=nnx.Rngs(3))
    folded = to_standard(native)  # GmP relu layers become Sequential(Linear, relu)
    assert not any(isinstance(m, GmPDense | GmPConv) for _, m in nnx.iter_modules(folded))
    np.testing.assert_allclose(folded(x), native(x), atol=1e-5)


def test_transformer_with_attention_left_out_by_a_filter():
    block = Block(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 8)), jnp.float32)
    only_mlp = to_gmp(block, filter=lambda path, layer: "attn" not in path and path[-1] != "up")
    assert type(only_mlp.down).__name__ == "GmPDense" and type(only_mlp.up).__name__ == "Linear"
    assert type(only_mlp.attn.query).__name__ == "LinearGeneral"
    np.testing.assert_allclose(only_mlp(x), block(x), atol=1e-5)
    with pytest.raises(TypeError, match="filter must be a callable"):
        to_gmp(block, filter="attn")
    with pytest.raises(TypeError, match="must be an nnx.Module"):
        to_gmp({"w": jnp.ones(3)})


def test_sharding_metadata_is_carried_both_ways():
    column = {"out_sharding": (None, "model"), "eager_sharding": False}
    row = {"out_sharding": ("model", None), "eager_sharding": False}

    class Megatron(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.up = nnx.Linear(6, 8, kernel_metadata=column, rngs=rngs)
            self.down = nnx.Linear(8, 6, kernel_metadata=row, rngs=rngs)
            conv_md = {"out_sharding": (None, None, None, "model"), "eager_sharding": False}
            self.conv = nnx.Conv(3, 4, (3, 3), kernel_metadata=conv_md, rngs=rngs)

    model = Megatron(nnx.Rngs(0))
    with pytest.warns(UserWarning, match="input axes are sharded"):
        gmp = to_gmp(model)
    md = lambda v: v.get_metadata().get("out_sharding")  # noqa: E731
    assert md(gmp.up.theta) == ("model", None) and md(gmp.up.radius) == md(gmp.up.offset) == ("model",)
    assert md(gmp.conv.theta) == ("model", None)
    assert md(gmp.down.theta) == (None, None)  # a row-parallel kernel keeps only its output axis (replicated)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        only_column = to_gmp(model, filter=lambda path, layer: path[-1] != "down")
    back = to_standard(only_column)
    assert md(back.up.kernel) == (None, "model") and md(back.up.bias) == ("model",)
    assert md(back.conv.kernel) == (None, None, None, "model")
    assert md(back.down.kernel) == ("model", None)  # never converted


def test_folded_model_exports_and_equals_the_gmp_model():
    """The serving route: fold GmP into standard layers, export with jax.export, same output as the GmP model."""
    gmp_model = MLP(6, (16,), 3, parameterization="gmp", rngs=nnx.Rngs(4))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 6)), jnp.float32)
    graphdef, state = nnx.split(to_standard(gmp_model))
    exported = jax.export.export(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), platforms=["cpu", "cuda"])(state, x)
    assert "gmpjax_unit" not in exported.mlir_module()  # no angle map left to serve
    np.testing.assert_allclose(exported.call(state, x), gmp_model(x), atol=1e-5)
