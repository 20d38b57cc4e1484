"""Baseline layers with the same call signature as the GmP layers.

* SP: standard parameterization, ``act(x @ W + b)`` (Glorot-uniform W, zero b; Keras defaults).
* WN: weight normalization (Salimans & Kingma 2016), ``act(g * x @ (v / ||v||) + b)``
  with ``g`` initialised to ``||v||`` so the initial function equals SP's.
* BN: ``act(BatchNorm(x @ W + b))`` with epsilon 1e-3 and momentum 0.99 (Keras defaults).
* WN+MBN: ``act(MeanOnlyBatchNorm(WN(x)))``.

Each comes as a dense and a 2-D convolution (NHWC / HWIO) variant.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gmpjax.layers.gmp import Activation, MeanOnlyBatchNorm, _check_features, _tuple, check_input

Array = jax.Array

__all__ = ["SPDense", "SPConv", "WNDense", "WNConv", "BNDense", "BNConv", "WNMBNDense", "WNMBNConv"]

glorot = nnx.initializers.glorot_uniform()


def _apply(activation: Activation, z: Array) -> Array:
    return z if activation is None else activation(z)


def _conv(x: Array, kernel: Array, strides, padding, dilation) -> Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class _ConvGeometry:
    def _geometry(self, in_features, out_features, kernel_size, strides, padding, kernel_dilation):
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = _tuple(kernel_size, 2, "kernel_size")
        self.strides = _tuple(strides, 2, "strides")
        self.kernel_dilation = _tuple(kernel_dilation, 2, "kernel_dilation")
        self.padding = padding
        return (*self.kernel_size, in_features, out_features)


class SPDense(nnx.Module):
    """Standard dense layer ``act(x @ kernel + bias)`` (Glorot-uniform kernel, zero bias).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> SPDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).shape
    (2, 4)
    """

    def __init__(self, in_features: int, out_features: int, *, activation: Activation = nnx.relu,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_features(in_features, out_features, "SPDense")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.kernel = nnx.Param(glorot(rngs.params(), (in_features, out_features), param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))

    def __call__(self, x: Array) -> Array:
        x = check_input(x, self.in_features, "SPDense")
        return _apply(self.activation, x @ self.kernel[...].astype(x.dtype) + self.bias[...])


class SPConv(nnx.Module, _ConvGeometry):
    """Standard 2-D convolution ``act(conv(x, kernel) + bias)`` (NHWC, HWIO kernel)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
                 strides=1, padding="SAME", kernel_dilation=1, activation: Activation = nnx.relu,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_features(in_features, out_features, "SPConv")
        shape = self._geometry(in_features, out_features, kernel_size, strides, padding, kernel_dilation)
        self.activation = activation
        self.kernel = nnx.Param(glorot(rngs.params(), shape, param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))

    def __call__(self, x: Array) -> Array:
        x = check_input(x, self.in_features, "SPConv")
        z = _conv(x, self.kernel[...], self.strides, self.padding, self.kernel_dilation)
        return _apply(self.activation, z + self.bias[...])


def _wn_kernel(v: Array, g: Array) -> Array:
    """``g * v / ||v||`` with the norm over all axes but the last (output) one."""
    axes = tuple(range(v.ndim - 1))
    return v * (g / jnp.sqrt(jnp.sum(jnp.square(v), axis=axes)))


class WNDense(nnx.Module):
    """Weight-normalised dense layer ``act(x @ (g * v / ||v||) + b)``; ``g`` starts at ``||v||``.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> WNDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).shape
    (2, 4)
    """

    def __init__(self, in_features: int, out_features: int, *, activation: Activation = nnx.relu,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_features(in_features, out_features, "WNDense")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        v = glorot(rngs.params(), (in_features, out_features), param_dtype)
        self.v = nnx.Param(v)
        self.g = nnx.Param(jnp.linalg.norm(v, axis=0))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))

    def kernel(self) -> Array:
        return _wn_kernel(self.v[...], self.g[...])

    def __call__(self, x: Array) -> Array:
        x = check_input(x, self.in_features, "WNDense")
        return _apply(self.activation, x @ self.kernel().astype(x.dtype) + self.bias[...])


class WNConv(nnx.Module, _ConvGeometry):
    """Weight-normalised 2-D convolution (one ``g`` per output channel, norm over the receptive field)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
                 strides=1, padding="SAME", kernel_dilation=1, activation: Activation = nnx.relu,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_features(in_features, out_features, "WNConv")
        shape = self._geometry(in_features, out_features, kernel_size, strides, padding, kernel_dilation)
        self.activation = activation
        v = glorot(rngs.params(), shape, param_dtype)
        self.v = nnx.Param(v)
        self.g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1, 2))))
        self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))

    def kernel(self) -> Array:
        return _wn_kernel(self.v[...], self.g[...])

    def __call__(self, x: Array) -> Array:
        x = check_input(x, self.in_features, "WNConv")
        z = _conv(x, self.kernel(), self.strides, self.padding, self.kernel_dilation)
        return _apply(self.activation, z + self.bias[...])


def _batch_norm(features: int, epsilon: float, momentum: float, param_dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """``nnx.BatchNorm`` whose running statistics use ``param_dtype`` (flax keeps them in float32)."""
    norm = nnx.BatchNorm(features, epsilon=epsilon, momentum=momentum, param_dtype=param_dtype, rngs=rngs)
    norm.mean = nnx.BatchStat(jnp.zeros((features,), param_dtype))
    norm.var = nnx.BatchStat(jnp.ones((features,), param_dtype))
    return norm


class BNDense(nnx.Module):
    """``act(BatchNorm(x @ kernel + bias))`` with Keras' epsilon 1e-3 and momentum 0.99."""

    def __init__(self, in_features: int, out_features: int, *, activation: Activation = nnx.relu,
                 epsilon: float = 1e-3, momentum: float = 0.99, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.linear = SPDense(in_features, out_features, activation=None, param_dtype=param_dtype, rngs=rngs)
        self.norm = _batch_norm(out_features, epsilon, momentum, param_dtype, rngs)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return _apply(self.activation, self.norm(self.linear(x)))


class BNConv(nnx.Module):
    """``act(BatchNorm(conv(x) + bias))`` with Keras' epsilon 1e-3 and momentum 0.99."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
                 strides=1, padding="SAME", kernel_dilation=1, activation: Activation = nnx.relu,
                 epsilon: float = 1e-3, momentum: float = 0.99, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = SPConv(in_features, out_features, kernel_size, strides=strides, padding=padding,
                           kernel_dilation=kernel_dilation, activation=None, param_dtype=param_dtype, rngs=rngs)
        self.norm = _batch_norm(out_features, epsilon, momentum, param_dtype, rngs)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return _apply(self.activation, self.norm(self.conv(x)))


class WNMBNDense(nnx.Module):
    """WN+MBN: ``act(MeanOnlyBatchNorm(x @ (g v/||v||) + b))`` (the bias is cancelled by MBN in training)."""

    def __init__(self, in_features: int, out_features: int, *, activation: Activation = nnx.relu,
                 momentum: float = 0.99, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.linear = WNDense(in_features, out_features, activation=None, param_dtype=param_dtype, rngs=rngs)
        self.norm = MeanOnlyBatchNorm(out_features, momentum=momentum, param_dtype=param_dtype)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return _apply(self.activation, self.norm(self.linear(x)))


class WNMBNConv(nnx.Module):
    """WN+MBN convolution: ``act(MeanOnlyBatchNorm(WNConv(x)))``."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int], *,
                 strides=1, padding="SAME", kernel_dilation=1, activation: Activation = nnx.relu,
                 momentum: float = 0.99, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = WNConv(in_features, out_features, kernel_size, strides=strides, padding=padding,
                           kernel_dilation=kernel_dilation, activation=None, param_dtype=param_dtype, rngs=rngs)
        self.norm = MeanOnlyBatchNorm(out_features, momentum=momentum, param_dtype=param_dtype)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        return _apply(self.activation, self.norm(self.conv(x)))
