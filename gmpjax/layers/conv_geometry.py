"""Convolution geometry shared by GmPConv and the conv baselines: nnx.Conv's kernel sizes, strides, padding, groups.

>>> canonical_padding("same", 2, "conv")
'SAME'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from gmpjax.layers.checks import _as_size, _check_features

Array = jax.Array

__all__ = ["ConvGeometry", "conv_apply", "canonical_padding", "conv_dimension_numbers", "conv_geometry_of"]

_PAD_STRINGS = ("SAME", "SAME_LOWER", "VALID", "CIRCULAR", "REFLECT", "CAUSAL")
_GEOMETRY = ("strides", "padding", "input_dilation", "kernel_dilation", "feature_group_count", "conv_general_dilated")


def conv_geometry_of(layer: Any) -> dict[str, Any]:
    """The ``nnx.Conv`` geometry keywords of a convolution (``nnx.Conv``, ``GmPConv`` or an SP/WN conv).

    All of them name the geometry alike, so a conversion in either direction passes these on unchanged.

    >>> from flax import nnx
    >>> conv_geometry_of(nnx.Conv(3, 4, (3, 3), strides=2, rngs=nnx.Rngs(0)))["strides"]
    2
    """
    return {"kernel_size": tuple(layer.kernel_size), **{k: getattr(layer, k) for k in _GEOMETRY}}


def _tuple(v: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """``v`` broadcast to ``n`` positive ints (Python or numpy integers)."""
    t = (v,) * n if isinstance(v, int | np.integer) else tuple(v)
    if len(t) != n or any(isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 1 for i in t):
        raise ValueError(f"{name} must be a positive int or a sequence of {n} positive ints (got {v!r}).")
    return tuple(int(i) for i in t)


def _kernel_size(kernel_size: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(kernel_size, int | np.integer) and not isinstance(kernel_size, bool):
        return _tuple(kernel_size, 1, "kernel_size")  # as nnx.Conv: an int is a 1-D kernel
    try:
        t = tuple(cast(Sequence[int], kernel_size))
    except TypeError:
        raise ValueError(
            f"{name}: kernel_size must be an int or a sequence of 1, 2 or 3 ints (got {kernel_size!r})."
        ) from None
    if len(t) not in (1, 2, 3):
        raise ValueError(f"{name}: kernel_size must have length 1, 2 or 3 (got {kernel_size!r}).")
    return _tuple(t, len(t), "kernel_size")


def canonical_padding(padding: Any, rank: int, name: str) -> str | tuple[tuple[int, int], ...]:
    """Validate ``padding`` as ``nnx.Conv`` accepts it: a string, an int, or ``rank`` ints / (low, high) pairs.

    >>> canonical_padding(1, 2, "conv"), canonical_padding("same", 2, "conv")
    (((1, 1), (1, 1)), 'SAME')
    """
    if isinstance(padding, str):
        p = padding.upper()
        if p not in _PAD_STRINGS:
            raise ValueError(
                f"{name}: padding {padding!r} is not one of {_PAD_STRINGS} (or ints / (low, high) "
                "pairs per spatial axis)."
            )
        if p == "CAUSAL" and rank != 1:
            raise ValueError(f"{name}: padding 'CAUSAL' needs a 1-D kernel (kernel_size has length {rank}).")
        return p
    if isinstance(padding, int | np.integer) and not isinstance(padding, bool):
        return ((int(padding), int(padding)),) * rank
    if isinstance(padding, Sequence) and len(padding) == rank:
        pairs = []
        for p in padding:
            if isinstance(p, int | np.integer) and not isinstance(p, bool):
                pairs.append((int(p), int(p)))
            elif isinstance(p, Sequence) and len(p) == 2 and all(isinstance(q, int | np.integer) for q in p):
                pairs.append((int(p[0]), int(p[1])))
            else:
                break
        else:
            return tuple(pairs)
    raise ValueError(
        f"{name}: padding must be one of {_PAD_STRINGS}, an int, or a sequence of {rank} ints or "
        f"(low, high) pairs (got {padding!r})."
    )


def conv_dimension_numbers(rank: int) -> jax.lax.ConvDimensionNumbers:
    """Channels-last ``(N, *spatial, C)`` input, ``(*spatial, I, O)`` kernel, for ``rank`` spatial axes."""
    lhs = (0, rank + 1, *range(1, rank + 1))
    rhs = (rank + 1, rank, *range(rank))
    return jax.lax.ConvDimensionNumbers(lhs, rhs, lhs)


def conv_apply(layer: Any, x: Array, kernel: Array, bias: Array | None, out_sharding, name: str) -> Array:
    """``nnx.Conv``'s forward pass with ``layer``'s geometry; ``x`` is ``(*batch, *spatial, C)``, unbatched allowed.

    ``layer`` has ``kernel_size, strides, padding, input_dilation, kernel_dilation, feature_group_count,
    dtype, precision, promote_dtype, conv_general_dilated, preferred_element_type`` and ``int_kernel_size``.
    """
    rank = len(layer.kernel_size)
    if x.ndim < rank + 1:
        raise ValueError(
            f"{name} has a {rank}-D kernel {layer.kernel_size}, so it expects inputs of rank {rank + 2} "
            f"(N, {'spatial, ' * rank}C) or more, but got shape {x.shape}"
            + (
                "; kernel_size was an int, which means a 1-D kernel (as in nnx.Conv): pass (k, k) for a 2-D one."
                if layer.int_kernel_size
                else "."
            )
        )
    lead = x.shape[: x.ndim - rank - 1]
    x = x.reshape((-1, *x.shape[x.ndim - rank - 1 :]))
    padding = layer.padding
    if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
        dilated = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.kernel_dilation, strict=True)]
        if padding == "CAUSAL":
            pads = [(0, 0), (dilated[0] - 1, 0), (0, 0)]
            x = jnp.pad(x, pads)
        else:
            pads = [(0, 0), *[((k - 1) // 2, k // 2) for k in dilated], (0, 0)]
            x = jnp.pad(x, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
        padding = ((0, 0),) * rank  # explicit, as lax rejects string padding with input_dilation
    x, kernel, bias = layer.promote_dtype((x, kernel, bias), dtype=layer.dtype)
    kw = {} if layer.preferred_element_type is None else {"preferred_element_type": layer.preferred_element_type}
    y = layer.conv_general_dilated(
        x,
        kernel,
        layer.strides,
        padding,
        lhs_dilation=layer.input_dilation,
        rhs_dilation=layer.kernel_dilation,
        dimension_numbers=conv_dimension_numbers(rank),
        feature_group_count=layer.feature_group_count,
        precision=layer.precision,
        out_sharding=out_sharding,
        **kw,
    )
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y.reshape((*lead, *y.shape[1:]))


class ConvGeometry:
    """Construction-time validation of the ``nnx.Conv`` geometry arguments (shared with the baselines)."""

    def _geometry(
        self,
        name,
        in_features,
        out_features,
        kernel_size,
        strides,
        padding,
        input_dilation,
        kernel_dilation,
        feature_group_count,
    ) -> tuple[int, ...]:
        in_features, out_features = _check_features(in_features, out_features, name)
        self.int_kernel_size = isinstance(kernel_size, int | np.integer)
        self.kernel_size = _kernel_size(kernel_size, name)
        rank = len(self.kernel_size)
        self.strides = _tuple(1 if strides is None else strides, rank, "strides")
        self.input_dilation = _tuple(1 if input_dilation is None else input_dilation, rank, "input_dilation")
        self.kernel_dilation = _tuple(1 if kernel_dilation is None else kernel_dilation, rank, "kernel_dilation")
        self.padding = canonical_padding(padding, rank, name)
        if self.padding == "VALID":
            self.padding = ((0, 0),) * rank
        if self.padding in ("SAME", "SAME_LOWER") and any(d > 1 for d in self.input_dilation):
            raise ValueError(
                f"{name}: padding {self.padding!r} with input_dilation={self.input_dilation} is not defined by "
                "jax.lax.conv_general_dilated (nnx.Conv fails on it at call time); give explicit (low, high) pairs."
            )
        groups = _as_size(feature_group_count, "feature_group_count", name)
        if in_features % groups or out_features % groups:
            raise ValueError(
                f"{name}: feature_group_count={groups} must divide in_features={in_features} and "
                f"out_features={out_features}."
            )
        self.feature_group_count = groups
        self.in_features, self.out_features = in_features, out_features
        return (*self.kernel_size, in_features // groups, out_features)
