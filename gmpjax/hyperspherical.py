"""Hyperspherical coordinates: the pure maps behind Geometric Parameterization.

Chen & Ge (NeurIPS 2024), Eq. (11)/(18): an angle vector
``theta = (theta_1, ..., theta_{n-1})`` maps to the unit vector ``u(theta)`` in R^n

    u_1 = cos theta_1
    u_i = cos theta_i * prod_{k<i} sin theta_k      (1 < i < n)
    u_n = prod_{k<n} sin theta_k

Every function here is pure, accepts any number of leading batch dimensions
(angles on the last axis), works in float32 and float64, and is safe under
``jax.jit``, ``jax.vmap`` and ``jax.grad`` -- including at ``sin theta_k = 0``,
where no function divides by a sine.

>>> import jax.numpy as jnp
>>> u = angles_to_unit(jnp.array([jnp.pi / 2, 0.0]))
>>> [round(float(v), 6) + 0.0 for v in u]
[0.0, 1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from gmpjax import _unit_impls

Array = jax.Array

__all__ = [
    "angles_to_unit",
    "unit_to_angles",
    "sample_uniform_angles",
    "sample_uniform_unit",
    "angular_metric",
    "angular_change",
    "from_standard",
    "to_standard",
    "available_impls",
    "default_impl",
]


def _check_float(x: Array, name: str) -> None:
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array (got dtype {jnp.result_type(x)}); "
            f"cast it with {name}.astype(jnp.float32)."
        )


def _check_angles(theta: Array) -> None:
    if jnp.ndim(theta) < 1 or jnp.shape(theta)[-1] < 1:
        raise ValueError(
            f"theta must have shape (..., n-1) with n-1 >= 1 angles on the last axis "
            f"(got shape {jnp.shape(theta)}); a unit vector in R^n needs n >= 2. "
            "For fan-in 1 use a fixed sign instead of angles."
        )
    _check_float(theta, "theta")


def available_impls() -> tuple[str, ...]:
    """Names of the implementations of ``angles_to_unit`` (see ``gmpjax._unit_impls``)."""
    return tuple(_unit_impls.IMPLS)


def default_impl(backend: str | None = None) -> str:
    """The implementation ``impl="auto"`` uses: ``"native"`` on every backend.

    ``native`` is one primitive whose kernel is chosen per platform when the computation is lowered
    (the FFI kernel on CPU; see ``gmpjax._unit_kernel``), so the choice does not depend on the host
    that traced it: a function exported for ``cuda`` from a CPU host carries the GPU kernel.
    """
    return _unit_impls.default_for_backend(backend or "any")


def angles_to_unit(theta: Array, *, impl: str = "auto", renormalize: bool = True) -> Array:
    """Unit vector of hyperspherical angles, Eq. (11) of the GmP paper.

    Args:
      theta: angles, shape ``(..., n-1)`` with ``n - 1 >= 1``, floating point.
      impl: which implementation to use; ``"auto"`` (``"native"``) is one primitive with
        forward and reverse mode whose kernel is picked per platform at lowering: the native
        FFI kernel on CPU (``gmpjax/_native``). ``available_impls()`` lists the others (XLA
        forms); all are exact and division-free, they differ only in speed and memory.
      renormalize: divide by the computed norm. In exact arithmetic ``||u|| = 1``,
        so this changes neither the function nor its derivatives; in float32 it
        removes the rounding drift of the long sine product (at n = 4096,
        ``max | ||u|| - 1 |`` goes from about 6e-6 to about 1e-7).

    Returns:
      ``u``, shape ``(..., n)``, ``||u||_2 = 1``:
      ``u_i = cos(theta_i) * prod_{k<i} sin(theta_k)`` with ``cos(theta_n) := 1``.

    >>> import jax.numpy as jnp
    >>> round(float(jnp.linalg.norm(angles_to_unit(jnp.array([0.3, 1.2, -2.0])))), 6)
    1.0
    """
    theta = jnp.asarray(theta)
    _check_angles(theta)
    name = default_impl() if impl == "auto" else impl
    try:
        fn: Callable[[Array], Array] = _unit_impls.IMPLS[name]
    except KeyError:
        raise ValueError(f"unknown impl {impl!r}; choose 'auto' or one of {available_impls()}") from None
    fused = renormalize and name in _unit_impls.RENORMALIZED
    if fused:
        # the implementation applies the same constant-for-derivatives scale inside its own rule
        fn = _unit_impls.RENORMALIZED[name]
    try:
        u = fn(theta)
    except TypeError as e:
        if "custom_vjp" not in str(e):
            raise
        raise TypeError(
            f"impl={name!r} defines only reverse-mode derivatives (a jax.custom_vjp), so forward-mode "
            f"autodiff (jax.jvp, jax.jacfwd, jax.hessian) cannot differentiate it; use a custom_jvp / "
            f"forward-mode impl instead: one of {_unit_impls.FORWARD_MODE}."
        ) from e
    if renormalize and not fused:
        # The barrier stops XLA from fusing an implementation's final transpose into the norm
        # reduction (a strided reduction that made the forward pass 6x slower on CPU at 4096^2).
        u = jax.lax.optimization_barrier(u)
        # ||u(theta)|| = 1 identically, so the scale's derivatives vanish in exact arithmetic:
        # stop_gradient keeps every derivative of u (to any order) and skips differentiating the
        # norm, which doubled the cost of a GmPDense step on CPU (docs/benchmarks.md).
        u = u * jax.lax.stop_gradient(jax.lax.rsqrt(jnp.sum(jnp.square(u), axis=-1, keepdims=True)))
    return u


def _safe_norm_from_sq(sq: Array) -> Array:
    """sqrt with a finite (zero) gradient at 0."""
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _safe_atan2(y: Array, x: Array) -> Array:
    """atan2 with value 0 and finite gradient at the origin."""
    zero = (y == 0) & (x == 0)
    return jnp.where(zero, 0.0, jnp.arctan2(jnp.where(zero, 0.0, y), jnp.where(zero, 1.0, x)))


def unit_to_angles(u: Array, *, allow_zero: bool = False) -> Array:
    """Hyperspherical angles of a (not necessarily unit) vector: the inverse of ``angles_to_unit``.

    ``theta_k = atan2(||u_{k+1:n}||, u_k)`` in ``[0, pi]`` for ``k < n-1`` and
    ``theta_{n-1} = atan2(u_n, u_{n-1})`` in ``(-pi, pi]``. Scale-invariant, so
    ``unit_to_angles(w)`` gives the direction of any nonzero ``w``. Trailing zero
    components give angles 0 or pi (never NaN), and gradients stay finite there.

    Args:
      u: shape ``(..., n)`` with ``n >= 2``, floating point.
      allow_zero: accept all-zero rows (they get the angles of ``e_1``, e.g. for units of radius 0).
        By default a zero row raises a ValueError when ``u`` is concrete (under ``jax.jit`` it cannot be
        checked and gets ``e_1``'s angles).

    Returns:
      theta, shape ``(..., n-1)``.

    >>> import jax.numpy as jnp
    >>> [round(float(t), 6) for t in unit_to_angles(jnp.array([0.0, 0.0, -1.0]))]
    [1.570796, -1.570796]
    """
    u = jnp.asarray(u)
    if jnp.ndim(u) < 1 or jnp.shape(u)[-1] < 2:
        raise ValueError(f"u must have shape (..., n) with n >= 2 on the last axis (got shape {jnp.shape(u)}).")
    _check_float(u, "u")
    values = None if allow_zero else _concrete(u)
    if values is not None and np.any(np.all(values == 0, axis=-1)):
        rows = np.argwhere(np.all(values == 0, axis=-1)).tolist()
        raise ValueError(
            f"unit_to_angles: u has all-zero rows at {rows[:5]}{' ...' if len(rows) > 5 else ''}; a zero vector has "
            "no direction (its angles would silently be those of e_1). Drop those rows or give them a direction."
        )
    sq = jnp.square(u)
    # tail[k] = sum_{j >= k} u_j^2 (reverse cumulative sum; sums of squares, no cancellation).
    tail = jnp.flip(jnp.cumsum(jnp.flip(sq, -1), axis=-1), -1)
    rest = _safe_norm_from_sq(tail[..., 1:-1])  # ||u_{k+1:}|| for k = 0 .. n-3 (0-based)
    first = _safe_atan2(rest, u[..., :-2])
    last = _safe_atan2(u[..., -1:], u[..., -2:-1])
    return jnp.concatenate([first, last], axis=-1)


def _check_key(key: Any, who: str) -> None:
    """A PRNG key: a typed key array (``jax.random.key``) or a raw uint32 key (``jax.random.PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    if dtype is not None and (jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or dtype == jnp.uint32):
        return
    raise TypeError(
        f"{who}: key must be a PRNG key such as jax.random.key(0) (got {type(key).__name__} {key!r:.40}); "
        "an initializer gets it as its first argument."
    )


def _shape(shape: Any, name: str) -> tuple[int, ...]:
    """``shape`` as a tuple; an int ``k`` means ``(k,)`` as in ``jax.random``."""
    if isinstance(shape, int | np.integer) and not isinstance(shape, bool):
        return (int(shape),)
    if isinstance(shape, str):
        raise TypeError(f"{name} must be an int or a tuple of ints (got {shape!r}).")
    try:
        return tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of ints (got {shape!r}).") from None


def sample_uniform_unit(key: Array, shape: tuple[int, ...] | int, dtype: DTypeLike = jnp.float32) -> Array:
    """Unit vectors uniform on S^{n-1}: normalised standard Gaussians.

    Args:
      key: PRNG key.
      shape: ``(..., n)``, ``n >= 2``; an int ``n`` means ``(n,)``.
    """
    shape = _shape(shape, "shape")
    _check_key(key, "sample_uniform_unit")
    if len(shape) < 1 or shape[-1] < 2:
        raise ValueError(f"shape must be (..., n) with n >= 2 (got {shape}).")
    g = jax.random.normal(key, shape, dtype)
    return g / jnp.linalg.norm(g, axis=-1, keepdims=True)


def sample_uniform_angles(key: Array, shape: tuple[int, ...] | int, dtype: DTypeLike = jnp.float32) -> Array:
    """Angles whose ``u(theta)`` is exactly uniform on the sphere S^{n-1}.

    Draws a standard Gaussian ``g`` of shape ``(..., n)`` and returns
    ``unit_to_angles(g)`` (Remark 3.5 of the paper: the direction of an isotropic
    Gaussian is uniform). Never draws angles i.i.d. uniform, which would collapse
    ``u`` onto its first coordinates.

    Args:
      key: PRNG key.
      shape: the angle shape ``(..., n-1)`` with ``n - 1 >= 1``; an int ``k`` means ``(k,)``
        (one direction in R^(k+1)), as in ``jax.random``.
      dtype: floating dtype of the result.

    It has the ``(key, shape, dtype)`` signature of an nnx initializer, so it can be passed as
    ``GmPDense(..., theta_init=sample_uniform_angles)`` (or wrapped in ``nnx.with_partitioning``).

    >>> import jax
    >>> sample_uniform_angles(jax.random.key(0), (5, 3)).shape
    (5, 3)
    >>> sample_uniform_angles(jax.random.key(0), 5).shape
    (5,)
    """
    shape = _shape(shape, "shape")
    _check_key(key, "sample_uniform_angles")
    if len(shape) < 1 or shape[-1] < 1:
        raise ValueError(f"shape must be (..., n-1) with n-1 >= 1 (got {shape}); a sphere S^(n-1) needs n >= 2.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be floating point (got {dtype}).")
    g = jax.random.normal(key, shape[:-1] + (shape[-1] + 1,), dtype)
    return unit_to_angles(g, allow_zero=True)  # a Gaussian row is never all zeros: skip the host-side check


def angular_metric(theta: Array) -> Array:
    """Diagonal of the hyperspherical metric tensor M_theta (Thm 3.7, App. B).

    ``M_theta = J^T J`` with ``J = d u / d theta`` is diagonal with entries
    ``(1, sin^2 theta_1, sin^2 theta_1 sin^2 theta_2, ..., prod_{k<n-1} sin^2 theta_k)``.

    Args:
      theta: shape ``(..., n-1)``.

    Returns:
      the diagonal, shape ``(..., n-1)``; the full tensor is ``jnp.vectorize(jnp.diag, signature="(k)->(k,k)")`` of it.

    >>> import jax.numpy as jnp
    >>> [round(float(m), 6) for m in angular_metric(jnp.array([jnp.pi / 2, 0.3, 1.0]))]
    [1.0, 1.0, 0.087332]
    """
    theta = jnp.asarray(theta)
    _check_angles(theta)
    s2 = jnp.square(jnp.sin(theta[..., :-1]))
    ones = jnp.ones(theta.shape[:-1] + (1,), theta.dtype)
    return jnp.cumprod(jnp.concatenate([ones, s2], axis=-1), axis=-1)


def angular_change(theta: Array, eps: Array) -> Array:
    """First-order angle between ``u(theta)`` and ``u(theta + eps)`` (Thm 3.7).

    ``delta = ||eps||_{M_theta} = sqrt(sum_k M_kk eps_k^2) <= ||eps||_2``.

    Args:
      theta: shape ``(..., n-1)``.
      eps: perturbation, broadcastable to ``theta``'s shape (a ValueError otherwise).

    Returns:
      the angle in radians, shape ``(...)``.

    >>> import jax.numpy as jnp
    >>> round(float(angular_change(jnp.array([jnp.pi / 2, 0.3]), jnp.array([0.0, 0.1]))), 6)
    0.1
    """
    theta = jnp.asarray(theta)
    _check_angles(theta)
    eps = jnp.asarray(eps, dtype=jnp.result_type(theta))
    try:
        ok = jnp.broadcast_shapes(theta.shape, eps.shape) == theta.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"eps must have theta's shape {theta.shape} or broadcast to it (got {eps.shape}): "
            "one perturbation per angle."
        )
    return _safe_norm_from_sq(jnp.sum(angular_metric(theta) * jnp.square(eps), axis=-1))


def _concrete(x: Array) -> np.ndarray | None:
    """``x`` as numpy when it holds values (outside jit); ``None`` for tracers."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def from_standard(kernel: Array, bias: Array | None = None) -> dict[str, Array]:
    """Convert a standard Dense layer ``x @ kernel + bias`` to GmP parameters.

    ``radius = ||w_j||``, ``u(theta_j) = w_j / ||w_j||``, ``offset = b_j / ||w_j||`` for every
    output unit ``j`` (column of ``kernel``), so that
    ``relu(x @ kernel + bias) == radius * relu(x @ u(theta).T + offset)``
    (exact for ``activation=None`` and for any positively homogeneous activation).

    A zero column ``w_j = 0`` becomes ``radius = 0``, ``offset = 0`` (a unit that outputs 0). That is
    exact only if ``b_j = 0``; for a nonzero ``b_j`` (a constant unit) a ValueError names the columns
    when the values are concrete (outside ``jax.jit``). ``GmPDense.from_linear(linear, activation="relu")``
    also converts ``b_j <= 0`` exactly, since ``relu(b_j) = 0``.

    Args:
      kernel: shape ``(..., n, m)`` (flax layout: inputs x outputs), ``n >= 2``; leading axes are
        batch axes (e.g. stacked layers).
      bias: shape ``(..., m)`` or ``None`` (zero).

    Returns:
      ``{"theta": (..., m, n-1), "radius": (..., m), "offset": (..., m)}``.

    >>> import jax.numpy as jnp
    >>> p = from_standard(jnp.array([[3.0], [4.0]]), jnp.array([10.0]))
    >>> [float(p["radius"][0]), float(p["offset"][0])]
    [5.0, 2.0]
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2 or kernel.shape[-2] < 2:
        raise ValueError(
            f"kernel must have shape (..., n_in, n_out) with n_in >= 2 (got {kernel.shape}); "
            "for n_in = 1 use GmPDense.from_linear, which gives the fixed-sign form."
        )
    _check_float(kernel, "kernel")
    w = jnp.swapaxes(kernel, -1, -2)
    radius = jnp.linalg.norm(w, axis=-1)
    if bias is None:
        bias = jnp.zeros_like(radius)
    bias = jnp.asarray(bias, kernel.dtype)
    if bias.shape != radius.shape:
        raise ValueError(f"bias must have shape {radius.shape} (got {bias.shape}).")
    r_np, b_np = _concrete(radius), _concrete(bias)
    if r_np is not None and b_np is not None:
        bad = np.argwhere((r_np == 0) & (b_np != 0))
        if bad.size:
            raise ValueError(
                f"kernel columns {[tuple(int(i) for i in ix) if len(ix) > 1 else int(ix[0]) for ix in bad]} are zero "
                "with a nonzero bias: a constant unit, which r * act(u . x + lambda) with ||u|| = 1 cannot "
                "represent (GmPDense.from_linear(..., activation='relu') handles bias <= 0 exactly)."
            )
    pos = radius > 0
    safe_r = jnp.where(pos, radius, 1.0)
    theta = unit_to_angles(w, allow_zero=True)  # zero columns have radius 0
    return {"theta": theta, "radius": radius, "offset": jnp.where(pos, bias / safe_r, 0.0)}


def to_standard(theta: Array, radius: Array, offset: Array) -> dict[str, Array]:
    """Convert GmP parameters to a standard Dense layer: ``kernel = (radius * u(theta)).T``, ``bias = radius * offset``.

    Args:
      theta: shape ``(..., m, n-1)`` (m units; leading axes are batch axes, e.g. stacked layers).
      radius: shape ``(..., m)``.
      offset: shape ``(..., m)`` (lambda).

    Returns:
      ``{"kernel": (..., n, m), "bias": (..., m)}``; the function is the same for
      ``activation=None``, and for ReLU when ``radius >= 0``.

    >>> import jax.numpy as jnp
    >>> to_standard(jnp.zeros((4, 2)), jnp.ones(4), jnp.zeros(4))["kernel"].shape
    (3, 4)
    """
    theta = jnp.asarray(theta)
    _check_angles(theta)
    if theta.ndim < 2:
        raise ValueError(
            f"theta must have shape (..., m, n-1): one row of angles per unit (got shape {theta.shape}); "
            "for a single unit pass theta[None], radius[None], offset[None]."
        )
    u = angles_to_unit(theta)
    radius = jnp.asarray(radius, theta.dtype)
    offset = jnp.asarray(offset, theta.dtype)
    if radius.shape != u.shape[:-1] or offset.shape != u.shape[:-1]:
        raise ValueError(f"radius and offset must have shape {u.shape[:-1]} (got {radius.shape}, {offset.shape}).")
    return {"kernel": jnp.swapaxes(radius[..., None] * u, -1, -2), "bias": radius * offset}
