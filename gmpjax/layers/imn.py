"""Input mean normalization (IMN, Eq. 14 of the GmP paper) and mean-only batch norm."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gmpjax.layers.checks import _EMPTY, Metadata, _check_metadata, check_input, expose_signature

Array = jax.Array

__all__ = ["InputMeanNorm", "MeanOnlyBatchNorm", "GmPIMN"]


@expose_signature
class InputMeanNorm(nnx.Module):
    """Input mean normalization (IMN, Eq. 14): ``x - mean_batch(x)``, no trainable parameters.

    In training the mean is taken over all axes but the last (the feature /
    channel axis) of the current minibatch; a moving mean
    ``m <- momentum * m + (1 - momentum) * mean`` (momentum 0.99 as the released
    code) is kept in an ``nnx.BatchStat`` and used when ``use_running_average``
    is true (``model.eval()`` sets it). ``epsilon > 0`` reproduces the released
    code's ``(x - mean) / sqrt(1 + epsilon)`` (it uses 1e-6); the paper's default
    is a pure subtraction. The same operation placed on pre-activations is the
    mean-only batch norm (MBN) of the WN+MBN baseline.

    In training mode an input with a single sample per feature (``prod(x.shape[:-1]) == 1``,
    e.g. one row) raises ValueError: its batch mean is the sample itself, so the output would
    be all zeros. Use ``model.eval()`` (the running mean) for single examples.

    ``mean_metadata`` is passed to the running mean's ``nnx.BatchStat`` (e.g. sharding names).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> y = InputMeanNorm(2)(jnp.array([[1.0, 2.0], [3.0, 6.0]]))
    >>> y.tolist()
    [[-1.0, -2.0], [1.0, 2.0]]
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.99,
        epsilon: float = 0.0,
        use_running_average: bool = False,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
        mean_metadata: Metadata = _EMPTY,
    ):
        if isinstance(num_features, bool) or not isinstance(num_features, int | np.integer) or num_features < 1:
            raise ValueError(f"InputMeanNorm: num_features must be a positive int (got {num_features!r}).")
        _check_metadata(mean_metadata, "mean_metadata", "InputMeanNorm")
        self.num_features = int(num_features)
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.mean = nnx.BatchStat(jnp.zeros((self.num_features,), param_dtype), **mean_metadata)

    def __call__(self, x: Array, *, use_running_average: bool | None = None) -> Array:
        x = check_input(x, self.num_features, "InputMeanNorm")
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        if use_ra:
            mean = self.mean[...].astype(x.dtype)
        else:
            if math.prod(x.shape[:-1]) < 2:
                raise ValueError(
                    f"InputMeanNorm in training mode got input shape {x.shape}: one sample per feature, whose "
                    "batch mean is itself, so every output would be 0. Pass a batch of several rows, or call "
                    "model.eval() (use_running_average=True) to use the running mean."
                )
            mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
            stat = self.mean[...]
            batch_mean = jax.lax.stop_gradient(mean).astype(stat.dtype)
            self.mean[...] = self.momentum * stat + (1 - self.momentum) * batch_mean
        y = x - mean
        if self.epsilon:
            y = y / jnp.sqrt(1.0 + self.epsilon)
        return y


MeanOnlyBatchNorm = InputMeanNorm
"""Mean-only batch norm (Salimans & Kingma 2016): the same operation as IMN, placed on pre-activations."""


class GmPIMN(nnx.Module):
    """A GmP layer with input mean normalization: the one GmP+IMN unit of the library.

    ``position="input"`` (the default: the paper's GmP+IMN unit, Eq. 14, and what the registry's ``gmp_imn``
    builds): ``layer(IMN(x))`` with IMN over the layer's ``in_features``. ``position="output"`` (the released
    code's VGG, where IMN follows each conv and normalises the next layer's input; ``imn_position="output"``
    of ``make_conv``): ``IMN(layer(x))`` over ``out_features``.
    Attributes ``imn`` and ``layer`` hold the two parts.

    >>> import jax.numpy as jnp
    >>> from gmpjax.layers import GmPDense
    >>> unit = GmPIMN(GmPDense(3, 4, rngs=nnx.Rngs(0)))
    >>> unit(jnp.ones((2, 3))).shape
    (2, 4)
    """

    def __init__(self, layer: nnx.Module, *, position: str = "input", param_dtype: Any = jnp.float32):
        if position not in ("input", "output"):
            raise ValueError(f"GmPIMN: position must be 'input' or 'output' (got {position!r}).")
        features = getattr(layer, "in_features" if position == "input" else "out_features", None)
        if not isinstance(features, int):
            raise TypeError(
                f"GmPIMN: layer must be a GmP layer with in_features/out_features (got {type(layer).__name__})."
            )
        self.position = position
        self.imn = InputMeanNorm(features, param_dtype=param_dtype)
        self.layer = layer

    def __call__(self, x: Array, out_sharding: Any = None, **kwargs: Any) -> Array:
        if self.position == "input":
            return self.layer(self.imn(x), out_sharding, **kwargs)
        return self.imn(self.layer(x, out_sharding, **kwargs))
