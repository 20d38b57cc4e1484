"""Baseline layers with the same call signature as the GmP layers, each concept written once.

* SP, the standard layer: ``act(x @ W + b)`` (``SPDense``) or ``act(conv(x, W) + b)`` (``SPConv``), Glorot-uniform
  W and zero b (Keras defaults). Dense and conv differ only in the affine map; both derive from ``_Standard``.
* WN, weight normalization (Salimans & Kingma 2016): ``WeightNorm`` is a mixin over a standard layer that
  stores its kernel as the direction ``v`` with a gain ``g`` initialised to ``||v||`` (norm over every axis but
  the last, output, one), so the initial function is the standard layer's: ``WNDense``, ``WNConv``.
* BN, batch norm after the layer: ``BatchNormAfter`` wraps one standard layer (no activation), then
  ``nnx.BatchNorm`` with Keras' epsilon 1e-3 and momentum 0.99, then the activation: ``BNDense``, ``BNConv``.
* WN+MBN, mean-only batch norm after a WN layer: ``MeanOnlyBNAfter``: ``WNMBNDense``, ``WNMBNConv``.

The convolutions take ``nnx.Conv``'s geometry (1-, 2- or 3-D kernels, channels-last inputs,
``feature_group_count``, ``input_dilation``; an int ``kernel_size`` is a 1-D kernel, as in ``nnx.Conv`` and
``GmPConv``). All take ``nnx.Linear``/``nnx.Conv``'s ``use_bias``, ``dtype``, ``param_dtype``, ``precision``,
``kernel_init``, ``bias_init``, ``dot_general``/``conv_general_dilated``, ``promote_dtype``,
``preferred_element_type``, ``kernel_metadata`` and ``bias_metadata`` with the same meaning. WN layers call the
metadata of ``v`` ``kernel_metadata`` (it has the kernel's shape and axes) and add ``g_metadata``; BN and WN+MBN
add ``norm_metadata`` for the (out,)-shaped normalisation parameters and statistics. The dtype policy is the GmP
one: WN's ``v / ||v||`` is computed in at least float32 and cast for the matmul.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> sorted(nnx.to_pure_dict(nnx.state(WNDense(3, 4, rngs=nnx.Rngs(0)), nnx.Param)))
['bias', 'g', 'v']
>>> sorted(nnx.to_pure_dict(nnx.state(BNConv(3, 4, (3, 3), rngs=nnx.Rngs(0)))))
['conv', 'norm']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

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

__all__ = [
    "SPDense",
    "SPConv",
    "WeightNorm",
    "WNDense",
    "WNConv",
    "BatchNormAfter",
    "BNDense",
    "BNConv",
    "MeanOnlyBNAfter",
    "WNMBNDense",
    "WNMBNConv",
]

glorot = nnx.initializers.glorot_uniform()
zeros = nnx.initializers.zeros_init()
_EMPTY: Metadata = MappingProxyType({})


def _apply(activation: Callable | None, z: Array) -> Array:
    return z if activation is None else activation(z)


# --------------------------------------------------------------------------- the standard layer


class _Standard(nnx.Module):
    """The standard layer ``act(affine(x, kernel) + bias)``: options, parameters and call, for dense and conv.

    Subclasses give the affine map (``_affine``) and the constructor's positional sizes; ``WeightNorm``
    overrides where the kernel is stored (``_store_kernel``) and how it is read (``_weight``).
    """

    _name = "layer"
    in_features: int
    out_features: int

    def _setup(
        self,
        shape: tuple[int, ...],
        *,
        activation: Activation,
        use_bias: bool,
        dtype: Any,
        param_dtype: Any,
        precision: Any,
        kernel_init: Callable,
        bias_init: Callable,
        promote_dtype: Callable,
        preferred_element_type: Any,
        kernel_metadata: Metadata,
        bias_metadata: Metadata,
        rngs: nnx.Rngs,
    ) -> None:
        """Check the options and draw kernel and bias; the bias key is folded from the kernel key (one draw)."""
        for arg, fn in (("promote_dtype", promote_dtype), ("kernel_init", kernel_init), ("bias_init", bias_init)):
            _check_callable(fn, arg, self._name)
        _check_metadata(kernel_metadata, "kernel_metadata", self._name)
        _check_metadata(bias_metadata, "bias_metadata", self._name)
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{self._name}: rngs must be an nnx.Rngs (got {type(rngs).__name__}).")
        self.activation = resolve_activation(activation, self._name)
        self.use_bias = bool(use_bias)
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
        self.promote_dtype, self.preferred_element_type = promote_dtype, preferred_element_type
        key = rngs.params()
        if self.use_bias:
            bias = bias_init(jax.random.fold_in(key, 1), (shape[-1],), param_dtype)
            self.bias: nnx.Param | None = nnx.Param(bias, **bias_metadata)
        else:
            self.bias = nnx.data(None)
        self._store_kernel(kernel_init(key, shape, param_dtype), kernel_metadata)

    def _store_kernel(self, kernel: Any, metadata: Metadata) -> None:
        self.kernel = nnx.Param(kernel, **metadata)

    def _weight(self) -> Array:
        """The kernel as it enters the affine map."""
        return self.kernel[...]

    def _bias(self) -> Array | None:
        return None if self.bias is None else self.bias[...]

    def _affine(self, x: Array, kernel: Array, out_sharding: Any) -> Array:
        raise NotImplementedError

    def __call__(self, x: Array, out_sharding: Any = None) -> Array:
        x = check_input(x, self.in_features, self._name)
        return _apply(self.activation, self._affine(x, self._weight(), out_sharding))


class _StandardDense(_Standard):
    """Dense standard layer ``act(x @ kernel + bias)``, kernel ``(in, out)``; keywords as ``nnx.Linear``."""

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
        self._setup(
            (self.in_features, self.out_features),
            activation=activation,
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            bias_init=bias_init,
            promote_dtype=promote_dtype,
            preferred_element_type=preferred_element_type,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
            rngs=rngs,
        )

    def _affine(self, x: Array, kernel: Array, out_sharding: Any) -> Array:
        x, kernel, bias = self.promote_dtype((x, kernel, self._bias()), dtype=self.dtype)
        kw = {} if self.preferred_element_type is None else {"preferred_element_type": self.preferred_element_type}
        y = self.dot_general(
            x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision, out_sharding=out_sharding, **kw
        )
        return y if bias is None else y + bias.astype(y.dtype)


class _StandardConv(_Standard, ConvGeometry):
    """Standard convolution ``act(conv(x, kernel) + bias)``, channels last, ``(*k, in/groups, out)`` kernel."""

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
        geometry = (kernel_size, strides, padding, input_dilation, kernel_dilation, feature_group_count)
        shape = self._geometry(self._name, in_features, out_features, *geometry)
        _check_callable(conv_general_dilated, "conv_general_dilated", self._name)
        self.kernel_shape, self.conv_general_dilated = shape, conv_general_dilated
        self._setup(
            shape,
            activation=activation,
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            kernel_init=kernel_init,
            bias_init=bias_init,
            promote_dtype=promote_dtype,
            preferred_element_type=preferred_element_type,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
            rngs=rngs,
        )

    def _affine(self, x: Array, kernel: Array, out_sharding: Any) -> Array:
        return conv_apply(self, x, kernel, self._bias(), out_sharding, self._name)


@expose_signature
class SPDense(_StandardDense):
    """Standard dense layer ``act(x @ kernel + bias)`` (Glorot-uniform kernel, zero bias).

    Keyword arguments as ``nnx.Linear`` plus ``activation`` (callable, None or a name).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> SPDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).shape
    (2, 4)
    """

    _name = "SPDense"


@expose_signature
class SPConv(_StandardConv):
    """Standard convolution ``act(conv(x, kernel) + bias)`` (channels last, ``(*k, in/groups, out)`` kernel)."""

    _name = "SPConv"


# --------------------------------------------------------------------------- weight normalization


def _wn_kernel(v: Array, g: Array) -> Array:
    """``g * v / ||v||`` with the norm over all axes but the last (output) one, in at least float32."""
    dt = _unit_dtype(v.dtype)
    v = v.astype(dt)
    axes = tuple(range(v.ndim - 1))
    return v * (g.astype(dt) / jnp.sqrt(jnp.sum(jnp.square(v), axis=axes)))


def _extend_signature(cls: type, base: type, **extra: Any) -> None:
    """Give ``cls`` the constructor signature of ``base`` plus the keyword-only ``extra`` (name=default)."""
    sig = inspect.signature(base.__init__)  # type: ignore[misc]  # the class's own __init__, read not called
    new = [
        inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v, annotation="Metadata") for k, v in extra.items()
    ]
    cls.__signature__ = sig.replace(parameters=[*list(sig.parameters.values())[1:], *new])  # type: ignore[attr-defined]


class WeightNorm(_Standard):
    """Weight normalization of a standard layer: kernel ``g * v / ||v||``, ``g`` starting at ``||v||``.

    A mixin placed before a standard layer class (``class WNDense(WeightNorm, _StandardDense)``): the layer
    draws its kernel as usual, stores it as ``v`` (annotated with ``kernel_metadata``) and adds ``g`` of shape
    ``(out,)`` (annotated with ``g_metadata``). ``layer.kernel`` is the read-only effective kernel.
    """

    def __init__(self, *args: Any, g_metadata: Metadata = _EMPTY, **kwargs: Any):
        _check_metadata(g_metadata, "g_metadata", self._name)
        super().__init__(*args, **kwargs)
        v = self.v[...]
        self.g = nnx.Param(jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1)))), **g_metadata)

    def _store_kernel(self, kernel: Any, metadata: Metadata) -> None:
        self.v = nnx.Param(kernel, **metadata)

    def _weight(self) -> Array:
        k = _wn_kernel(self.v[...], self.g[...])
        return k.astype(self.v[...].dtype) if self.dtype is None else k

    @property
    def kernel(self) -> Array:  # type: ignore[override]
        """``g * v / ||v||``, computed in at least float32, in the dtype it enters the affine map with."""
        return self._weight()


class WNDense(WeightNorm, _StandardDense):
    """Weight-normalised dense layer ``act(x @ (g * v / ||v||) + b)``; ``g`` starts at ``||v||``.

    ``kernel_metadata`` annotates ``v`` (the kernel's shape), ``g_metadata`` annotates ``g`` (out,).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> WNDense(3, 4, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).shape
    (2, 4)
    """

    _name = "WNDense"


class WNConv(WeightNorm, _StandardConv):
    """Weight-normalised convolution (one ``g`` per output channel, norm over the receptive field)."""

    _name = "WNConv"


_extend_signature(WNDense, _StandardDense, g_metadata=_EMPTY)
_extend_signature(WNConv, _StandardConv, g_metadata=_EMPTY)


# --------------------------------------------------------------------------- normalization after a layer


class _NormAfter(nnx.Module):
    """``act(norm(layer(x)))``: a normalization after one layer built without activation.

    ``_layer`` is the wrapped layer class, stored under the attribute ``_inner`` (``linear`` / ``conv``, the
    names of the checkpoints); ``layer`` reads it whatever its name.
    """

    _layer: ClassVar[type]
    _inner: ClassVar[str]
    norm: nnx.Module

    def _wrap(self, layer: nnx.Module, norm: nnx.Module, activation: Activation) -> None:
        setattr(self, self._inner, layer)
        self.norm = norm
        self.activation = resolve_activation(activation, type(self).__name__)

    @property
    def layer(self) -> Any:
        """The wrapped layer (``self.linear`` or ``self.conv``)."""
        return getattr(self, self._inner)

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    def __call__(self, x: Array, out_sharding: Any = None) -> Array:
        return _apply(self.activation, self.norm(self.layer(x, out_sharding)))


def _wrapper_signature(cls: type[_NormAfter]) -> type[_NormAfter]:
    """The wrapped layer's positional sizes, then the wrapper's own keywords, then ``**kwargs`` (the layer's)."""
    init = next(vars(c)["__init__"] for c in cls.__mro__ if "__init__" in vars(c))  # the wrapper's own constructor
    own = [p for p in inspect.signature(init).parameters.values() if p.kind is not p.VAR_POSITIONAL]
    sizes = [p for p in inspect.signature(cls._layer).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    cls.__signature__ = inspect.Signature(sizes + own[1:])  # type: ignore[attr-defined]
    return cls


class BatchNormAfter(_NormAfter):
    """``act(BatchNorm(layer(x)))`` with Keras' epsilon 1e-3 and momentum 0.99 (running statistics in eval).

    ``kwargs`` go to the wrapped standard layer (``use_bias``, ``kernel_metadata``, ...); ``dtype`` and
    ``param_dtype`` go to both; ``norm_metadata`` annotates the BatchNorm's scale, bias, mean and var (all (out,)).
    """

    def __init__(
        self,
        *args: Any,
        activation: Activation = nnx.relu,
        epsilon: float = 1e-3,
        momentum: float = 0.99,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        norm_metadata: Metadata = _EMPTY,
        **kwargs: Any,
    ):
        layer = self._layer(*args, activation=None, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kwargs)
        _check_metadata(norm_metadata, "norm_metadata", "BatchNorm")
        f = layer.out_features
        norm = nnx.BatchNorm(
            f,
            epsilon=epsilon,
            momentum=momentum,
            dtype=dtype,
            param_dtype=param_dtype,
            scale_metadata=norm_metadata,
            bias_metadata=norm_metadata,
            rngs=rngs,
        )
        # running statistics in param_dtype (flax keeps them in float32)
        norm.mean = nnx.BatchStat(jnp.zeros((f,), param_dtype), **norm_metadata)
        norm.var = nnx.BatchStat(jnp.ones((f,), param_dtype), **norm_metadata)
        self._wrap(layer, norm, activation)


class MeanOnlyBNAfter(_NormAfter):
    """``act(MeanOnlyBatchNorm(layer(x)))``: the pre-activations minus their batch mean (running mean in eval).

    ``kwargs`` go to the wrapped layer; ``norm_metadata`` annotates the running mean. On a layer with a bias
    the bias is cancelled in training (its gradient is 0), as in the released code.
    """

    def __init__(
        self,
        *args: Any,
        activation: Activation = nnx.relu,
        momentum: float = 0.99,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
        norm_metadata: Metadata = _EMPTY,
        **kwargs: Any,
    ):
        layer = self._layer(*args, activation=None, param_dtype=param_dtype, rngs=rngs, **kwargs)
        f = layer.out_features
        norm = MeanOnlyBatchNorm(f, momentum=momentum, param_dtype=param_dtype, mean_metadata=norm_metadata)
        self._wrap(layer, norm, activation)


@_wrapper_signature
class BNDense(BatchNormAfter):
    """``act(BatchNorm(x @ kernel + bias))``; ``kwargs`` are ``SPDense``'s, the layer is ``self.linear``."""

    _layer, _inner = SPDense, "linear"


@_wrapper_signature
class BNConv(BatchNormAfter):
    """``act(BatchNorm(conv(x) + bias))``; ``kwargs`` are ``SPConv``'s, the layer is ``self.conv``."""

    _layer, _inner = SPConv, "conv"


@_wrapper_signature
class WNMBNDense(MeanOnlyBNAfter):
    """WN+MBN: ``act(MeanOnlyBatchNorm(x @ (g v/||v||) + b))``; ``kwargs`` are ``WNDense``'s (``self.linear``)."""

    _layer, _inner = WNDense, "linear"


@_wrapper_signature
class WNMBNConv(MeanOnlyBNAfter):
    """WN+MBN convolution: ``act(MeanOnlyBatchNorm(WNConv(x)))``; ``kwargs`` are ``WNConv``'s (``self.conv``)."""

    _layer, _inner = WNConv, "conv"
