"""Optimizer safety for GmP parameters: parameter labels and a weight-decay mask for optax.

Why a mask. Decoupled weight decay (``optax.adamw``, ``optax.add_decayed_weights``)
applies ``p <- p - lr * wd * p`` to every parameter it is given. On a standard
kernel ``w`` this shrinks the norm and leaves the direction alone. On the GmP
angles ``theta`` it is something else entirely: it pulls every angle towards 0,
and ``u(0) = e_1`` (``u_1 = cos theta_1``), so every unit's direction -- the normal
of its characteristic activation boundary -- turns towards the first input axis.
That is not a norm penalty (``||u(theta)|| = 1`` for every theta) but a bias of all
boundaries towards one arbitrary coordinate, and it acts even when the data
gradient is zero. ``weight_decay_mask`` therefore never decays ``theta``.

Policy of ``weight_decay_mask`` (label from ``param_labels``):

==========  =================================  ==========================================
label       parameters                         decayed?
==========  =================================  ==========================================
``angle``   GmP ``theta``                      never (see above)
``radius``  GmP ``radius`` r                   no by default; ``decay_radius=True`` decays
                                               it (``w = r u``, so shrinking ``r`` is what
                                               decoupled decay does to a standard kernel)
``offset``  GmP ``offset`` lambda              never (a bias; biases are not decayed)
``other``   everything else                    only if it has >= 2 dimensions: kernels,
                                               WN directions ``v``, embeddings; not
                                               biases, WN gains ``g``, norm scales
==========  =================================  ==========================================

The labels are read from the parameter *names* the GmP layers use (the last key
of each path: ``theta``, ``radius``, ``offset``), so they work the same on an
``nnx.Module``, an ``nnx.State``, ``TrainState.params`` and the pure dicts of
``nnx.to_pure_dict``. The paper and the released code use no weight decay at all.

>>> import jax.numpy as jnp, optax
>>> from flax import nnx
>>> from gmpjax.layers import GmPDense
>>> layer = GmPDense(3, 2, rngs=nnx.Rngs(0))
>>> params = nnx.state(layer, nnx.Param)
>>> nnx.to_pure_dict(param_labels(params))
{'offset': 'offset', 'radius': 'radius', 'theta': 'angle'}
>>> nnx.to_pure_dict(weight_decay_mask(params))
{'offset': False, 'radius': False, 'theta': False}
>>> tx = optax.adamw(1e-3, weight_decay=0.1, mask=weight_decay_mask)  # decay off theta
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

PyTree = Any

__all__ = ["LABELS", "label_of", "param_labels", "weight_decay_mask", "masked_weight_decay"]

LABELS: tuple[str, ...] = ("angle", "radius", "offset", "other")
"""The labels ``param_labels`` assigns (keys for ``optax.multi_transform``)."""

_BY_NAME: Mapping[str, str] = {"theta": "angle", "radius": "radius", "offset": "offset"}


def _last_name(path: tuple) -> str | None:
    """The name of the last key of a pytree path (dict key, attribute or nnx path entry)."""
    for entry in reversed(path):
        if isinstance(entry, jax.tree_util.GetAttrKey) and entry.name in ("value", "raw_value"):
            continue  # the array inside an nnx.Variable
        for attr in ("key", "name"):
            v = getattr(entry, attr, None)
            if isinstance(v, str):
                return v
        if isinstance(entry, str):
            return entry
        if hasattr(entry, "idx"):  # sequence index: keep looking at the enclosing key
            continue
    return None


def label_of(path: tuple) -> str:
    """Label of one parameter from its pytree path: ``'angle'``, ``'radius'``, ``'offset'`` or ``'other'``.

    >>> from jax.tree_util import DictKey
    >>> label_of((DictKey("hidden"), DictKey("theta"))), label_of((DictKey("head"), DictKey("kernel")))
    ('angle', 'other')
    """
    return _BY_NAME.get(_last_name(path) or "", "other")


def _as_tree(params: PyTree) -> PyTree:
    if isinstance(params, nnx.Module):
        return nnx.state(params, nnx.Param)
    return params


def _map_with_path(fn: Callable[[tuple, Any], Any], params: PyTree) -> PyTree:
    tree = _as_tree(params)
    if not jax.tree.leaves(tree):
        raise ValueError(
            "param_labels/weight_decay_mask: `params` has no array leaves; pass the model, "
            "nnx.state(model, nnx.Param), TrainState.params or a pure dict of parameters."
        )
    return jax.tree_util.tree_map_with_path(fn, tree)


def param_labels(params: PyTree) -> PyTree:
    """Label every parameter ``'angle'`` (GmP theta), ``'radius'``, ``'offset'`` or ``'other'``.

    Args:
      params: an ``nnx.Module`` (its ``nnx.Param`` state is labelled), an
        ``nnx.State``, ``TrainState.params`` or a (nested) dict of arrays.

    Returns:
      A pytree of the same structure as ``params`` (the ``nnx.Param`` state for a
      module) with a label string per array, usable directly as
      ``optax.multi_transform(transforms, param_labels)`` (pass the function itself,
      so optax calls it on whatever tree it gets).

    >>> import jax.numpy as jnp, optax
    >>> params = {"hidden": {"theta": jnp.zeros((4, 2)), "radius": jnp.ones(4)}, "head": {"kernel": jnp.ones((4, 1))}}
    >>> param_labels(params)
    {'head': {'kernel': 'other'}, 'hidden': {'radius': 'radius', 'theta': 'angle'}}
    >>> tx = optax.multi_transform({"angle": optax.sgd(0.1), "radius": optax.adam(1e-3),
    ...                             "offset": optax.adam(1e-3), "other": optax.adam(1e-3)}, param_labels)
    >>> _ = tx.init(params)
    """
    return _map_with_path(lambda path, _: label_of(path), params)


def weight_decay_mask(params: PyTree, *, decay_radius: bool = False) -> PyTree:
    """``True`` where decoupled weight decay is safe and wanted: standard kernels (``'other'`` with ndim >= 2).

    Never ``theta`` (decay turns a unit towards e_1, see the module docstring), never
    offsets, biases, gains or norm scales (1-D or scalar ``'other'``); the radius
    only with ``decay_radius=True``. Pass it as ``mask=`` of ``optax.adamw``,
    ``optax.add_decayed_weights`` or ``optax.masked``.

    Args:
      params: as in ``param_labels``.
      decay_radius: also decay the GmP radius (the counterpart of decaying
        ``w = r u`` in a standard layer).

    Returns:
      A pytree of bools of the same structure.

    >>> import jax.numpy as jnp
    >>> weight_decay_mask({"theta": jnp.zeros((4, 2)), "radius": jnp.ones(4), "kernel": jnp.ones((4, 2)),
    ...                    "bias": jnp.ones(2)}, decay_radius=True)
    {'bias': False, 'kernel': True, 'radius': True, 'theta': False}
    """

    def decay(path: tuple, leaf: Any) -> bool:
        label = label_of(path)
        if label == "other":
            return np.ndim(leaf) >= 2
        return label == "radius" and decay_radius

    return _map_with_path(decay, params)


def masked_weight_decay(weight_decay: float, *, decay_radius: bool = False) -> Any:
    """``optax.add_decayed_weights(weight_decay, mask=...)`` with the GmP-safe mask (for SGD + decay chains).

    >>> import optax
    >>> tx = optax.chain(masked_weight_decay(1e-4), optax.sgd(0.1, momentum=0.9))
    """
    import optax

    if not np.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"masked_weight_decay: weight_decay must be a finite number >= 0 (got {weight_decay!r}).")
    return optax.add_decayed_weights(weight_decay, mask=lambda p: weight_decay_mask(p, decay_radius=decay_radius))
