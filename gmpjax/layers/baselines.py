"""Baseline layers with the same call signature as the GmP layers.

* SP: standard parameterization, ``act(x @ W + b)`` (Glorot-uniform W, zero b; Keras defaults).
* WN: weight normalization (Salimans & Kingma 2016), ``act(g * x @ (v / ||v||) + b)``
  with ``g`` initialised to ``||v||`` so the initial function equals SP's.
* BN: ``act(BatchNorm(x @ W + b))`` with epsilon 1e-3 and momentum 0.99 (Keras defaults).
* WN+MBN: ``act(MeanOnlyBatchNorm(WN(x)))``.

Each comes as a dense and a convolution variant; the convolutions take ``nnx.Conv``'s geometry
(1-, 2- or 3-D kernels, channels-last inputs, ``feature_group_count``, ``input_dilation``; an int
``kernel_size`` is a 1-D kernel, as in ``nnx.Conv`` and ``GmPConv``). All take ``nnx.Linear``/``nnx.Conv``'s
``use_bias``, ``dtype``, ``param_dtype``, ``precision``, ``kernel_init``, ``bias_init``,
``dot_general``/``conv_general_dilated``, ``promote_dtype``, ``preferred_element_type``,
``kernel_metadata`` and ``bias_metadata`` with the same meaning. WN layers call the metadata of ``v``
``kernel_metadata`` (it has the kernel's shape and axes) and add ``g_metadata``; BN and WN+MBN add
``norm_metadata`` for the (out,)-shaped normalisation parameters and statistics. The dtype policy
is the GmP one: WN's ``v / ||v||`` is computed in at least float32 and cast for the matmul.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from gmpjax.layers.checks import (
    Activation,
    _check_callable,
    _check_features,
    _check_metadata,
    check_input,
    expose_signature,
    resolve_activation,
)
from gmpjax.layers.conv_geometry import ConvGeometry, conv_apply
from gmpjax.layers.gmp_params import _unit_dtype
from gmpjax.layers.imn import MeanOnlyBatchNorm

Array = jax.Array
Metadata = Mapping[str, Any]

__all__ = ["SPDense", "SPConv", "WNDense", "WNConv", "BNDense", "BNConv", "WNMBNDense", "WNMBNConv"]

glorot = nnx.initializers.glorot_uniform()
zeros = nnx.initializers.zeros_init()
_EMPTY: Metadata = MappingProxyType({})


def _apply(activation: Callable | None, z: Array) -> Array:
    return z if activation is None else activation(z)


def _raw(value: Any) -> Array:
    return value.raw_value if isinstance(value, nnx.VariableMetadata) else value


class _Standard(nnx.Module):
    """Shared ``kernel`` / ``bias`` / dtype handling of the SP and WN layers."""

    _name = "layer"
    dot_general: Callable[..., Array]

    def _options(
        self,
        activation,
        use_bias,
        dtype,
        param_dtype,
        precision,
        promote_dtype,
        preferred_element_type,
        kernel_metadata,
        bias_metadata,
        rngs,
    ):
        _check_callable(promote_dtype, "promote_dtype", self._name)
        _check_metadata(kernel_metadata, "kernel_metadata", self._name)
        _check_metadata(bias_metadata, "bias_metadata", self._name)
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{self._name}: rngs must be an nnx.Rngs (got {type(rngs).__name__}).")
        self.activation = resolve_activation(activation, self._name)
        self.use_bias = bool(use_bias)
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.preferred_element_type = promote_dtype, preferred_element_type

    def _init_params(self, shape, kernel_init, bias_init, kernel_metadata, bias_metadata, rngs) -> Array:
        """Kernel (or WN ``v``) and bias Params; the bias key is folded from the kernel key (one draw per layer)."""
        _check_callable(kernel_init, "kernel_init", self._name)
        _check_callable(bias_init, "bias_init", self._name)
        key = rngs.params()
        kernel = kernel_init(key, shape, self.param_dtype)
        if self.use_bias:
            self.bias: nnx.Param | None = nnx.Param(
                bias_init(jax.random.fold_in(key, 1), (shape[-1],), self.param_dtype), **bias_metadata
            )
        else:
            self.bias = nnx.data(None)
        return kernel

    def _bias(self) -> Array | None:
        return None if self.bias is None else self.bias[...]

    def _dense(self, x: Array, kernel: Array, out_sharding) -> Array:
        x, kernel, bias = self.promote_dtype((x, kernel, self._bias()), dtype=self.dtype)
        kw = {} if self.preferred_element_type is None else {"preferred_element_type": self.preferred_element_type}
        y = self.dot_general(
            x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision, out_sharding=out_sharding, **kw
        )
        return y if bias is None else y + bias.astype(y.dtype)


@expose_signature
class SPDense(_Standard):
    """Standard dense layer ``act(x @ kernel + bias)`` (Glorot-uniform kernel, zero bias).

    Keyword arguments as ``nnx.Linear`` plus ``activation`` (callable, None or a name).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> SPDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).shape
    (2, 4)
    """

    _name = "SPDense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: Activation = nnx.relu,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable = glorot,
        bias_init: Callable = zeros,
        dot_general: Callable[..., Array] = jax.lax.dot_general,
        promote_dtype: Callable = nnx_dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: nnx.Rngs,
        kernel_metadata: Metadata = _EMPTY,
        bias_metadata: Metadata = _EMPTY,
    ):
        self.in_features, self.out_features = _check_features(in_features, out_features, self._name)
        _check_callable(dot_general, "dot_general", self._name)
        self.dot_general = dot_general
        self._options(
            activation,
            use_bias,
            dtype,
            param_dtype,
            precision,
            promote_dtype,
            preferred_element_type,
            kernel_metadata,
            bias_metadata,
            rngs,
        )
        kernel = self._init_params(
            (self.in_features, self.out_features), kernel_init, bias_init, kernel_metadata, bias_metadata, rngs
        )
        self.kernel = nnx.Param(kernel, **kernel_metadata)

    def __call__(self, x: Array, out_sharding=None) -> Array:
        x = check_input(x, self.in_features, self._name)
        return _apply(self.activation, self._dense(x, self.kernel[...], out_sharding))


@expose_signature
class SPConv(_Standard, ConvGeometry):
    """Standard convolution ``act(conv(x, kernel) + bias)`` (channels last, ``(*k, in/groups, out)`` kernel)."""

    _name = "SPConv"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        padding: Any = "SAME",
        input_dilation: Any = 1,
        kernel_dilation: Any = 1,
        feature_group_count: int = 1,
        activation: Activation = nnx.relu,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable = glorot,
        bias_init: Callable = zeros,
        conv_general_dilated: Callable[..., Array] = jax.lax.conv_general_dilated,
        promote_dtype: Callable = nnx_dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: nnx.Rngs,
        kernel_metadata: Metadata = _EMPTY,
        bias_metadata: Metadata = _EMPTY,
    ):
        shape = self._geometry(
            self._name,
            in_features,
            out_features,
            kernel_size,
            strides,
            padding,
            input_dilation,
            kernel_dilation,
            feature_group_count,
        )
        _check_callable(conv_general_dilated, "conv_general_dilated", self._name)
        self.kernel_shape, self.conv_general_dilated = shape, conv_general_dilated
        self._options(
            activation,
            use_bias,
            dtype,
            param_dtype,
            precision,
            promote_dtype,
            preferred_element_type,
            kernel_metadata,
            bias_metadata,
            rngs,
        )
        self.kernel = nnx.Param(
            self._init_params(shape, kernel_init, bias_init, kernel_metadata, bias_metadata, rngs), **kernel_metadata
        )

    def __call__(self, x: Array, out_sharding=None) -> Array:
        x = check_input(x, self.in_features, self._name)
        return _apply(self.activation, conv_apply(self, x, self.kernel[...], self._bias(), out_sharding, self._name))


def _wn_kernel(v: Array, g: Array) -> Array:
    """``g * v / ||v||`` with the norm over all axes but the last (output) one, in at least float32."""
    dt = _unit_dtype(v.dtype)
    v = v.astype(dt)
    axes = tuple(range(v.ndim - 1))
    return v * (g.astype(dt) / jnp.sqrt(jnp.sum(jnp.square(v), axis=axes)))


class _WN(_Standard):
    def _wn_params(self, v: Any, g_metadata: Metadata, kernel_metadata: Metadata) -> None:
        _check_metadata(g_metadata, "g_metadata", self._name)
        raw = _raw(v)
        self.g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(raw), axis=tuple(range(raw.ndim - 1)))), **g_metadata)
        self.v = nnx.Param(v, **kernel_metadata)

    def kernel(self) -> Array:
        """``g * v / ||v||``, computed in at least float32, in the dtype it enters the matmul with."""
        k = _wn_kernel(self.v[...], self.g[...])
        return k.astype(self.v[...].dtype) if self.dtype is None else k


@expose_signature
class WNDense(_WN):
    """Weight-normalised dense layer ``act(x @ (g * v / ||v||) + b)``; ``g`` starts at ``||v||``.

    ``kernel_metadata`` annotates ``v`` (the kernel's shape), ``g_metadata`` annotates ``g`` (out,).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> WNDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).shape
    (2, 4)
    """

    _name = "WNDense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: Activation = nnx.relu,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable = glorot,
        bias_init: Callable = zeros,
        dot_general: Callable[..., Array] = jax.lax.dot_general,
        promote_dtype: Callable = nnx_dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: nnx.Rngs,
        kernel_metadata: Metadata = _EMPTY,
        g_metadata: Metadata = _EMPTY,
        bias_metadata: Metadata = _EMPTY,
    ):
        self.in_features, self.out_features = _check_features(in_features, out_features, self._name)
        _check_callable(dot_general, "dot_general", self._name)
        self.dot_general = dot_general
        self._options(
            activation,
            use_bias,
            dtype,
            param_dtype,
            precision,
            promote_dtype,
            preferred_element_type,
            kernel_metadata,
            bias_metadata,
            rngs,
        )
        v = self._init_params(
            (self.in_features, self.out_features), kernel_init, bias_init, kernel_metadata, bias_metadata, rngs
        )
        self._wn_params(v, g_metadata, kernel_metadata)

    def __call__(self, x: Array, out_sharding=None) -> Array:
        x = check_input(x, self.in_features, self._name)
        return _apply(self.activation, self._dense(x, self.kernel(), out_sharding))


@expose_signature
class WNConv(_WN, ConvGeometry):
    """Weight-normalised convolution (one ``g`` per output channel, norm over the receptive field)."""

    _name = "WNConv"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        padding: Any = "SAME",
        input_dilation: Any = 1,
        kernel_dilation: Any = 1,
        feature_group_count: int = 1,
        activation: Activation = nnx.relu,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init: Callable = glorot,
        bias_init: Callable = zeros,
        conv_general_dilated: Callable[..., Array] = jax.lax.conv_general_dilated,
        promote_dtype: Callable = nnx_dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: nnx.Rngs,
        kernel_metadata: Metadata = _EMPTY,
        g_metadata: Metadata = _EMPTY,
        bias_metadata: Metadata = _EMPTY,
    ):
        shape = self._geometry(
            self._name,
            in_features,
            out_features,
            kernel_size,
            strides,
            padding,
            input_dilation,
            kernel_dilation,
            feature_group_count,
        )
        _check_callable(conv_general_dilated, "conv_general_dilated", self._name)
        self.kernel_shape, self.conv_general_dilated = shape, conv_general_dilated
        self._options(
            activation,
            use_bias,
            dtype,
            param_dtype,
            precision,
            promote_dtype,
            preferred_element_type,
            kernel_metadata,
            bias_metadata,
            rngs,
        )
        v = self._init_params(shape, kernel_init, bias_init, kernel_metadata, bias_metadata, rngs)
        self._wn_params(v, g_metadata, kernel_metadata)

    def __call__(self, x: Array, out_sharding=None) -> Array:
        x = check_input(x, self.in_features, self._name)
        return _apply(self.activation, conv_apply(self, x, self.kernel(), self._bias(), out_sharding, self._name))


def _batch_norm(
    features: int, epsilon: float, momentum: float, dtype, param_dtype, norm_metadata: Metadata, rngs: nnx.Rngs
) -> nnx.BatchNorm:
    """``nnx.BatchNorm`` whose running statistics use ``param_dtype`` (flax keeps them in float32)."""
    _check_metadata(norm_metadata, "norm_metadata", "BatchNorm")
    norm = nnx.BatchNorm(
        features,
        epsilon=epsilon,
        momentum=momentum,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_metadata=norm_metadata,
        bias_metadata=norm_metadata,
        rngs=rngs,
    )
    norm.mean = nnx.BatchStat(jnp.zeros((features,), param_dtype), **norm_metadata)
    norm.var = nnx.BatchStat(jnp.ones((features,), param_dtype), **norm_metadata)
    return norm


def _inner(layer: nnx.Module, x: Array, out_sharding) -> Array:
    return layer(x, out_sharding)


@expose_signature
class BNDense(nnx.Module):
    """``act(BatchNorm(x @ kernel + bias))`` with Keras' epsilon 1e-3 and momentum 0.99.

    ``kwargs`` are ``SPDense``'s (``use_bias``, ``dtype``, ``kernel_metadata``, ...); ``dtype`` also goes
    to the BatchNorm; ``norm_metadata`` annotates its scale, bias, mean and var (all (out,)).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: Activation = nnx.relu,
        epsilon: float = 1e-3,
        momentum: float = 0.99,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        norm_metadata: Metadata = _EMPTY,
        **kwargs: Any,
    ):
        self.linear = SPDense(
            in_features, out_features, activation=None, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kwargs
        )
        self.norm = _batch_norm(self.linear.out_features, epsilon, momentum, dtype, param_dtype, norm_metadata, rngs)
        self.activation = resolve_activation(activation, "BNDense")

    def __call__(self, x: Array, out_sharding=None) -> Array:
        return _apply(self.activation, self.norm(_inner(self.linear, x, out_sharding)))


@expose_signature
class BNConv(nnx.Module):
    """``act(BatchNorm(conv(x) + bias))`` with Keras' epsilon 1e-3 and momentum 0.99; ``kwargs`` are ``SPConv``'s."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        activation: Activation = nnx.relu,
        epsilon: float = 1e-3,
        momentum: float = 0.99,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        norm_metadata: Metadata = _EMPTY,
        **kwargs: Any,
    ):
        self.conv = SPConv(
            in_features,
            out_features,
            kernel_size,
            strides,
            activation=None,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
            **kwargs,
        )
        self.norm = _batch_norm(self.conv.out_features, epsilon, momentum, dtype, param_dtype, norm_metadata, rngs)
        self.activation = resolve_activation(activation, "BNConv")

    def __call__(self, x: Array, out_sharding=None) -> Array:
        return _apply(self.activation, self.norm(_inner(self.conv, x, out_sharding)))


@expose_signature
class WNMBNDense(nnx.Module):
    """WN+MBN: ``act(MeanOnlyBatchNorm(x @ (g v/||v||) + b))`` (the bias is cancelled by MBN in training).

    ``kwargs`` are ``WNDense``'s; ``norm_metadata`` annotates the MBN running mean.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: Activation = nnx.relu,
        momentum: float = 0.99,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        norm_metadata: Metadata = _EMPTY,
        **kwargs: Any,
    ):
        self.linear = WNDense(in_features, out_features, activation=None, param_dtype=param_dtype, rngs=rngs, **kwargs)
        self.norm = MeanOnlyBatchNorm(
            self.linear.out_features, momentum=momentum, param_dtype=param_dtype, mean_metadata=norm_metadata
        )
        self.activation = resolve_activation(activation, "WNMBNDense")

    def __call__(self, x: Array, out_sharding=None) -> Array:
        return _apply(self.activation, self.norm(_inner(self.linear, x, out_sharding)))


@expose_signature
class WNMBNConv(nnx.Module):
    """WN+MBN convolution: ``act(MeanOnlyBatchNorm(WNConv(x)))``; ``kwargs`` are ``WNConv``'s."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        activation: Activation = nnx.relu,
        momentum: float = 0.99,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        norm_metadata: Metadata = _EMPTY,
        **kwargs: Any,
    ):
        self.conv = WNConv(
            in_features,
            out_features,
            kernel_size,
            strides,
            activation=None,
            param_dtype=param_dtype,
            rngs=rngs,
            **kwargs,
        )
        self.norm = MeanOnlyBatchNorm(
            self.conv.out_features, momentum=momentum, param_dtype=param_dtype, mean_metadata=norm_metadata
        )
        self.activation = resolve_activation(activation, "WNMBNConv")

    def __call__(self, x: Array, out_sharding=None) -> Array:
        return _apply(self.activation, self.norm(_inner(self.conv, x, out_sharding)))
