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

==========  ==========================================  =====================================
label       parameters                                  decayed?
==========  ==========================================  =====================================
``angle``   ``gmpjax.layers.Angle`` (GmP ``theta``)      never (see above)
``radius``  ``gmpjax.layers.Radius`` (GmP ``r``)         no by default; ``decay_radius=True``
                                                        decays it (``w = r u``, so shrinking
                                                        ``r`` is what decoupled decay does to a
                                                        standard kernel)
``offset``  ``gmpjax.layers.Offset`` (GmP ``lambda``)   never (a bias)
``other``   everything else                             only if it has >= 2 dimensions and is
                                                        not a bias: kernels, WN directions
                                                        ``v``, embeddings; never ``bias`` (of
                                                        any rank, e.g. attention's 2-D q/k/v
                                                        biases), gains or norm scales
==========  ==========================================  =====================================

How a parameter is recognised. In a model, an ``nnx.State``, ``TrainState.params`` or what
``nnx.Optimizer`` hands optax, every parameter is an ``nnx.Variable`` and the GmP ones have their
own types, so ``theta`` is never decayed whatever it is called. A plain pytree of arrays (e.g.
``nnx.to_pure_dict``) carries no types: there the last key names the parameter (``theta``,
``radius``, ``offset``, ``bias``, ``kernel``, ...), and a leaf that has no name (a bare array, a
list) or an unknown name with two or more dimensions is an error rather than a guess. The paper and
the released code use no weight decay at all.

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

from gmpjax.layers.variables import Angle, Offset, Radius

PyTree = Any

__all__ = [
    "LABELS",
    "OPTIMIZERS",
    "label_of",
    "param_labels",
    "weight_decay_mask",
    "masked_weight_decay",
    "make_optimizer",
    "keras_adam",
]

LABELS: tuple[str, ...] = ("angle", "radius", "offset", "other")
"""The labels ``param_labels`` assigns (keys for ``optax.multi_transform``)."""

_BY_TYPE: tuple[tuple[type, str], ...] = ((Angle, "angle"), (Radius, "radius"), (Offset, "offset"))
_BY_NAME: Mapping[str, str] = {"theta": "angle", "radius": "radius", "offset": "offset"}
#: Names that are biases whatever their rank: never decayed.
_BIAS_NAMES = frozenset({"bias", "biases", "offset", "offsets"})
#: Names an untyped (pure) tree may use for parameters with >= 2 dimensions that are decayed.
_KERNEL_NAMES = frozenset({"kernel", "kernels", "embedding", "embeddings", "weight", "weights", "w", "v"})


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


def label_of(path: tuple, var_type: type | None = None) -> str:
    """Label of one parameter: ``'angle'``, ``'radius'``, ``'offset'`` or ``'other'``.

    Args:
      path: its pytree path.
      var_type: its ``nnx.Variable`` type when known. Then the type alone decides: a subclass of ``Angle``,
        ``Radius`` or ``Offset`` (a new parameterization's own angle type included) gets that label and every
        other type ``'other'``, whatever the name. Only an untyped leaf (``None``) is labelled by its name.

    >>> from jax.tree_util import DictKey
    >>> label_of((DictKey("hidden"), DictKey("theta"))), label_of((DictKey("head"), DictKey("kernel")))
    ('angle', 'other')
    >>> label_of((DictKey("angles"),), Angle), label_of((DictKey("theta"),), nnx.Param)
    ('angle', 'other')
    """
    if var_type is None:
        return _BY_NAME.get(_last_name(path) or "", "other")
    return next((label for cls, label in _BY_TYPE if issubclass(var_type, cls)), "other")


def _as_tree(params: PyTree) -> PyTree:
    if isinstance(params, nnx.Module):
        return nnx.state(params, nnx.Param)
    return params


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _map_params(fn: Callable[[tuple, type | None, Any], Any], params: PyTree, who: str) -> PyTree:
    """``fn(path, variable type or None, array)`` on every parameter, keeping ``params``' structure."""
    tree = _as_tree(params)
    if isinstance(tree, jax.Array | np.ndarray) or not jax.tree.leaves(tree):
        got = "a bare array" if jax.tree.leaves(tree) else "no array leaves"
        raise ValueError(
            f"{who}: `params` is {got}; pass the model, nnx.state(model, nnx.Param), TrainState.params or a dict "
            "of named parameters (the mask reads each parameter's type, or its name in a plain dict)."
        )

    def visit(path: tuple, x: Any) -> Any:
        # a plain value where the Variable was: a prefix of both the typed tree optax gets at init and
        # the plain tree of updates nnx.Optimizer hands it later, so a precomputed mask fits both
        return fn(path, type(x), x.get_value()) if _is_var(x) else fn(path, None, x)

    return jax.tree_util.tree_map_with_path(visit, tree, is_leaf=_is_var)


def _check_untyped(path: tuple, leaf: Any, who: str) -> str:
    """The name of an untyped parameter, or a ValueError where only a guess could label it."""
    name = _last_name(path)
    where = jax.tree_util.keystr(path) or "<root>"
    if name is None:
        raise ValueError(
            f"{who}: the parameter at {where} has no name and no nnx type, so nothing says whether it is a GmP "
            "angle, a bias or a kernel; pass the model or nnx.state(model, nnx.Param) (typed), or a dict of "
            "named parameters."
        )
    if np.ndim(leaf) >= 2 and name not in _KERNEL_NAMES and name not in _BY_NAME and name not in _BIAS_NAMES:
        raise ValueError(
            f"{who}: the plain (untyped) parameter {where!s} named {name!r} has {np.ndim(leaf)} dimensions and an "
            f"unknown name, so it could be GmP angles (never decayed) or a kernel; pass the model or "
            f"nnx.state(model, nnx.Param), whose gmpjax.layers.Angle/Radius/Offset types say which, or name it "
            f"one of {sorted(_KERNEL_NAMES | set(_BY_NAME) | _BIAS_NAMES)}."
        )
    return name


def param_labels(params: PyTree) -> PyTree:
    """Label every parameter ``'angle'`` (GmP theta), ``'radius'``, ``'offset'`` or ``'other'``.

    Args:
      params: an ``nnx.Module`` (its ``nnx.Param`` state is labelled), an
        ``nnx.State``, ``TrainState.params`` or a (nested) dict of named arrays.

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

    def label(path: tuple, var_type: type | None, leaf: Any) -> str:
        if var_type is None:
            _check_untyped(path, leaf, "param_labels")
        return label_of(path, var_type)

    return _map_params(label, params, "param_labels")


def weight_decay_mask(params: PyTree, *, decay_radius: bool = False) -> PyTree:
    """``True`` where decoupled weight decay is safe and wanted: standard kernels (``'other'``, ndim >= 2, no bias).

    Never ``theta`` (decay turns a unit towards e_1, see the module docstring), never
    offsets, biases of any rank, gains or norm scales; the radius only with
    ``decay_radius=True``. Pass it as ``mask=`` of ``optax.adamw``,
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

    def decay(path: tuple, var_type: type | None, leaf: Any) -> bool:
        if var_type is None:
            _check_untyped(path, leaf, "weight_decay_mask")
        label = label_of(path, var_type)
        if label == "other":
            return np.ndim(leaf) >= 2 and _last_name(path) not in _BIAS_NAMES
        return label == "radius" and decay_radius

    return _map_params(decay, params, "weight_decay_mask")


def masked_weight_decay(weight_decay: float, *, decay_radius: bool = False) -> Any:
    """``optax.add_decayed_weights(weight_decay, mask=...)`` with the GmP-safe mask (for SGD + decay chains).

    >>> import optax
    >>> tx = optax.chain(masked_weight_decay(1e-4), optax.sgd(0.1, momentum=0.9))
    """
    import optax

    if not np.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"masked_weight_decay: weight_decay must be a finite number >= 0 (got {weight_decay!r}).")
    return optax.add_decayed_weights(weight_decay, mask=lambda p: weight_decay_mask(p, decay_radius=decay_radius))


def keras_adam(learning_rate: float, eps: float = 1e-7) -> Any:
    """Adam with Keras' epsilon (1e-7) and an injected learning rate (a per-replica hyper-parameter that the
    plateau rule scales), as the released Keras code of the small experiments (UCI, Levy, banana) trains.

    >>> float(keras_adam(0.5).init({"w": np.zeros(2)}).hyperparams["learning_rate"])
    0.5
    """
    import optax

    if isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"keras_adam: eps must be > 0 (got {eps!r}).")
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate, eps=eps)


OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
"""The names ``make_optimizer`` takes."""


def make_optimizer(
    name: str,
    learning_rate: float | Callable[[Any], Any],
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_norm: float | None = None,
    decay_all: bool = False,
) -> Any:
    """The optimizers of the host experiments, with the GmP-safe weight-decay mask and an injected learning rate.

    * ``"sgd"``: L2 decay (``weight_decay * params`` added to the gradient) then SGD with heavy-ball
      ``momentum`` (the image experiments; the paper and the released code use ``weight_decay=0``).
    * ``"adamw"``: Adam (``b1``, ``b2``, ``eps``) with decoupled weight decay (the transformer LM).

    The decay goes through ``weight_decay_mask``: standard kernels only, never the GmP angles,
    radius, offsets, biases or norm scales; ``decay_all=True`` decays every parameter (the unsafe
    behaviour of an unmasked decay). ``clip_norm`` clips the gradient's global norm first. The
    optimizer is built with ``optax.inject_hyperparams``, so the learning rate (a number or an
    optax schedule) lives in ``opt_state.hyperparams["learning_rate"]``, where plateau decay sets it.

    Args:
      name: one of ``OPTIMIZERS``.
      learning_rate: a positive number or an optax schedule ``step -> rate``.
      momentum: SGD momentum in [0, 1).
      weight_decay: decay coefficient (>= 0).
      b1, b2, eps: Adam's moment decays and epsilon.
      clip_norm: the largest global gradient norm (None: no clipping).
      decay_all: decay every parameter, not only the masked kernels.

    Raises:
      ValueError: an unknown ``name`` or a value out of range.

    >>> import jax.numpy as jnp
    >>> params = {"theta": jnp.full((2, 3), 0.5), "kernel": jnp.full((3, 2), 2.0)}
    >>> tx = make_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.5)
    >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    >>> lr = state.hyperparams["learning_rate"]
    >>> round(float(updates["kernel"][0, 0]), 6), bool(updates["theta"].any()), round(float(lr), 6)
    (-0.1, False, 0.1)
    >>> make_optimizer("adam", 0.1)
    Traceback (most recent call last):
    ValueError: make_optimizer: unknown optimizer 'adam'; choose one of ('sgd', 'adamw').
    """
    import optax

    if name not in OPTIMIZERS:
        raise ValueError(f"make_optimizer: unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"make_optimizer: weight_decay must be a finite number >= 0 (got {weight_decay!r}).")
    if not 0 <= momentum < 1:
        raise ValueError(f"make_optimizer: momentum must be in [0, 1) (got {momentum!r}).")
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"make_optimizer: learning_rate must be > 0 or an optax schedule (got {learning_rate!r}).")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"make_optimizer: clip_norm must be > 0 or None (got {clip_norm!r}).")
    mask = None if decay_all else weight_decay_mask
    clip = [optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []

    def sgd(learning_rate: Any, momentum: float, weight_decay: float) -> optax.GradientTransformation:
        parts = [optax.add_decayed_weights(weight_decay, mask=mask)] if weight_decay else []
        return optax.chain(*clip, *parts, optax.sgd(learning_rate, momentum=momentum))

    def adamw(learning_rate: Any, b1: float, b2: float, eps: float, weight_decay: float) -> Any:
        return optax.chain(
            *clip, optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
        )

    if name == "sgd":
        return optax.inject_hyperparams(sgd, static_args=("weight_decay",))(
            learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay
        )
    # Adam's constants stay Python floats (static), as in optax.adamw itself: only the learning rate is injected
    return optax.inject_hyperparams(adamw, static_args=("b1", "b2", "eps", "weight_decay"))(
        learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
    )
