"""VGG-6 for 32x32 inputs (ImageNet32), with a parameterization switch.

Architecture of the released ImageNet32 code (all convolutions 3x3, stride 1, 'SAME', NHWC)::

    conv128 - conv128 - maxpool 2x2/2 - conv256 - conv256 - maxpool 2x2/2 -
    conv512 - conv512 - maxpool 2x2/2 - global average pool - Dense(num_classes) logits

No hidden fully connected layers and no dropout. Every conv is ``make_conv(parameterization, ...)`` of the
registry and the head is the row's ``head``; for the built-in parameterizations ``p``:

* ``sp``: conv + bias, ReLU. Head: SP Dense.
* ``bn``: conv + bias -> BatchNorm (eps 1e-3, momentum 0.99) -> ReLU. Head: SP Dense.
* ``wn``: weight-normalised conv, ReLU. Head: WN Dense.
* ``wn_mbn``: WN conv -> mean-only batch norm (on pre-activations) -> ReLU. Head: WN Dense.
* ``gmp``: GmP conv ``r * relu(conv(x, u(theta)) + lambda)``. Head: SP Dense.
* ``gmp_imn``: GmP+IMN convs (paper Eq. 14): each conv's input minus its batch mean per channel, the first
  conv's included. Head: SP Dense. ``layer_kwargs={"imn_position": "output"}`` gives the placement of the
  released code (``gmp_mn``): IMN right after every GmP conv, i.e. before the max-pools, including after the
  last conv (whose output then goes max-pool -> GAP -> head), and not on the network input.

Tensor parallelism: ``VGG6(..., model_axis="model")`` annotates every conv as
column parallel (output channels split over the mesh axis: GmP theta on its
axis 0, radius and offset; a standard kernel on its output axis) and the head
as row parallel (its input features split; ``gmpjax.layers.parallel``), placed on a mesh by ``train.sharding``
on a ``("data", "model")`` mesh. The widths must be divisible by the axis size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gmpjax.layers import registry
from gmpjax.layers.parallel import column_parallel, row_parallel

__all__ = ["VGG6", "VGG6_WIDTHS"]

VGG6_WIDTHS: tuple[int, int, int] = (128, 256, 512)
"""Channel widths of the three VGG-6 stages (two convolutions each)."""


def conv_unit(
    parameterization: str,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    init: str = "uniform",
    model_axis: str | None = None,
    rngs: nnx.Rngs,
    **kwargs: Any,
) -> nnx.Module:
    """A ReLU conv unit of ``parameterization``: ``make_conv`` of its registry row.

    ``init`` goes to convs that take it (GmP); ``model_axis`` annotates the conv as column parallel over that
    mesh axis (``parallel.column_parallel``); ``kwargs`` go to the conv.
    """
    row = registry.get(parameterization)
    if model_axis is not None:
        kernel_ndim = len(kernel_size) + 2 if isinstance(kernel_size, (tuple, list)) else 3  # int: 1-D, as nnx
        kwargs = {**column_parallel(row.name, kernel_ndim=kernel_ndim, axis=model_axis), **kwargs}
    if row.accepts("init", conv=True):
        kwargs = {"init": init, **kwargs}
    return row.build_conv(in_features, out_features, kernel_size, rngs=rngs, **kwargs)


def _check_positive_int(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int (got {v!r}).")
    return v


class VGG6(nnx.Module):
    """VGG-6 (six 3x3 convs in three stages, GAP, linear head) for NHWC images (32x32 in the paper).

    Args:
      num_classes: number of logits (1000 for ImageNet32).
      parameterization: a registry name, e.g. "sp", "wn", "wn_mbn", "bn", "gmp" (see module docstring).
      init: GmP initialisation, "uniform" (paper) or "official" (released code); ignored by convs without it.
      in_channels: input channels (3).
      widths: the three stage widths, default ``(128, 256, 512)``; smaller widths give
        a cheap model of the same topology for CPU smoke runs.
      model_axis: a mesh axis name (``"model"``) to annotate the parameters for
        tensor parallelism (convs column parallel, head row parallel); None: no annotations.
      layer_kwargs: extra keywords for every conv, e.g. ``{"imn_position": "output"}`` (released code's IMN).
      rngs: random streams.

    The input may have any spatial size divisible by 8; the paper uses 32x32.

    Shapes only (``nnx.eval_shape`` traces without computing):

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> m = nnx.eval_shape(lambda: VGG6(1000, parameterization='gmp_imn', rngs=nnx.Rngs(0)))
    >>> nnx.eval_shape(lambda m, x: m(x), m, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)).shape
    (2, 1000)
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        parameterization: str,
        init: str = "uniform",
        in_channels: int = 3,
        widths: Sequence[int] = VGG6_WIDTHS,
        model_axis: str | None = None,
        layer_kwargs: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
    ):
        row = registry.get(parameterization)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("in_channels", in_channels)
        widths = tuple(widths)
        if len(widths) != 3:
            raise ValueError(f"widths must have 3 entries (one per stage), got {widths!r}.")
        for w in widths:
            _check_positive_int("widths[i]", w)
        self.parameterization = row.name
        self.num_classes = num_classes
        chans = (in_channels, widths[0], widths[0], widths[1], widths[1], widths[2], widths[2])
        if model_axis is not None and not isinstance(model_axis, str):
            raise TypeError(f"model_axis must be a mesh axis name (str) or None, got {model_axis!r}.")
        kw = {"padding": "SAME", **(layer_kwargs or {})}
        self.convs = nnx.List(
            [
                conv_unit(row.name, a, b, (3, 3), init=init, model_axis=model_axis, rngs=rngs, **kw)
                for a, b in zip(chans[:-1], chans[1:], strict=True)
            ]
        )
        head_kw: dict[str, Any] = {} if model_axis is None else row_parallel(axis=model_axis)
        self.head = row.head(widths[2], num_classes, activation=None, rngs=rngs, **head_kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits, shape ``(batch, num_classes)``, for images ``x`` of shape ``(batch, H, W, C)``."""
        if x.ndim != 4:
            raise ValueError(f"VGG6 expects NHWC images of rank 4, got shape {x.shape}.")
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i % 2 == 1:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        x = jnp.mean(x, axis=(1, 2))
        return self.head(x)
