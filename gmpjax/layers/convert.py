"""Whole-model conversion: every ``nnx.Linear``/``nnx.Conv`` of a model to GmP layers, and back.

``to_gmp(model)`` replaces each selected ``nnx.Linear`` by ``GmPDense.from_linear(layer, activation=None)``
and each ``nnx.Conv`` by ``GmPConv.from_conv(conv, activation=None)``. With ``activation=None`` the GmP
layer computes exactly the standard layer's output, ``x @ (r u)^T + r lambda = x @ W + b`` (``W = r u``,
``b = r lambda``), so the model's own activations, norms and residuals are untouched and the converted
model is the same function. ``to_standard(model)`` folds every GmP layer back into ``nnx.Linear`` /
``nnx.Conv`` (followed by its activation, as an ``nnx.Sequential``, when it has one): the route to
serving and export, since the folded model has no angle map at all.

Sharding metadata moves with the parameters: a kernel annotated ``(None, "model")`` (output axis split)
becomes ``theta`` ``("model", None)`` and ``radius``/``offset`` ``("model",)``, and back. A kernel whose
*input* axis is split (a row-parallel layer) has no GmP counterpart -- each unit's angles live on one
device -- so that annotation is dropped with a warning that names the layer; exclude such layers with
``filter`` to keep them standard.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> mlp = nnx.Sequential(nnx.Linear(3, 8, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(8, 2, rngs=nnx.Rngs(1)))
>>> gmp = to_gmp(mlp)
>>> type(gmp.layers[0]).__name__, type(mlp.layers[0]).__name__
('GmPDense', 'Linear')
>>> x = jnp.ones((4, 3))
>>> bool(jnp.allclose(gmp(x), mlp(x), atol=1e-5)), bool(jnp.allclose(to_standard(gmp)(x), mlp(x), atol=1e-5))
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from gmpjax.layers.baselines import SPConv, SPDense
from gmpjax.layers.conv_geometry import conv_geometry_of
from gmpjax.layers.gmp import GmPDense
from gmpjax.layers.gmp_conv import GmPConv

__all__ = ["to_gmp", "to_standard", "Filter"]

Filter = Callable[[tuple, nnx.Module], bool]
"""``filter(path, layer) -> bool`` selects the layers to convert (``path`` is the tuple of attribute
names and indices from the model to the layer, as ``nnx.iter_modules`` gives it)."""


def _select(model: nnx.Module, types: tuple[type, ...], filter: Filter | None) -> list[tuple[tuple, Any]]:
    return [
        (path, m)
        for path, m in nnx.iter_modules(model)
        if path and type(m) in types and (filter is None or filter(path, m))
    ]


def _replace(model: nnx.Module, path: tuple, new: Any) -> None:
    parent: Any = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    key = path[-1]
    if isinstance(key, int):
        parent[key] = new
    else:
        setattr(parent, key, new)


def _constant(value: Any) -> Callable[..., Any]:
    return lambda key, shape, dtype: value.astype(dtype)


def _as_nnx(layer: SPDense | SPConv) -> nnx.Linear | nnx.Conv:
    """The ``nnx.Linear``/``nnx.Conv`` with the same kernel, bias, options and sharding metadata as an SP layer."""
    md = {"kernel_metadata": layer.kernel.get_metadata(), "bias_metadata": {}}
    md["kernel_metadata"] = {k: v for k, v in md["kernel_metadata"].items() if k in ("out_sharding", "eager_sharding")}
    common = {
        "use_bias": layer.use_bias,
        "dtype": layer.dtype,
        "param_dtype": layer.param_dtype,
        "precision": layer.precision,
        "kernel_init": _constant(layer.kernel[...]),
        "bias_init": _constant(layer.bias[...]) if layer.bias is not None else nnx.initializers.zeros,
        "promote_dtype": layer.promote_dtype,
        "preferred_element_type": layer.preferred_element_type,
        "rngs": nnx.Rngs(0),
        **md,
    }
    if isinstance(layer, SPDense):
        return nnx.Linear(layer.in_features, layer.out_features, dot_general=layer.dot_general, **common)
    return nnx.Conv(layer.in_features, layer.out_features, **conv_geometry_of(layer), **common)


def _check_model(model: Any, who: str) -> None:
    if not isinstance(model, nnx.Module):
        raise TypeError(f"{who}: model must be an nnx.Module (got {type(model).__name__}).")


def to_gmp(model: nnx.Module, *, filter: Filter | None = None, impl: str = "auto") -> nnx.Module:
    """A copy of ``model`` with every ``nnx.Linear``/``nnx.Conv`` (or those ``filter`` selects) as GmP layers.

    The copy computes the same function (to float rounding): each layer becomes its GmP form with
    ``activation=None``. Grouped and depthwise convolutions keep their ``feature_group_count``.

    Args:
      model: any ``nnx.Module`` (not modified).
      filter: ``filter(path, layer) -> bool``; default: all ``nnx.Linear`` and ``nnx.Conv``, and the
        project's ``SPDense``/``SPConv`` (whose activation moves into the GmP layer). Subclasses and
        ``nnx.LinearGeneral`` (attention projections) are never converted.
      impl: the ``u(theta)`` implementation of the new layers.

    Returns:
      The converted copy.
    """
    _check_model(model, "to_gmp")
    if filter is not None and not callable(filter):
        raise TypeError(f"to_gmp: filter must be a callable (path, layer) -> bool (got {type(filter).__name__}).")
    new = nnx.clone(model)
    for path, layer in _select(new, (nnx.Linear, nnx.Conv, SPDense, SPConv), filter):
        act = None
        if isinstance(layer, SPDense | SPConv):  # the project's standard layers carry their activation
            act, layer = layer.activation, _as_nnx(layer)
        if type(layer) is nnx.Linear:
            _replace(new, path, GmPDense.from_linear(layer, activation=act, impl=impl))
        else:
            _replace(new, path, GmPConv.from_conv(layer, activation=act, impl=impl))
    return new


def to_standard(model: nnx.Module, *, filter: Filter | None = None) -> nnx.Module:
    """A copy of ``model`` with every ``GmPDense``/``GmPConv`` (or those ``filter`` selects) folded back.

    ``kernel = (r u)^T``, ``bias = r lambda``; a GmP layer with an activation becomes
    ``nnx.Sequential(standard_layer, activation)``. Exact for activations None, relu and leaky_relu
    with ``r >= 0`` (the layers' ``to_linear``/``to_conv`` raise otherwise, naming the units).

    Args:
      model: any ``nnx.Module`` (not modified).
      filter: ``filter(path, layer) -> bool``; default: all GmP layers.

    Returns:
      The folded copy, with no ``u(theta)`` left in the selected layers.
    """
    _check_model(model, "to_standard")
    new = nnx.clone(model)
    for path, layer in _select(new, (GmPDense, GmPConv), filter):
        std: Any = layer.to_linear() if isinstance(layer, GmPDense) else layer.to_conv()
        if layer.activation is not None:
            std = nnx.Sequential(std, layer.activation)
        _replace(new, path, std)
    return new
