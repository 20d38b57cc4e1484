"""Characteristic activation boundaries (CABs): the geometry of ReLU units (GmP paper, Sec. 2-3).

A ReLU unit ``relu(w . x + b)`` switches on at its *characteristic activation
boundary* ``B = {x : w . x + b = 0}`` (Def. 2.1), a hyperplane with unit normal
``w / ||w||`` (pointing into the active side) and *spatial location*

    phi = -b w / ||w||^2 = -(b / ||w||) (w / ||w||)                       (Eq. 6)

the point of ``B`` closest to the origin.  Under GmP the unit is
``r relu(u(theta) . x + lambda)`` and ``phi = -lambda u(theta)`` (Eq. 10).

Conventions: every pure function takes the units on the leading axes and the
input features on the last axis -- ``w`` has shape ``(..., n)``, a bias ``(...)``
-- so a layer of ``m`` units is ``(m, n)`` and a stacked training history is
``(T, m, n)`` or ``(R, T, m, n)`` without any change.  Flax kernels are
``(n, m)``; ``cab_of_layer`` transposes them for you.

Everything is ``jax.jit``/``vmap``/``lax.scan`` safe and returns arrays:

>>> import jax.numpy as jnp
>>> w, b = jnp.array([3.0, 4.0]), jnp.array(-5.0)
>>> [round(float(v), 6) for v in sp_location(w, b)]      # -b w/||w||^2 = (0.6, 0.8)
[0.6, 0.8]
>>> round(float(jnp.degrees(angle_between(w, -1e-3 * w))), 3)  # Prop. 2.3 worst case
180.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from flax import nnx

from gmpjax import hyperspherical as hs

Array = jax.Array

__all__ = [
    "CAB",
    "safe_normalize",
    "angle_between",
    "sp_direction",
    "sp_location",
    "wn_weight",
    "wn_location",
    "bn_effective_bias",
    "bn_location",
    "gmp_direction",
    "gmp_location",
    "max_location_change",
    "max_angle_change",
    "cab_changes",
    "step_change",
    "cab_of_layer",
    "track_cab",
    "plot_cab",
]


class CAB(NamedTuple):
    """The CABs of a layer of ``m`` ReLU units in ``R^n``.

    Attributes:
      direction: unit normals pointing into the active side, shape ``(..., m, n)``.
      location: spatial locations ``phi`` (closest point of the boundary to the origin), ``(..., m, n)``.
    """

    direction: Array
    location: Array


def _sq_norm(w: Array) -> Array:
    return jnp.sum(jnp.square(w), axis=-1)


def _check_vec(w: Array, name: str) -> Array:
    w = jnp.asarray(w)
    if w.ndim < 1:
        raise ValueError(
            f"{name} must have shape (..., n) with the input features on the last axis "
            f"(got a scalar); use w[None] for a 1-D unit."
        )
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array (got dtype {w.dtype}); cast it with {name}.astype(jnp.float32)."
        )
    return w


def safe_normalize(w: Array) -> Array:
    """``w / ||w||`` along the last axis, shape ``(..., n)``; the zero vector maps to zero (finite gradient)."""
    w = _check_vec(w, "w")
    sq = _sq_norm(w)[..., None]
    pos = sq > 0
    return jnp.where(pos, w / jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def angle_between(a: Array, b: Array) -> Array:
    """Angle in radians (in ``[0, pi]``) between the directions of ``a`` and ``b``: Eq. (7).

    ``<a, b> = arccos(a . b / (||a|| ||b||))``, evaluated as
    ``2 atan2(||a^ - b^||, ||a^ + b^||)`` with ``a^ = a/||a||``, which equals the
    arccos exactly but keeps full precision near 0 and pi (where arccos of a
    rounded cosine loses half the digits) and never produces NaN.  A zero vector
    has no direction; its angle to anything is reported as ``pi / 2``.

    Args:
      a, b: shapes broadcastable to ``(..., n)``.

    Returns:
      shape ``(...)``.
    """
    a = safe_normalize(_check_vec(a, "a"))
    b = safe_normalize(_check_vec(b, "b"))
    d = jnp.sqrt(_sq_norm(a - b))
    s = jnp.sqrt(_sq_norm(a + b))
    return 2.0 * jnp.arctan2(d, s)


# --------------------------------------------------------------------------- per parameterization
def sp_direction(w: Array) -> Array:
    """Unit normal of the CAB of ``relu(w . x + b)``: ``w / ||w||``, shape ``(..., n)``."""
    return safe_normalize(w)


def sp_location(w: Array, b: Array) -> Array:
    """Spatial location of a standard unit, Eq. (6): ``phi = -b w / ||w||^2``.

    Args:
      w: weights, shape ``(..., n)``.
      b: bias, shape ``(...)``.

    Returns:
      ``phi``, shape ``(..., n)``.  A unit with ``w = 0`` has no boundary; its
      ``phi`` is reported as 0.
    """
    w = _check_vec(w, "w")
    b = jnp.asarray(b, w.dtype)
    sq = _sq_norm(w)
    pos = sq > 0
    scale = jnp.where(pos, -b / jnp.where(pos, sq, 1.0), 0.0)
    return scale[..., None] * w


def wn_weight(v: Array, g: Array) -> Array:
    """Effective weight of weight normalization (Eq. 3): ``w = g v / ||v||``, shape ``(..., n)``."""
    v = _check_vec(v, "v")
    return jnp.asarray(g, v.dtype)[..., None] * safe_normalize(v)


def wn_location(v: Array, g: Array, b: Array) -> Array:
    """Spatial location of a WN unit ``relu(g v/||v|| . x + b)``: ``-b w / ||w||^2`` with ``w = g v/||v||``.

    In 1-D this is ``-b / (sign(v) g)``.  Shapes: ``v (..., n)``, ``g, b (...)`` -> ``(..., n)``.
    """
    return sp_location(wn_weight(v, g), b)


def bn_effective_bias(b: Array, gamma: Array, beta: Array, mean: Array, var: Array, epsilon: float = 1e-3) -> Array:
    """Bias of the standard unit equivalent to ``relu(BN(w . x + b))`` at fixed statistics.

    ``BN(z) = gamma (z - mean) / sqrt(var + epsilon) + beta`` vanishes where
    ``w . x + b_eff = 0`` with ``b_eff = b + sqrt(var + epsilon) beta / gamma - mean``
    (the formula of the released code, used with the *moving* statistics).
    All arguments have shape ``(...)`` (one value per unit).
    """
    b = jnp.asarray(b)
    sigma = jnp.sqrt(jnp.asarray(var, b.dtype) + epsilon)
    gamma = jnp.asarray(gamma, b.dtype)
    safe_gamma = jnp.where(gamma == 0, jnp.finfo(b.dtype).tiny, gamma)
    return b + sigma * jnp.asarray(beta, b.dtype) / safe_gamma - jnp.asarray(mean, b.dtype)


def bn_location(w: Array, b: Array, gamma: Array, beta: Array, mean: Array, var: Array, epsilon: float = 1e-3) -> Array:
    """Spatial location of ``relu(BN(w . x + b))``: ``sp_location(w, bn_effective_bias(...))``, ``(..., n)``."""
    return sp_location(w, bn_effective_bias(b, gamma, beta, mean, var, epsilon))


def gmp_direction(theta: Array) -> Array:
    """Unit normal ``u(theta)`` of a GmP unit, Eq. (11): ``theta (..., n-1)`` -> ``(..., n)``."""
    return hs.angles_to_unit(theta)


def gmp_location(u: Array, offset: Array) -> Array:
    """Spatial location of a GmP unit, Eq. (10): ``phi = -lambda u(theta)``.

    Args:
      u: unit directions, shape ``(..., n)`` (``gmp_direction(theta)``, or the
        fixed sign ``(..., 1)`` of a fan-in-1 unit).
      offset: lambda, shape ``(...)``.
    """
    u = _check_vec(u, "u")
    return -jnp.asarray(offset, u.dtype)[..., None] * u


# --------------------------------------------------------------------------- changes over training
def _check_history(x: Array, name: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(
            f"{name} must be a history of shape (..., T+1, m, n) (steps, units, features); got shape {x.shape}."
        )
    return x


def max_location_change(locations: Array) -> Array:
    """``max_i ||phi_{i,t+1} - phi_{i,t}||`` per step (Fig. 2c; ``|.|`` in 1-D).

    Args:
      locations: history, shape ``(..., T+1, m, n)``.

    Returns:
      shape ``(..., T)``.
    """
    locations = _check_history(locations, "locations")
    d = jnp.diff(locations, axis=-3)
    return jnp.max(jnp.sqrt(_sq_norm(d)), axis=-1)


def max_angle_change(directions: Array) -> Array:
    """``max_i <u_{i,t}, u_{i,t+1}>`` per step in radians (Fig. 3i; equals ``|Delta theta|`` for GmP in 2-D).

    Args:
      directions: history, shape ``(..., T+1, m, n)``.

    Returns:
      shape ``(..., T)``.
    """
    directions = _check_history(directions, "directions")
    ang = angle_between(directions[..., 1:, :, :], directions[..., :-1, :, :])
    return jnp.max(ang, axis=-1)


def cab_changes(history: CAB) -> dict[str, Array]:
    """Per-step ``max_dphi`` and ``max_dtheta`` (radians) of a CAB history ``(..., T+1, m, n)`` -> ``(..., T)``."""
    return {"max_dphi": max_location_change(history.location), "max_dtheta": max_angle_change(history.direction)}


def step_change(prev: CAB, new: CAB) -> dict[str, Array]:
    """How far the boundaries moved in one step: ``cab_changes`` of the two-step history ``(prev, new)``.

    ``max_dphi = max_i ||phi_i(new) - phi_i(prev)||`` and ``max_dtheta = max_i <u_i(prev), u_i(new)>``
    (radians), the maxima over the ``m`` units. Made for the fit loop's per-step ``track`` hook.

    Args:
      prev, new: CABs of the same layer, shape ``(..., m, n)`` each.

    Returns:
      ``{"max_dphi": (...), "max_dtheta": (...)}``.

    >>> prev = CAB(jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([[0.0, 0.0], [1.0, 1.0]]))
    >>> new = CAB(jnp.array([[0.0, 1.0], [0.0, 1.0]]), jnp.array([[3.0, 4.0], [1.0, 1.0]]))
    >>> {k: round(float(v), 4) for k, v in step_change(prev, new).items()}
    {'max_dphi': 5.0, 'max_dtheta': 1.5708}
    """
    history = CAB(*(jnp.stack([a, b], axis=-3) for a, b in zip(prev, new, strict=True)))
    return {k: v[..., 0] for k, v in cab_changes(history).items()}


# --------------------------------------------------------------------------- layers
def cab_of_layer(layer: nnx.Module) -> CAB:
    """The CABs of a dense ReLU layer of any registered parameterization, shape ``(m, n)`` each.

    The layer's registry row (``gmpjax.layers.registry``) says how to read them: for the built-in ones
    ``GmPDense`` (also fan-in 1 with its fixed sign), ``SPDense``, ``WNDense``, ``BNDense`` (moving statistics,
    as the released code; the normal is ``sign(gamma) w/||w||``, a negative ``gamma`` flips the active side),
    ``WNMBNDense`` (moving mean) and GmP+IMN (``make_dense('gmp_imn', ...)``: the input mean ``mu`` shifts
    the offset to ``lambda - u . mu``).

    Works on a module rebuilt inside ``jit``/``scan`` (values may be tracers).
    """
    from gmpjax.layers.registry import row_of_layer  # the layers build on this module

    row = row_of_layer(layer, who="cab_of_layer")
    if row.cab is None:
        raise TypeError(f"cab_of_layer: parameterization {row.name!r} declares no CAB reader (its row's cab).")
    return row.cab(layer)


def _first_hidden(model: nnx.Module) -> nnx.Module:
    try:
        return cast(Any, model).hidden[0]
    except (AttributeError, IndexError, TypeError):
        raise TypeError("track_cab: the model has no `hidden[0]` layer; pass select=lambda m: <the layer>.") from None


def track_cab(
    graphdef: nnx.GraphDef, select: Callable[[nnx.Module], nnx.Module] = _first_hidden
) -> Callable[[Any], CAB]:
    """A pure ``TrainState -> CAB`` for one layer of the model (default ``model.hidden[0]``).

    Use it as the fit loop's per-step hook (``fit(..., track=lambda prev, new: track(new))``), or
    ``jax.vmap`` it over a stacked history of states.

    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from gmpjax.models import MLP
    >>> from gmpjax.train import init_train_state
    >>> graphdef, state = init_train_state(MLP(2, (3,), 1, rngs=nnx.Rngs(0)), optax.sgd(0.1))
    >>> track_cab(graphdef)(state).location.shape
    (3, 2)
    """

    def track(state: Any) -> CAB:
        model = nnx.merge(graphdef, state.params, state.rest)
        return cab_of_layer(select(model))

    return track


# --------------------------------------------------------------------------- figure
def plot_cab(ax: Any, cab: CAB, color: Any = "k", *, label: str | None = None, lw: float = 1.5) -> Any:
    """Draw one 2-D unit's CAB on matplotlib ``ax``: the boundary line ``{x : u.(x - phi) = 0}`` through the
    location ``phi`` (solid), the segment from the origin to ``phi`` (dotted) and ``phi`` itself (a dot).

    Args:
      ax: a matplotlib Axes (set its limits; the line spans +-1000 around ``phi``).
      cab: ``CAB`` of one unit, ``direction`` and ``location`` of shape ``(2,)``.
      color, label, lw: the line's colour, legend label and width.

    Returns:
      ``ax``.

    >>> import matplotlib.pyplot as plt
    >>> fig, ax = plt.subplots()
    >>> ax = plot_cab(ax, CAB(jnp.array([0.6, 0.8]), jnp.array([0.3, 0.4])), "tab:blue", label="unit 0")
    >>> [line.get_label() for line in ax.get_lines()], plt.close(fig)
    (['unit 0', '_child1'], None)
    """
    import numpy as np

    u, phi = np.asarray(cab.direction, float), np.asarray(cab.location, float)
    if u.shape != (2,) or phi.shape != (2,):
        raise ValueError(
            f"plot_cab draws one 2-D unit: direction and location of shape (2,), got {u.shape}, {phi.shape}."
        )
    pts = phi + np.array([[-1e3], [1e3]]) * np.array([-u[1], u[0]])  # two far points along the boundary
    ax.plot(pts[:, 0], pts[:, 1], color=color, lw=lw, label=label)
    ax.plot([0, phi[0]], [0, phi[1]], color=color, ls=":", lw=1.5)
    ax.scatter([phi[0]], [phi[1]], color=color, s=25, zorder=3)
    return ax
