"""Flax NNX modules for Geometric Parameterization (GmP): thin wrappers over ``gmpjax.hyperspherical``.

A GmP unit (Chen & Ge 2024, Eq. 13) computes ``r * act(u(theta) . x + lambda)``:
the direction ``u(theta)`` of the characteristic activation boundary lives on the
unit sphere, ``offset`` (lambda) is its signed distance from the origin and
``radius`` (r) scales the activation.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gmpjax import hyperspherical as hs

Array = jax.Array
Activation = Callable[[Array], Array] | None
Init = Literal["uniform", "official"]

__all__ = ["GmPDense", "GmPConv", "InputMeanNorm", "MeanOnlyBatchNorm", "check_input"]


def check_input(x: Array, in_features: int, name: str) -> Array:
    """Validate a layer input: floating dtype and ``x.shape[-1] == in_features``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} expects a floating-point input (got dtype {x.dtype}); cast with x.astype(jnp.float32)."
        )
    if x.ndim < 1 or x.shape[-1] != in_features:
        hint = " (reshape a batch of scalars with x[:, None])" if in_features == 1 else ""
        raise ValueError(
            f"{name} was built with in_features={in_features}, so it expects inputs of shape "
            f"(..., {in_features}), but got {x.shape}; "
            f"the last axis must have size {in_features}{hint}."
        )
    return x


def _check_features(in_features: int, out_features: int, name: str) -> None:
    for arg, v in (("in_features", in_features), ("out_features", out_features)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: {arg} must be a positive int (got {v!r}).")


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))  # one compiled program per layer shape
def _init_gmp(
    key: Array, fan_in: int, fan_out: int, init: str, dtype
) -> tuple[Array | None, Array, Array]:
    """(theta (fan_out, fan_in-1) or sign (fan_out,) when fan_in == 1, radius, offset).

    ``"uniform"`` (paper, Remark 3.5): u uniform on the sphere, r = 1, lambda = 0.
    ``"official"`` (released code): w ~ Glorot-uniform(fan_in, fan_out), u = w/||w||
    with its last coordinate folded to >= 0, r = ||w||, lambda = 0.
    """
    offset = jnp.zeros((fan_out,), dtype)
    if init == "uniform":
        if fan_in == 1:
            sign = jnp.where(jax.random.bernoulli(key, 0.5, (fan_out,)), 1.0, -1.0).astype(dtype)
            return sign, jnp.ones((fan_out,), dtype), offset
        theta = hs.sample_uniform_angles(key, (fan_out, fan_in - 1), dtype)
        return theta, jnp.ones((fan_out,), dtype), offset
    if init == "official":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        w = jax.random.uniform(key, (fan_out, fan_in), dtype, -limit, limit)
        radius = jnp.linalg.norm(w, axis=-1)
        if fan_in == 1:
            return jnp.where(w[:, 0] >= 0, 1.0, -1.0).astype(dtype), radius, offset
        w = w.at[:, -1].set(jnp.abs(w[:, -1]))
        return hs.unit_to_angles(w), radius, offset
    raise ValueError(f"init must be 'uniform' (paper) or 'official' (released code); got {init!r}.")


class _GmPBase(nnx.Module):
    """Shared parameter handling of GmPDense and GmPConv over a fan-in ``n``."""

    def _setup(self, fan_in: int, out_features: int, init: str, impl: str, param_dtype, rngs: nnx.Rngs):
        theta, radius, offset = _init_gmp(rngs.params(), fan_in, out_features, init, param_dtype)
        self.fan_in = fan_in
        self.impl = impl
        if fan_in == 1:
            # Direction +-1 is fixed at init and never trained (paper Sec. 4.1.1).
            self.theta = None
            self.direction = nnx.Variable(theta)
        else:
            self.theta = nnx.Param(theta)
            self.direction = None
        self.radius = nnx.Param(radius)
        self.offset = nnx.Param(offset)

    def unit(self) -> Array:
        """Unit directions ``u(theta)``, shape ``(out_features, fan_in)``."""
        if self.theta is None:
            return self.direction[...][:, None]
        return hs.angles_to_unit(self.theta[...], impl=self.impl)

    def _finish(self, z: Array) -> Array:
        z = z + self.offset[...]
        if self.activation is not None:
            z = self.activation(z)
        return self.radius[...] * z


class GmPDense(_GmPBase):
    """Dense layer of GmP units: ``y = radius * activation(x @ u(theta).T + offset)``.

    Parameters: ``theta`` (out, in-1) angles, ``radius`` (out,) r, ``offset`` (out,) lambda.
    For ``in_features == 1`` there is no ``theta``: the direction is a fixed sign
    (a non-trainable ``direction`` variable), as in the paper's 1-D experiment.

    Args:
      in_features: input size n.
      out_features: number of units m.
      activation: applied before the radius (default ``nnx.relu``); ``None`` gives
        the linear unit ``radius * (u . x + offset)``.
      init: ``"uniform"`` (paper: u uniform on the sphere, r = 1, lambda = 0) or
        ``"official"`` (released code: Glorot-uniform direction folded to the
        half-sphere u_n >= 0, r = ||w||).
      impl: implementation of ``u(theta)`` (see ``hyperspherical.available_impls``).
      param_dtype: dtype of the parameters.
      rngs: random streams (``params`` is used).

    Example::

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = GmPDense(3, 4, rngs=nnx.Rngs(0))
    >>> jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(layer, nnx.Param)))
    {'offset': (4,), 'radius': (4,), 'theta': (4, 2)}
    >>> layer(jnp.ones((2, 3))).shape
    (2, 4)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: Activation = nnx.relu,
        init: Init = "uniform",
        impl: str = "auto",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_features(in_features, out_features, "GmPDense")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self._setup(in_features, out_features, init, impl, param_dtype, rngs)

    def __call__(self, x: Array) -> Array:
        x = check_input(x, self.in_features, "GmPDense")
        return self._finish(x @ self.unit().T.astype(x.dtype))


def _tuple(v: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    t = (v,) * n if isinstance(v, int) else tuple(v)
    if len(t) != n or any((not isinstance(i, int)) or i < 1 for i in t):
        raise ValueError(f"{name} must be a positive int or a sequence of {n} positive ints (got {v!r}).")
    return t


class GmPConv(_GmPBase):
    """2-D convolution of GmP units, one direction per output channel.

    The unit vector of output channel ``j`` spans its whole receptive field,
    ``n = kh * kw * in_features``, and is reshaped to an HWIO kernel in row-major
    order (flat index ``(i * kw + j) * in_features + c``, channel fastest), as in the
    released code. Output: ``radius * activation(conv(x, u) + offset)`` on NHWC inputs.

    Args:
      in_features: input channels.
      out_features: output channels (filters).
      kernel_size: ``(kh, kw)`` or an int.
      strides, padding, kernel_dilation: as in ``nnx.Conv``.
      activation, init, impl, param_dtype, rngs: as in ``GmPDense``.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> GmPConv(3, 8, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 3))).shape
    (2, 5, 5, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: str | Sequence[tuple[int, int]] = "SAME",
        kernel_dilation: int | Sequence[int] = 1,
        activation: Activation = nnx.relu,
        init: Init = "uniform",
        impl: str = "auto",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_features(in_features, out_features, "GmPConv")
        self.kernel_size = _tuple(kernel_size, 2, "kernel_size")
        self.strides = _tuple(strides, 2, "strides")
        self.kernel_dilation = _tuple(kernel_dilation, 2, "kernel_dilation")
        self.padding = padding
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        fan_in = self.kernel_size[0] * self.kernel_size[1] * in_features
        self._setup(fan_in, out_features, init, impl, param_dtype, rngs)

    def kernel(self) -> Array:
        """The unit-norm HWIO kernel, shape ``(kh, kw, in_features, out_features)``."""
        return self.unit().T.reshape(*self.kernel_size, self.in_features, self.out_features)

    def __call__(self, x: Array) -> Array:
        x = check_input(x, self.in_features, "GmPConv")
        if x.ndim != 4:
            raise ValueError(f"GmPConv expects NHWC input of rank 4 (got shape {x.shape}).")
        z = jax.lax.conv_general_dilated(
            x,
            self.kernel().astype(x.dtype),
            window_strides=self.strides,
            padding=self.padding,
            rhs_dilation=self.kernel_dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return self._finish(z)


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
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"InputMeanNorm: num_features must be a positive int (got {num_features!r}).")
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))

    def __call__(self, x: Array, *, use_running_average: bool | None = None) -> Array:
        x = check_input(x, self.num_features, "InputMeanNorm")
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        if use_ra:
            mean = self.mean[...].astype(x.dtype)
        else:
            mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
            self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * jax.lax.stop_gradient(mean)
        y = x - mean
        if self.epsilon:
            y = y / jnp.sqrt(1.0 + self.epsilon)
        return y


MeanOnlyBatchNorm = InputMeanNorm
"""Mean-only batch norm (Salimans & Kingma 2016): the same operation as IMN, placed on pre-activations."""
