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
* ``gmp_imn``: as ``gmp`` plus input mean normalization (IMN) after the stem
  conv+ReLU, after the first conv+ReLU of every block, and after the ReLU that
  follows each residual addition, so the input of every GmP conv (stem aside,
  whose input is mean-centred by the data pipeline) is mean-normalised. The
  second conv and the shortcut are not followed by IMN. Head: SP Dense.

Counting parameters: ``nnx.state(model, nnx.Param)``; the SP model has
``11,684,712`` parameters for 1000 classes (the reference BN model has 11,689,512
with bias-free convs; the ``bn`` variant here keeps conv biases, 11,694,312).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gmpjax.layers import InputMeanNorm, SPDense, WNDense, check_parameterization, make_conv

__all__ = ["ResNet18", "BasicBlock", "RESNET18_STAGES"]

RESNET18_STAGES: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 2), (512, 2))
"""(width, number of basic blocks) of each ResNet-18 stage."""

_PAD3 = ((1, 1), (1, 1))


def _conv(
    p: str,
    cin: int,
    cout: int,
    k: int,
    stride: int,
    pad: str | tuple[tuple[int, int], ...],
    *,
    relu: bool,
    init: str,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """One conv of parameterization ``p`` with its normalization; ReLU inside when ``relu``."""
    kw = {"strides": stride, "padding": pad, "activation": nnx.relu if relu else None, "rngs": rngs}
    if p in ("gmp", "gmp_imn"):
        return make_conv("gmp", cin, cout, (k, k), init=init, **kw)
    return make_conv(p, cin, cout, (k, k), **kw)


class BasicBlock(nnx.Module):
    """ResNet basic block ``relu(F(x) + shortcut(x))`` (then IMN for ``gmp_imn``).

    Args:
      parameterization: as in ``ResNet18``.
      in_features, out_features: channels.
      stride: 1 or 2; a projection shortcut is used when ``stride != 1`` or the width changes.
    """

    def __init__(
        self,
        parameterization: str,
        in_features: int,
        out_features: int,
        stride: int,
        *,
        init: str = "uniform",
        rngs: nnx.Rngs,
    ):
        p = check_parameterization(parameterization)
        self.conv1 = _conv(p, in_features, out_features, 3, stride, _PAD3, relu=True, init=init, rngs=rngs)
        self.imn1 = InputMeanNorm(out_features) if p == "gmp_imn" else None
        self.conv2 = _conv(p, out_features, out_features, 3, 1, _PAD3, relu=False, init=init, rngs=rngs)
        if stride != 1 or in_features != out_features:
            self.shortcut: nnx.Module | None = _conv(
                p, in_features, out_features, 1, stride, "VALID", relu=False, init=init, rngs=rngs
            )
        else:
            self.shortcut = None
        self.imn_out = InputMeanNorm(out_features) if p == "gmp_imn" else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(x)
        if self.imn1 is not None:
            h = self.imn1(h)
        h = self.conv2(h)
        s = x if self.shortcut is None else self.shortcut(x)
        y = nnx.relu(h + s)
        return y if self.imn_out is None else self.imn_out(y)


class ResNet18(nnx.Module):
    """ResNet-18 with a parameterization switch (placement: see the module docstring).

    Args:
      num_classes: number of logits (1000 for ImageNet).
      parameterization: "sp", "wn", "wn_mbn", "bn", "gmp" or "gmp_imn".
      init: GmP initialisation, "uniform" (paper) or "official"; ignored otherwise.
      in_channels: input channels (3).
      width: width of the first stage (64); stages use ``width * (1, 2, 4, 8)``.
        Smaller widths give a cheap model of the same topology for CPU smoke runs.
      rngs: random streams.

    Takes NHWC images of any size >= 32 (224x224 in the paper).

    Shapes only (``nnx.eval_shape`` traces without computing):

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> m = nnx.eval_shape(lambda: ResNet18(1000, parameterization="gmp_imn", rngs=nnx.Rngs(0)))
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
        rngs: nnx.Rngs,
    ):
        p = check_parameterization(parameterization)
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ResNet18: {name} must be a positive int (got {v!r}).")
        self.parameterization = p
        self.num_classes = num_classes
        self.stem = _conv(p, in_channels, width, 7, 2, ((3, 3), (3, 3)), relu=True, init=init, rngs=rngs)
        self.stem_imn = InputMeanNorm(width) if p == "gmp_imn" else None
        blocks = []
        cin = width
        for i, (w, n) in enumerate(RESNET18_STAGES):
            cout = width * w // 64
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(p, cin, cout, stride, init=init, rngs=rngs))
                cin = cout
        self.blocks = nnx.List(blocks)
        head = WNDense if p.startswith("wn") else SPDense
        self.head = head(cin, num_classes, activation=None, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(batch, num_classes)`` for NHWC images ``x``."""
        if x.ndim != 4:
            raise ValueError(f"ResNet18 expects NHWC images of rank 4, got shape {x.shape}.")
        x = self.stem(x)
        if self.stem_imn is not None:
            x = self.stem_imn(x)
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))
