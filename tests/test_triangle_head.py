"""gmpjax.models.TriangleHead: shapes, the MAC count against the model's own weights and by hand, equality with
its plain nnx composition (same random keys), and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmpjax.layers.triangle import TriangleActivation
from gmpjax.models import TriangleHead, triangle_head_macs


@pytest.mark.parametrize(
    ("activation", "hidden"), [("relu", 6), ("relu", (6,)), ("relu", (4, 6, 5)), ("triangle", 6), ("triangle", (6, 5))]
)
def test_shapes(activation, hidden):
    head = TriangleHead(7, hidden, 3, activation=activation, depth=2, rngs=nnx.Rngs(0))
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    assert head.sizes == (7, *widths, 3)
    assert head(jnp.ones((5, 7))).shape == (5, 3) and head(jnp.ones((2, 4, 7))).shape == (2, 4, 3)
    assert len(head.linears) == len(widths) + 1
    assert len(head.triangles) == (len(widths) if activation == "triangle" else 0)


def test_macs_by_hand():
    # 64*32 + 32*32 + 32*10 = 3392; two hidden layers of 32 subnets of 4 + 16*(3-1) + 4 = 40 MACs: +2560
    assert triangle_head_macs(64, (32, 32), 10) == 3392
    assert triangle_head_macs(64, (32, 32), 10, activation="triangle", depth=3) == 3392 + 2 * 32 * 40
    assert triangle_head_macs(5, 4, 2, activation="triangle", depth=1) == 5 * 4 + 4 * 2 + 4 * 8
    vgg = (25088, (4096, 4096), 1000)  # the paper's ~0.5 % for VGG-16's classifier
    assert 0.0047 < triangle_head_macs(*vgg, activation="triangle") / triangle_head_macs(*vgg) - 1 < 0.0049


@pytest.mark.parametrize(("activation", "depth"), [("relu", 1), ("triangle", 1), ("triangle", 3)])
def test_macs_count_the_weights(activation, depth):
    """One MAC per weight of every linear kernel and per-feature subnet matrix (biases are not counted)."""
    head = TriangleHead(9, (6, 5, 4), 3, activation=activation, depth=depth, rngs=nnx.Rngs(1))
    count = sum(layer.kernel.get_value().size for layer in head.linears)
    count += sum(W.size for act in head.triangles for W, _ in act.stacked_layers())
    assert head.macs_per_example() == count
    assert count == triangle_head_macs(9, (6, 5, 4), 3, activation=activation, depth=depth)


def test_relu_head_is_its_linear_composition():
    """Same parameters (linears created in order with the default initialisers) and the same function."""
    head = TriangleHead(7, (5, 6), 3, rngs=nnx.Rngs(0))
    rngs = nnx.Rngs(0)
    l1, l2, l3 = nnx.Linear(7, 5, rngs=rngs), nnx.Linear(5, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)
    for mine, ref in zip(head.linears, (l1, l2, l3), strict=True):
        np.testing.assert_array_equal(mine.kernel[...], ref.kernel[...])
        np.testing.assert_array_equal(mine.bias[...], ref.bias[...])
    x = jax.random.normal(jax.random.key(2), (8, 7))
    np.testing.assert_array_equal(head(x), l3(jax.nn.relu(l2(jax.nn.relu(l1(x))))))


def test_triangle_head_is_its_composition():
    """The linears take their keys first, then one TriangleActivation per hidden layer, in order."""
    head = TriangleHead(7, (5, 6), 3, activation="triangle", depth=3, rngs=nnx.Rngs(4))
    rngs = nnx.Rngs(4)
    l1, l2, l3 = nnx.Linear(7, 5, rngs=rngs), nnx.Linear(5, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)
    a1, a2 = TriangleActivation(5, 3, rngs=rngs), TriangleActivation(6, 3, rngs=rngs)
    x = jax.random.normal(jax.random.key(3), (8, 7))
    np.testing.assert_array_equal(head(x), l3(a2(l2(a1(l1(x))))))
    assert not np.array_equal(head(x), l3(jax.nn.relu(l2(jax.nn.relu(l1(x))))))


def test_gradients_reach_the_triangle_subnets():
    head = TriangleHead(4, (3,), 2, activation="triangle", depth=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (16, 4))
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(head)  # jit: eager dispatch takes seconds here
    peak_grads = nnx.state(grads, nnx.Param)["triangles"][0]["peak_logits"][...]
    assert peak_grads.shape == (3, 3) and np.all(np.isfinite(peak_grads)) and np.any(peak_grads != 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"activation": "gelu"}, "activation must be one of"),
        ({"hidden": ()}, "hidden must be an int or a non-empty sequence"),
        ({"hidden": "32"}, "hidden must be an int or a non-empty sequence"),
        ({"hidden": (8, 0)}, r"hidden\[1\] must be a positive int"),
        ({"hidden": (8, 2.5)}, r"hidden\[1\] must be a positive int"),
        ({"in_features": 0}, "in_features must be a positive int"),
        ({"out_features": True}, "out_features must be a positive int"),
        ({"depth": 0}, "depth must be a positive int"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"in_features": 4, "hidden": (8,), "out_features": 2, "activation": "triangle", "depth": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        TriangleHead(**args, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=match):
        triangle_head_macs(**args)
