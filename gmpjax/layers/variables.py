"""Variable types of the GmP parameters: angles, radii and offsets are ``nnx.Param`` subclasses.

A GmP unit ``r * act(u(theta) . x + lambda)`` has three kinds of trainable parameters that an
optimizer must treat differently from a standard kernel (see ``train.optim``): decoupled weight
decay on the angles ``theta`` turns every unit towards ``e_1``, and the offset ``lambda`` is a bias.
Giving them their own types lets ``nnx.state(model, Angle)``, ``nnx.Optimizer(..., wrt=...)`` and
the weight-decay mask select them by what they are, whatever attribute name they are stored under.
They are ``nnx.Param`` subclasses, so every ``nnx.Param`` filter still selects them.

>>> from flax import nnx
>>> from gmpjax.layers import GmPDense
>>> layer = GmPDense(3, 2, rngs=nnx.Rngs(0))
>>> [type(v).__name__ for v in (layer.theta, layer.radius, layer.offset)]
['Angle', 'Radius', 'Offset']
>>> list(nnx.to_pure_dict(nnx.state(layer, Angle)))
['theta']
"""

from __future__ import annotations

from flax import nnx

__all__ = ["Angle", "Radius", "Offset", "GMP_PARAM_TYPES"]


class Angle(nnx.Param):
    """Hyperspherical angles ``theta`` of GmP units, shape ``(out, fan_in - 1)``; never weight-decayed."""


class Radius(nnx.Param):
    """Radii ``r`` of GmP units, shape ``(out,)`` (the scale of the unit; ``w = r u``)."""


class Offset(nnx.Param):
    """Offsets ``lambda`` of GmP units, shape ``(out,)`` (a bias: never weight-decayed)."""


GMP_PARAM_TYPES: tuple[type[nnx.Param], ...] = (Angle, Radius, Offset)
"""The GmP parameter types, in the order (angle, radius, offset)."""
