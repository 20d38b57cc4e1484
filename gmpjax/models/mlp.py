"""One-hidden-layer (or deeper) MLPs with a parameterization switch, as in the paper's small experiments."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from gmpjax.layers import registry

__all__ = ["MLP"]


class MLP(nnx.Module):
    """``hidden layers of parameterization p (ReLU)`` followed by a linear output layer.

    The output layer is the registry row's ``head``, as in the released code: weight-normalised
    (``WNDense``) for the WN variants and a standard ``SPDense`` otherwise (GmP networks keep an SP head).

    Args:
      in_features: input size.
      hidden: sizes of the hidden layers, e.g. ``(100,)``; an int ``h`` means one hidden layer ``(h,)``.
      out_features: output size.
      parameterization: a registry name (``gmpjax.layers.registry.names()``), e.g. "sp" or "gmp".
      init: GmP initialisation ("uniform" paper / "official" released code); passed to the layers
        that take an ``init`` keyword, ignored by the others.
      param_dtype: parameter dtype (float64 for the paper's small experiments under x64).
      rngs: random streams.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> MLP(2, (10,), 1, parameterization="gmp", rngs=nnx.Rngs(0))(jnp.ones((5, 2))).shape
    (5, 1)
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] | int,
        out_features: int,
        *,
        parameterization: str = "gmp",
        init: str = "uniform",
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ):
        row = registry.get(parameterization)
        self.parameterization = row.name
        if isinstance(hidden, int | np.integer) and not isinstance(hidden, bool):
            hidden = (int(hidden),)
        if isinstance(hidden, str) or not isinstance(hidden, Sequence):
            raise TypeError(f"MLP: hidden must be an int or a sequence of ints, e.g. (100,) (got {hidden!r}).")
        sizes = (in_features, *hidden)
        extra = {"init": init} if row.accepts("init") else {}
        self.hidden = nnx.List(
            [
                row.build_dense(a, b, param_dtype=param_dtype, rngs=rngs, **extra)
                for a, b in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )
        self.head = row.head(sizes[-1], out_features, activation=None, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)
