"""``GmPConv``: 1-, 2- or 3-D convolutions of GmP units, one direction per output channel."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from gmpjax.layers.checks import (
    _EMPTY,
    Activation,
    Metadata,
    _check_callable,
    _check_out_sharding,
    _is_homogeneous,
    _reject_dropped,
    _resolve_use_offset,
    check_input,
    expose_signature,
    resolve_activation,
)
from gmpjax.layers.conv_geometry import ConvGeometry, conv_apply, conv_geometry_of
from gmpjax.layers.gmp import Init, _GmPBase
from gmpjax.layers.gmp_params import Initializer, _constant_init, _split_standard, gmp_metadata_of, standard_metadata_of

Array = jax.Array

__all__ = ["GmPConv"]


@expose_signature
class GmPConv(_GmPBase, ConvGeometry):
    """1-, 2- or 3-D convolution of GmP units, one direction per output channel.

    The unit vector of output channel ``j`` spans its group's receptive field,
    ``n = prod(kernel_size) * in_features / feature_group_count``, and is reshaped to a
    ``(*kernel_size, in_features / groups, out_features)`` kernel in row-major order (for 2-D: flat
    index ``(i * kw + j) * C_in + c``, channel fastest), as in the released code. Output:
    ``radius * activation(conv(x, u) + offset)`` on channels-last inputs ``(*batch, *spatial, C)``,
    as ``nnx.Conv`` (several or no batch axes allowed).

    Args:
      in_features: input channels.
      out_features: output channels (filters).
      kernel_size: a tuple of length 1, 2 or 3 (its length is the convolution rank) or an int,
        which means a square **2-D** kernel ``(k, k)`` (unlike ``nnx.Conv``, where an int is 1-D;
        a layer built from an int rejects unbatched inputs, which would be ambiguous).
      strides, padding, input_dilation, kernel_dilation, feature_group_count: as in ``nnx.Conv``
        (padding: 'SAME', 'SAME_LOWER', 'VALID', 'CIRCULAR', 'REFLECT', 'CAUSAL' (1-D), an int, or
        per-axis ints / (low, high) pairs; checked here). ``feature_group_count = in_features`` is
        depthwise.
      conv_general_dilated: the convolution function (default ``jax.lax.conv_general_dilated``).
      activation, init, impl, use_bias/use_offset, dtype, param_dtype, precision: as in ``GmPDense``.
      promote_dtype, preferred_element_type, theta_init, radius_init, offset_init, *_metadata, rngs: as in ``GmPDense``.
      mask: not supported (raises, see ``docs/layers.md``).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> GmPConv(3, 8, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 3))).shape
    (2, 5, 5, 8)
    >>> GmPConv(4, 4, (3,), feature_group_count=4, rngs=nnx.Rngs(0)).theta.shape  # depthwise 1-D
    (4, 2)
    """

    _name = "GmPConv"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        padding: Any = "SAME",
        input_dilation: int | Sequence[int] | None = 1,
        kernel_dilation: int | Sequence[int] | None = 1,
        feature_group_count: int = 1,
        activation: Activation = nnx.relu,
        init: Init = "uniform",
        impl: str = "auto",
        use_bias: bool = True,
        use_offset: bool | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        theta_init: Initializer | None = None,
        radius_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        conv_general_dilated: Callable[..., Array] = jax.lax.conv_general_dilated,
        promote_dtype: Callable = nnx_dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: nnx.Rngs,
        theta_metadata: Metadata = _EMPTY,
        radius_metadata: Metadata = _EMPTY,
        offset_metadata: Metadata = _EMPTY,
        mask: None = None,
        kernel_init: Initializer | None = None,
        bias_init: None = None,
        kernel_metadata: None = None,
        bias_metadata: None = None,
    ):
        _reject_dropped(
            self._name,
            mask=mask,
            bias_init=bias_init,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
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
        self.kernel_shape = shape
        self.conv_general_dilated = conv_general_dilated
        self._setup(
            math.prod(shape[:-1]),
            self.out_features,
            activation=activation,
            init=init,
            impl=impl,
            use_offset=_resolve_use_offset(use_offset, use_bias, self._name),
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            promote_dtype=promote_dtype,
            preferred_element_type=preferred_element_type,
            theta_init=theta_init,
            radius_init=radius_init,
            offset_init=offset_init,
            theta_metadata=theta_metadata,
            radius_metadata=radius_metadata,
            offset_metadata=offset_metadata,
            rngs=rngs,
            kernel_init=kernel_init,
            kernel_shape=shape,
        )

    def unit_kernel(self, unit: Array | None = None) -> Array:
        """The unit-norm kernel ``u.T`` reshaped to ``(*kernel_size, in_features / groups, out_features)``."""
        return self._checked_unit(unit).T.reshape(self.kernel_shape)

    @property
    def kernel(self) -> Array:
        """Read-only ``nnx.Conv`` kernel of the layer, ``(r u)^T`` in ``(*kernel_size, in / groups, out)`` layout.

        ``act(conv(x, kernel) + bias) == layer(x)`` for activations None, relu, leaky_relu with ``r >= 0``.
        Computed from the parameters on every access (never stored); train ``theta``/``radius``/``offset``.
        """
        u, radius, _ = self._gmp_parts()
        return (radius[:, None] * u).T.reshape(self.kernel_shape)

    def __call__(self, x: Array, out_sharding=None, *, unit: Array | None = None) -> Array:
        """``radius * act(conv(x, kernel(u)) + offset)`` for ``x`` of shape ``(*batch, *spatial, in_features)``."""
        x = check_input(x, self.in_features, self._name)
        _check_out_sharding(out_sharding, self._name)
        kernel = self.unit_kernel(unit)
        kernel = kernel.astype(self._kernel_dtype(kernel))
        z = conv_apply(self, x, kernel, self._compute_offset(kernel.dtype), out_sharding, self._name)
        return self._finish(z)

    @classmethod
    def from_conv(cls, conv: nnx.Conv, *, activation: Activation = None, **kwargs) -> GmPConv:
        """The GmP convolution computing ``act(conv(x))`` exactly; the rules of ``GmPDense.from_linear``.

        Each output channel's kernel slice ``conv.kernel[..., j]`` (flattened row-major) becomes one
        direction; geometry, dtypes and functions are taken from ``conv``.
        """
        act = resolve_activation(activation, "GmPConv.from_conv")
        if not isinstance(conv, nnx.Conv):
            raise TypeError(f"GmPConv.from_conv expects an nnx.Conv (got {type(conv).__name__}).")
        if conv.mask is not None:
            raise ValueError("GmPConv.from_conv: masked convolutions cannot be converted (GmPConv has no mask).")
        if not _is_homogeneous(act):
            raise ValueError(
                f"GmPConv.from_conv: the conversion is exact only for activation None, relu or leaky_relu (got {act})."
            )
        kernel = conv.kernel[...]
        bias = None if conv.bias is None else conv.bias[...]
        w = kernel.reshape(-1, kernel.shape[-1]).T
        theta, radius, offset = _split_standard(w, bias, act, "GmPConv.from_conv", "output channels")
        kwargs = {**gmp_metadata_of(conv.kernel, "GmPConv.from_conv"), **kwargs}
        geometry = conv_geometry_of(conv)
        return cls._from_parts(
            (conv.in_features, conv.out_features),
            theta,
            radius,
            offset,
            act,
            kernel.dtype,
            {
                "use_bias": conv.use_bias,
                "dtype": conv.dtype,
                "precision": conv.precision,
                "promote_dtype": conv.promote_dtype,
                "preferred_element_type": conv.preferred_element_type,
            },
            kwargs,
            **geometry,
        )

    def to_conv(self) -> nnx.Conv:
        """The ``nnx.Conv`` with ``act(conv(x)) == self(x)`` (same rules as ``GmPDense.to_linear``)."""
        u, radius, offset = self._gmp_parts()
        self._check_exportable(radius)
        kernel = (radius[:, None] * u).T.reshape(self.kernel_shape)
        return nnx.Conv(
            self.in_features,
            self.out_features,
            **conv_geometry_of(self),
            use_bias=self.use_offset,
            dtype=self.dtype,
            param_dtype=jnp.dtype(self.param_dtype),
            precision=self.precision,
            kernel_init=_constant_init(kernel),
            bias_init=_constant_init(radius * offset),
            promote_dtype=self.promote_dtype,
            preferred_element_type=self.preferred_element_type,
            rngs=nnx.Rngs(0),
            **cast(dict[str, Any], standard_metadata_of(self.theta, len(self.kernel_shape))),
        )
