"""ResNet-18 (He et al. 2016) for 224x224 ImageNet, with a parameterization switch.

Topology (the standard ResNet-18, NHWC; paddings as the usual reference implementation)::

    stem: conv 7x7/2, 64, pad 3 -> [norm] -> ReLU -> maxpool 3x3/2, pad 1
    4 stages of 2 basic blocks, widths 64, 128, 256, 512; the first block of
    stages 2-4 has stride 2 and a 1x1/2 projection shortcut
    basic block: conv 3x3 (stride s) -> [norm] -> ReLU -> conv 3x3 -> [norm]
                 (+ shortcut: identity, or 1x1/s conv -> [norm]) -> add -> ReLU
    global average pool -> Dense(num_classes)

There is no ResNet-18 in the released GmP code; the placement below follows the
pre-release ResNet-34 code of the same repository (see ``docs/imagenet.md``):

* ``bn``: every conv (with bias, Keras default) -> BatchNorm (eps 1e-3, momentum 0.99),
  including the projection shortcut. Head: SP Dense.
* ``sp``: plain convs with bias, no normalization. Head: SP Dense.
* ``wn``: weight-normalised convs, no normalization. Head: WN Dense.
* ``wn_mbn``: WN conv -> mean-only batch norm after every conv, including the
  projection shortcut (pre-activation placement). Head: WN Dense.
* ``gmp``: GmP convs. The stem conv and the first conv of each block are GmP units
  with the ReLU inside (``r * relu(z)``); the second conv of the block and the
  projection shortcut are linear GmP units (``r * z``); ReLU after the addition.
  Head: SP Dense.
* ``gmp_imn``: as ``gmp`` with GmP+IMN convs (paper Eq. 14): every conv, the stem
  and the projection shortcuts included, subtracts the batch mean per channel of
  its own input (conv1 and the shortcut of a block each keep the mean of the block
  input). ``layer_kwargs={"imn_position": "output"}`` puts IMN after every conv
  instead. Head: SP Dense.

Every conv is ``make_conv(parameterization, ...)`` of the registry (``gmpjax.layers.registry``) and
the head is the row's ``head``.

Counting parameters: ``nnx.state(model, nnx.Param)``; the SP model has
``11,684,712`` parameters for 1000 classes (the reference BN model has 11,689,512
with bias-free convs; the ``bn`` variant here keeps conv biases, 11,694,312).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gmpjax.layers import registry

__all__ = ["ResNet18", "BasicBlock", "RESNET18_STAGES"]

RESNET18_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 2), (512, 2))
"""(width, number of basic blocks) of each ResNet-18 stage."""

_PAD3 = ((1, 1), (1, 1))


def _conv(
    row: registry.Parameterization,
    cin: int,
    cout: int,
    k: int,
    stride: int,
    pad: str | tuple[tuple[int, int], ...],
    *,
    relu: bool,
    init: str,
    layer_kwargs: Mapping[str, Any] | None,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """One conv of the parameterization ``row`` with its normalization; ReLU inside when ``relu``."""
    kw = {"strides": stride, "padding": pad, "activation": nnx.relu if relu else None, **(layer_kwargs or {})}
    if row.accepts("init", conv=True):
        kw = {"init": init, **kw}
    return row.build_conv(cin, cout, (k, k), rngs=rngs, **kw)


class BasicBlock(nnx.Module):
    """ResNet basic block ``relu(F(x) + shortcut(x))``, ``F = conv2(conv1(x))``.

    Args:
      parameterization: as in ``ResNet18``.
      in_features, out_features: channels.
      stride: 1 or 2; a projection shortcut is used when ``stride != 1`` or the width changes.
      init, layer_kwargs: as in ``ResNet18``.
    """

    def __init__(
        self,
        parameterization: str,
        in_features: int,
        out_features: int,
        stride: int,
        *,
        init: str = "uniform",
        layer_kwargs: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
    ):
        row = registry.get(parameterization)
        kw: dict[str, Any] = {"init": init, "layer_kwargs": layer_kwargs, "rngs": rngs}
        self.conv1 = _conv(row, in_features, out_features, 3, stride, _PAD3, relu=True, **kw)
        self.conv2 = _conv(row, out_features, out_features, 3, 1, _PAD3, relu=False, **kw)
        if stride != 1 or in_features != out_features:
            self.shortcut: nnx.Module | None = _conv(
                row, in_features, out_features, 1, stride, "VALID", relu=False, **kw
            )
        else:
            self.shortcut = None

    def __call__(self, x: jax.Array) -> jax.Array:
        s = x if self.shortcut is None else self.shortcut(x)
        return nnx.relu(self.conv2(self.conv1(x)) + s)


class ResNet18(nnx.Module):
    """ResNet-18 with a parameterization switch (placement: see the module docstring).

    Args:
      num_classes: number of logits (1000 for ImageNet).
      parameterization: a registry name, e.g. "sp", "wn", "wn_mbn", "bn", "gmp" (see the module docstring).
      init: GmP initialisation, "uniform" (paper) or "official"; ignored by convs without it.
      in_channels: input channels (3).
      width: width of the first stage (64); stages use ``width * (1, 2, 4, 8)``.
        Smaller widths give a cheap model of the same topology for CPU smoke runs.
      layer_kwargs: extra keywords for every conv, e.g. ``{"imn_position": "output"}``.
      rngs: random streams.

    Takes NHWC images of any size >= 32 (224x224 in the paper).

    Shapes only (``nnx.eval_shape`` traces without computing):

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> m = nnx.eval_shape(lambda: ResNet18(1000, parameterization='gmp_imn', rngs=nnx.Rngs(0)))
    >>> nnx.eval_shape(lambda m, x: m(x), m, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)).shape
    (2, 1000)
    """

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        parameterization: str,
        init: str = "uniform",
        in_channels: int = 3,
        width: int = 64,
        layer_kwargs: Mapping[str, Any] | None = None,
        rngs: nnx.Rngs,
    ):
        row = registry.get(parameterization)
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ResNet18: {name} must be a positive int (got {v!r}).")
        self.parameterization = row.name
        self.num_classes = num_classes
        kw: dict[str, Any] = {"init": init, "layer_kwargs": layer_kwargs, "rngs": rngs}
        self.stem = _conv(row, in_channels, width, 7, 2, ((3, 3), (3, 3)), relu=True, **kw)
        blocks = []
        cin = width
        for i, (w, n) in enumerate(RESNET18_STAGES):
            cout = width * w // 64
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(row.name, cin, cout, stride, **kw))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.head = row.head(cin, num_classes, activation=None, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(batch, num_classes)`` for NHWC images ``x``."""
        if x.ndim != 4:
            raise ValueError(f"ResNet18 expects NHWC images of rank 4, got shape {x.shape}.")
        x = self.stem(x)
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))
