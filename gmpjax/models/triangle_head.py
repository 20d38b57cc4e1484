"""MLP classifier head whose hidden activations are ReLU or learned triangle subnets (Milkert et al. 2025).

The paper replaces both ReLUs of VGG-16's classifier (25088-4096-4096-1000) by
``TriangleActivation``: one learned convex 1-D activation per neuron, a width-4, depth-``d``
triangle subnet (``gmpjax.layers.triangle``), for about 0.5 % extra compute.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from gmpjax.layers.checks import _as_size
from gmpjax.layers.triangle import TriangleActivation

__all__ = ["HEAD_ACTIVATIONS", "TriangleHead", "triangle_head_macs"]

HEAD_ACTIVATIONS: tuple[str, ...] = ("relu", "triangle")
"""The hidden activations of ``TriangleHead``: ReLU, or one ``TriangleActivation`` per hidden layer."""


def _head_sizes(
    in_features: int, hidden: Sequence[int] | int, out_features: int, activation: str, depth: int
) -> tuple[int, ...]:
    """Validated layer sizes ``(in_features, *hidden, out_features)``; checks ``activation`` and ``depth`` too."""
    if activation not in HEAD_ACTIVATIONS:
        raise ValueError(f"TriangleHead: activation must be one of {HEAD_ACTIVATIONS}; got {activation!r}.")
    _as_size(depth, "depth", "TriangleHead")
    if isinstance(hidden, int | np.integer) and not isinstance(hidden, bool):
        hidden = (hidden,)
    if isinstance(hidden, str) or not isinstance(hidden, Sequence) or len(hidden) == 0:
        raise ValueError(f"TriangleHead: hidden must be an int or a non-empty sequence of ints, e.g. (128, 128); "
                         f"got {hidden!r}.")  # fmt: skip
    widths = tuple(_as_size(h, f"hidden[{i}]", "TriangleHead") for i, h in enumerate(hidden))
    n_in, n_out = (
        _as_size(in_features, "in_features", "TriangleHead"),
        _as_size(out_features, "out_features", "TriangleHead"),
    )
    return (n_in, *widths, n_out)


def triangle_head_macs(
    in_features: int, hidden: Sequence[int] | int, out_features: int, *, activation: str = "relu", depth: int = 5
) -> int:
    """Multiply-accumulates per example of ``TriangleHead(in_features, hidden, out_features, ...)``.

    With sizes ``n_0 = in_features, n_1..n_k = hidden, n_{k+1} = out_features``::

        MACs = sum_{l=0..k} n_l n_{l+1}  +  [activation == "triangle"] * sum_{l=1..k} n_l (8 + 16 (d - 1))

    a triangle subnet (1-4-...-4-1, ``d`` hidden layers) costing ``4 + 16 (d - 1) + 4`` MACs per neuron.
    ReLUs, biases and the subnets' output affine maps are not counted.

    >>> triangle_head_macs(64, (32, 32), 10)  # 64*32 + 32*32 + 32*10
    3392
    >>> triangle_head_macs(64, (32, 32), 10, activation="triangle", depth=3)  # + 2 * 32 * (8 + 32)
    5952
    """
    sizes = _head_sizes(in_features, hidden, out_features, activation, depth)
    linear = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    subnets = sum(sizes[1:-1]) * (8 + 16 * (depth - 1)) if activation == "triangle" else 0
    return linear + subnets


class TriangleHead(nnx.Module):
    """``Linear(n_0, n_1) -> act -> Linear(n_1, n_2) -> act -> ... -> Linear(n_k, out_features)``.

    ``act`` is ReLU (``activation="relu"``) or, per hidden layer, a ``TriangleActivation(n_l, depth)``
    (``activation="triangle"``). The layers are ``nnx.Linear`` with their default initialisers, all created
    before the activations, so a ReLU head consumes exactly the random keys of its plain ``nnx.Linear``
    composition.

    Args:
      in_features: input size ``n_0``.
      hidden: hidden widths ``(n_1, ..., n_k)``, e.g. ``(128, 128)``; an int ``h`` means one hidden layer.
      out_features: number of classes (logits).
      activation: one of ``HEAD_ACTIVATIONS``: "relu" or "triangle".
      depth: depth ``d`` of each triangle subnet (checked, unused by a ReLU head).
      rngs: random streams (``params``).

    Raises:
      ValueError: ``activation`` is unknown, or a size or ``depth`` is not a positive int.

    >>> import jax.numpy as jnp
    >>> head = TriangleHead(64, (32, 32), 10, activation="triangle", depth=3, rngs=nnx.Rngs(0))
    >>> head(jnp.ones((5, 64))).shape, head.macs_per_example()
    ((5, 10), 5952)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] | int,
        out_features: int,
        *,
        activation: str = "relu",
        depth: int = 5,
        rngs: nnx.Rngs,
    ):
        self.sizes = _head_sizes(in_features, hidden, out_features, activation, depth)
        self.activation, self.depth = activation, int(depth)
        pairs = zip(self.sizes[:-1], self.sizes[1:], strict=True)
        self.linears = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairs])
        triangles = (
            [TriangleActivation(h, depth, rngs=rngs) for h in self.sizes[1:-1]] if activation == "triangle" else []
        )
        self.triangles = nnx.List(triangles)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(..., out_features)`` of inputs ``(..., in_features)``."""
        x = self.linears[0](x)
        for i in range(1, len(self.linears)):
            x = self.linears[i](self.triangles[i - 1](x) if self.activation == "triangle" else jax.nn.relu(x))
        return x

    def macs_per_example(self) -> int:
        """Multiply-accumulates per example (``triangle_head_macs`` of this head's sizes)."""
        return triangle_head_macs(
            self.sizes[0], self.sizes[1:-1], self.sizes[-1], activation=self.activation, depth=self.depth
        )
