"""Implementations of the angle -> unit-vector map u(theta).

All implementations compute the same function (Eq. (11) of the GmP paper) on
``theta`` of shape ``(..., n-1)`` and return ``(..., n)``:

    u_k = cos(theta_k) * P_{k-1},   P_k = prod_{j<=k} sin(theta_j),   P_0 = 1,   cos(theta_n) := 1,

and differ only in how the cumulative product of sines and its derivatives are
evaluated. None divides by ``sin(theta_k)``, so values and gradients are finite
(and exact) at ``theta_k in {0, pi}``.

Derivatives (used by the hand-written rules; ``g = dL/du``):

* forward mode (tangent ``t = dtheta``): ``dP_k = s_k dP_{k-1} + u_k t_k``,
  ``du_k = c_k dP_{k-1} - P_k t_k``, ``du_n = dP_{n-1}``;
* reverse mode: ``R_{n-1} = g_n``, ``R_{k-1} = g_k c_k + s_k R_k`` (the reverse
  recurrence ``R_k = g_{k+1} c_{k+1} + s_{k+1} R_{k+1}``) and
  ``dL/dtheta_k = u_k R_k - P_k g_k = P_{k-1} (c_k R_k - s_k g_k)``;

with ``s_k = sin theta_k``, ``c_k = cos theta_k``. The ``scan*``/``fast*`` forms compute
them once in the forward pass and keep them (with u and P) as residuals, four arrays of
the size of theta; ``tiled`` (the CPU default) keeps none of them and recomputes sin, cos
and P tile by tile in its backward pass, so a layer step holds only theta, u, dL/du and
dL/dtheta (about half the peak memory; docs/benchmarks.md).

``IMPLS`` maps a name to the function. ``impl="auto"`` is ``native``: the primitive of
``gmpjax/_unit_kernel.py``, whose lowering picks a kernel per platform (the FFI kernel on CPU).
The XLA forms here are its fallbacks and the references the tests compare it with. Measured
timings and the reasons for the defaults are in ``docs/benchmarks.md``.

The scan-based implementations work in *kernel layout*: the angle axis is moved
to the front, ``(n-1, M)`` with ``M`` the product of the leading dimensions, so
each sequential step is one contiguous vector operation of length ``M``; the
result ``u^T`` of shape ``(n, M)`` is what a dense layer multiplies by, so the
transposes cancel inside ``x @ u.T`` under ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

__all__ = [
    "IMPLS",
    "FORWARD_MODE",
    "AUTO",
    "unit_native",
    "unit_pallas",
    "default_for_backend",
    "sincos",
    "unit_cumprod",
    "unit_assoc",
    "unit_scan",
    "unit_scan_vjp",
    "unit_scan_jvp",
    "unit_fast",
    "unit_fast_vjp",
    "unit_tiled",
    "unit_tiled_renormalized",
    "RENORMALIZED",
    "TILE",
]


# ---------------------------------------------------------------------------
# sin and cos together
# ---------------------------------------------------------------------------

# pi/2 split in three parts (Cody & Waite): the first two have few significant
# bits so that j * _PIO2_1 and j * _PIO2_2 are exact for the quadrant counts j
# that occur, and _PIO2_1 + _PIO2_2 + _PIO2_3 = pi/2 to float64 precision.
_PIO2_1 = np.float32(1.5703125)
_PIO2_2 = np.float32(4.837512969970703125e-4)
_PIO2_3 = np.float32(7.54978995489188216e-8)
_TWO_OVER_PI = np.float32(2.0 / np.pi)
# Minimax polynomials on [-pi/4, pi/4] (the classic Cephes single-precision set).
_SIN_C = (np.float32(-1.9515295891e-4), np.float32(8.3321608736e-3), np.float32(-1.6666654611e-1))
_COS_C = (np.float32(2.443315711809948e-5), np.float32(-1.388731625493765e-3), np.float32(4.166664568298827e-2))
#: |theta| up to which the float32 path of ``sincos`` is within 2e-7 of the true values
#: (checked in tests/test_unit_impls.py); beyond it the error grows like |theta| * 2**-40.
SINCOS_F32_RANGE = 1.0e4


def _sincos_f32(x: Array) -> tuple[Array, Array]:
    """float32 ``(sin x, cos x)`` sharing one range reduction, with no selects.

    ``x = j pi/2 + r`` with ``j = round(2x/pi)`` and ``|r| <= pi/4``; then
    ``sin x = (s, c, -s, -c)[j mod 4]`` and ``cos x = (c, -s, -c, s)[j mod 4]`` with
    ``s, c`` the polynomial ``sin r, cos r``. The quadrant is selected by exact
    multiplications with 0/1 and +-1 (XLA:CPU vectorises these; it does not
    vectorise ``jnp.sin``/``jnp.cos``, which cost about 4x more). Accuracy: about
    1e-7 absolute for ``|x| <= SINCOS_F32_RANGE``; exact zeros at ``x = 0``.
    """
    j = jnp.round(x * _TWO_OVER_PI)
    r = ((x - j * _PIO2_1) - j * _PIO2_2) - j * _PIO2_3
    z = r * r
    s = r + r * z * (_SIN_C[2] + z * (_SIN_C[1] + z * _SIN_C[0]))
    c = (1.0 - 0.5 * z) + z * z * (_COS_C[2] + z * (_COS_C[1] + z * _COS_C[0]))
    q = j - 4.0 * jnp.floor(j * 0.25)  # j mod 4 in {0, 1, 2, 3}
    half = jnp.floor(q * 0.5)  # 0 for q in {0,1}, 1 for q in {2,3}
    odd = q - 2.0 * half  # 1 for odd quadrants
    q1 = q + 1.0
    sign_c = 1.0 - 2.0 * jnp.floor((q1 - 4.0 * jnp.floor(q1 * 0.25)) * 0.5)
    even = 1.0 - odd
    sin_x = (s * even + c * odd) * (1.0 - 2.0 * half)
    cos_x = (c * even + s * odd) * sign_c
    return sin_x, cos_x


def sincos(theta: Array) -> tuple[Array, Array]:
    """``(sin theta, cos theta)``, elementwise, same shape and dtype as ``theta``.

    float32 uses one shared Cody-Waite range reduction and two short polynomials
    (about 1e-7 absolute error for ``|theta| <= SINCOS_F32_RANGE``, vectorised by
    XLA); every other dtype uses ``jnp.sin`` / ``jnp.cos``. Differentiable (the
    polynomials are differentiated as written, which is only needed for
    second-order derivatives of the implementations below).

    >>> import jax.numpy as jnp
    >>> s, c = sincos(jnp.array([0.0, jnp.pi / 2]))
    >>> [round(float(v), 6) for v in s], [round(float(v), 6) for v in c]
    ([0.0, 1.0], [1.0, -0.0])
    """
    if theta.dtype == jnp.float32:
        return _sincos_f32(theta)
    return jnp.sin(theta), jnp.cos(theta)


def _pad_sin_cos(theta: Array) -> tuple[Array, Array]:
    """(1, sin theta_1, ..., sin theta_{n-1}) and (cos theta_1, ..., cos theta_{n-1}, 1)."""
    one = jnp.ones(theta.shape[:-1] + (1,), theta.dtype)
    return (
        jnp.concatenate([one, jnp.sin(theta)], axis=-1),
        jnp.concatenate([jnp.cos(theta), one], axis=-1),
    )


# ---------------------------------------------------------------------------
# Parallel-prefix forms (plain autodiff)
# ---------------------------------------------------------------------------


def unit_cumprod(theta: Array) -> Array:
    """Reference: ``cumprod(1, sin theta) * (cos theta, 1)`` with plain autodiff.

    JAX differentiates ``jnp.cumprod`` through an associative scan without
    division, so exact zeros of ``sin`` are harmless. Supports forward and
    reverse mode to any order.
    """
    s, c = _pad_sin_cos(theta)
    return jnp.cumprod(s, axis=-1) * c


def unit_assoc(theta: Array) -> Array:
    """``lax.associative_scan(multiply)`` prefix product, plain autodiff (parallel form)."""
    s, c = _pad_sin_cos(theta)
    return lax.associative_scan(jnp.multiply, s, axis=s.ndim - 1) * c


# ---------------------------------------------------------------------------
# Sequential forms in kernel layout
# ---------------------------------------------------------------------------


def _to_rows(theta: Array) -> Array:
    """``(..., n-1) -> (n, M)``: angle axis first, leading dims flattened, and a zero row appended.

    The extra angle ``theta_n = 0`` has ``cos = 1``, which is exactly the convention
    ``u_n = P_{n-1} * 1``, so every recurrence below runs over ``n`` uniform steps
    (no concatenation afterwards); the garbage derivative of the padded angle is
    dropped. The copy is materialised behind an optimisation barrier: XLA:CPU is
    several times slower when it fuses the transpose into the elementwise
    trigonometry than when it transposes once and then streams contiguous rows.
    """
    rows = jnp.moveaxis(theta, -1, 0).reshape(theta.shape[-1], -1)
    rows = jnp.concatenate([rows, jnp.zeros((1, rows.shape[1]), rows.dtype)], axis=0)
    return lax.optimization_barrier(rows)


def _from_rows(u_rows: Array, lead: tuple[int, ...]) -> Array:
    """``(n, M) -> (..., n)``: inverse of ``_to_rows`` for the output (a no-op inside ``x @ u.T``)."""
    return jnp.moveaxis(u_rows.reshape((u_rows.shape[0],) + lead), 0, -1)


def _forward_rows(s: Array, c: Array) -> tuple[Array, Array]:
    """Forward recurrence in kernel layout.

    Args:
      s, c: ``sin theta``, ``cos theta`` of the padded angles, shape ``(n, M)``.

    Returns:
      ``u`` (``u_k = P_{k-1} c_k``) and the inclusive products ``P_k = P_{k-1} s_k``
      (``P_0 = 1``), both of shape ``(n, M)``.
    """

    def step(p_prev, sc):
        s_k, c_k = sc
        p_k = p_prev * s_k
        return p_k, (p_prev * c_k, p_k)

    _, (u, p_incl) = lax.scan(step, jnp.ones(s.shape[1:], s.dtype), (s, c))
    return u, p_incl


def _reverse_rows(g: Array, s: Array, c: Array, u: Array, p_incl: Array) -> Array:
    """Reverse (adjoint) recurrence in kernel layout, no division.

    Args:
      g: cotangent ``dL/du``, shape ``(n, M)``.
      s, c, u, p_incl: the forward pass's ``sin``, ``cos``, output and inclusive
        products, shape ``(n, M)`` (padded, see ``_to_rows``).

    Returns:
      ``dL/dtheta_k = u_k R_k - P_k g_k`` with ``R_n = 0`` and
      ``R_{k-1} = g_k c_k + s_k R_k``, shape ``(n, M)`` (the last row belongs to the
      padded angle and is discarded by the caller).
    """

    def step(r_k, xs):
        g_k, s_k, c_k, u_k, p_k = xs
        return g_k * c_k + s_k * r_k, u_k * r_k - p_k * g_k

    _, dtheta = lax.scan(step, jnp.zeros(g.shape[1:], g.dtype), (g, s, c, u, p_incl), reverse=True)
    return dtheta


def _tangent_rows(t: Array, s: Array, c: Array, u: Array, p_incl: Array) -> Array:
    """Forward-mode (JVP) recurrence in kernel layout; linear in the tangent ``t``.

    ``dP_k = s_k dP_{k-1} + u_k t_k``, ``du_k = c_k dP_{k-1} - P_k t_k`` (``dP_0 = 0``).
    JAX transposes this scan into exactly ``_reverse_rows`` for reverse mode.

    Args:
      t: tangent of the padded angles, shape ``(n, M)``; s, c, u, p_incl as in ``_reverse_rows``.

    Returns:
      the tangent of u, shape ``(n, M)``.
    """

    def step(dp_prev, xs):
        t_k, s_k, c_k, u_k, p_k = xs
        return s_k * dp_prev + u_k * t_k, c_k * dp_prev - p_k * t_k

    _, du = lax.scan(step, jnp.zeros(t.shape[1:], t.dtype), (t, s, c, u, p_incl))
    return du


def _libm_sincos(theta: Array) -> tuple[Array, Array]:
    return jnp.sin(theta), jnp.cos(theta)


def _rows_scan(rows: Array) -> Array:
    return _forward_rows(*_libm_sincos(rows))[0]


def _make_rows_vjp(sc: Callable[[Array], tuple[Array, Array]]) -> Callable[[Array], Array]:
    @jax.custom_vjp
    def rows_fn(rows: Array) -> Array:
        return _forward_rows(*sc(rows))[0]

    def fwd(rows):
        s, c = sc(rows)
        u, p_incl = _forward_rows(s, c)
        return u, (s, c, u, p_incl)

    def bwd(res, g):
        return (_reverse_rows(g, *res),)

    rows_fn.defvjp(fwd, bwd)
    return rows_fn


def _make_rows_jvp(sc: Callable[[Array], tuple[Array, Array]]) -> Callable[[Array], Array]:
    @jax.custom_jvp
    def rows_fn(rows: Array) -> Array:
        return _forward_rows(*sc(rows))[0]

    @rows_fn.defjvp
    def _jvp(primals, tangents):
        (rows,), (t,) = primals, tangents
        s, c = sc(rows)
        u, p_incl = _forward_rows(s, c)
        return u, _tangent_rows(t, s, c, u, p_incl)

    return rows_fn


def _in_kernel_layout(rows_fn: Callable[[Array], Array], doc: str) -> Callable[[Array], Array]:
    def unit(theta: Array) -> Array:
        return _from_rows(rows_fn(_to_rows(theta)), theta.shape[:-1])

    unit.__doc__ = doc
    return unit


unit_scan = _in_kernel_layout(
    _rows_scan, """Sequential ``lax.scan`` over the angle axis in kernel layout, plain autodiff."""
)

unit_scan_vjp = _in_kernel_layout(
    _make_rows_vjp(_libm_sincos),
    """Kernel-layout scan with a ``jax.custom_vjp``.

The backward pass is the division-free reverse recurrence over the residuals
(sin, cos, u, P) of the forward pass (``jnp.sin``/``jnp.cos``). Reverse mode only:
``jax.jvp``/``jax.jacfwd`` raise TypeError (see ``FORWARD_MODE``).""",
)

unit_scan_jvp = _in_kernel_layout(
    _make_rows_jvp(_libm_sincos),
    """Kernel-layout scan with a ``jax.custom_jvp``.

The tangent rule is the linear forward recurrence over the residuals (sin, cos,
u, P); reverse mode is JAX's transpose of it, i.e. the reverse recurrence
(``jnp.sin``/``jnp.cos``). Forward and reverse mode, any order.""",
)

unit_fast = _in_kernel_layout(
    _make_rows_jvp(sincos),
    """``unit_scan_jvp`` with the fused float32 ``sincos``.

One range reduction and two vectorised polynomials instead of ``jnp.sin`` and
``jnp.cos``; sin/cos are computed once and kept (with u and P) for the backward pass.
As fast as ``tiled`` on CPU but with four weight-sized residuals; the implementation to
pick where forward mode is needed. Forward and reverse mode, any order.""",
)

unit_fast_vjp = _in_kernel_layout(
    _make_rows_vjp(sincos), """``unit_scan_vjp`` with the fused float32 ``sincos`` (reverse mode only)."""
)


# ---------------------------------------------------------------------------
# Tiled form: no per-angle residuals
# ---------------------------------------------------------------------------

#: Width (angles per tile) of the ``tiled`` implementation; measured on CPU (docs/benchmarks.md).
TILE = 32


def _tile_forward(theta_tile: Array, p: Array) -> tuple[Array, Array]:
    """One tile of the forward recurrence.

    Args:
      theta_tile: angles ``theta_{a..a+b-1}``, shape ``(M, b)`` (native layout).
      p: ``P_{a-1}``, the product of the sines before the tile, shape ``(M,)``.

    Returns:
      ``P_{a+b-1}`` (shape ``(M,)``) and ``u_{a..a+b-1} = P_{k-1} c_k`` (shape ``(M, b)``).
    """
    s, c = sincos(theta_tile.T)  # (b, M): each recurrence step is one contiguous row

    def step(p_prev, sc):
        s_k, c_k = sc
        return p_prev * s_k, p_prev * c_k

    p, u_rows = lax.scan(step, p, (s, c))
    return p, u_rows.T


def _tile_backward(theta_tile: Array, g_tile: Array, p0: Array, r: Array, scale: Array | None) -> tuple[Array, Array]:
    """One tile of the reverse recurrence, recomputing sin, cos and the prefix products.

    Args:
      theta_tile: angles of the tile, shape ``(M, b)``.
      g_tile: ``dL/du`` of the same coordinates, shape ``(M, b)``.
      p0: ``P_{a-1}`` (saved by the forward pass, one row per tile), shape ``(M,)``.
      r: ``R`` of the last angle of the tile (from the tiles after it), shape ``(M,)``.
      scale: optional ``(M,)`` factor of ``g`` (the renormalisation), applied tile by tile so
        that no scaled copy of the whole ``g`` is made.

    Returns:
      ``dL/dtheta`` of the tile, ``P_{k-1} (c_k R_k - s_k g_k)``, shape ``(M, b)``, and
      ``R`` before the tile, ``R_{a-1}``, shape ``(M,)``.
    """
    s, c = sincos(theta_tile.T)
    g = g_tile.T if scale is None else g_tile.T * scale
    _, p_excl = lax.scan(lambda p, s_k: (p * s_k, p), p0, s)

    def step(r_k, xs):
        g_k, s_k, c_k, p_k = xs
        return g_k * c_k + s_k * r_k, p_k * (c_k * r_k - s_k * g_k)

    r, dtheta = lax.scan(step, r, (g, s, c, p_excl), reverse=True)
    return dtheta.T, r


def _tiled_forward_2d(theta: Array, tile: int) -> tuple[Array, Array, Array]:
    """u of ``theta`` (M, K) tile by tile; also the tile-start products (one (M,) row per tile)."""
    m, k = theta.shape
    n_full, rem = divmod(k, tile)
    u = jnp.zeros((m, k + 1), theta.dtype)
    p = jnp.ones((m,), theta.dtype)
    starts = jnp.zeros((0, m), theta.dtype)
    if n_full:

        def body(carry, j):
            p, u = carry
            p_next, u_tile = _tile_forward(lax.dynamic_slice_in_dim(theta, j * tile, tile, axis=1), p)
            return (p_next, lax.dynamic_update_slice_in_dim(u, u_tile, j * tile, axis=1)), p

        (p, u), starts = lax.scan(body, (p, u), jnp.arange(n_full))
    p_rem = p
    if rem:
        p, u_tile = _tile_forward(theta[:, n_full * tile :], p)
        u = lax.dynamic_update_slice_in_dim(u, u_tile, n_full * tile, axis=1)
    return u.at[:, k].set(p), starts, p_rem


def _tiled_backward_2d(theta: Array, starts: Array, p_rem: Array, g: Array, scale: Array | None, tile: int) -> Array:
    """``dL/dtheta`` (M, K) from ``g = dL/du`` (M, K+1) (times ``scale`` per row), tiles in reverse order."""
    _, k = theta.shape
    n_full, rem = divmod(k, tile)
    r = g[:, k] if scale is None else g[:, k] * scale  # R_{n-1} = g_n
    dtheta = jnp.zeros_like(theta)
    if rem:
        d, r = _tile_backward(theta[:, n_full * tile :], g[:, n_full * tile : k], p_rem, r, scale)
        dtheta = lax.dynamic_update_slice_in_dim(dtheta, d, n_full * tile, axis=1)
    if n_full:

        def body(carry, xs):
            r, dtheta = carry
            j, p0 = xs
            d, r = _tile_backward(
                lax.dynamic_slice_in_dim(theta, j * tile, tile, axis=1),
                lax.dynamic_slice_in_dim(g, j * tile, tile, axis=1),
                p0,
                r,
                scale,
            )
            return (r, lax.dynamic_update_slice_in_dim(dtheta, d, j * tile, axis=1)), None

        (r, dtheta), _ = lax.scan(body, (r, dtheta), (jnp.arange(n_full), starts), reverse=True)
    return dtheta


def _make_tiled(renormalize: bool, tile: int | None = None) -> Callable[[Array], Array]:
    @jax.custom_vjp
    def unit2d(theta: Array) -> Array:
        return fwd(theta)[0]

    def fwd(theta):
        u, starts, p_rem = _tiled_forward_2d(theta, tile or TILE)
        scale = None
        if renormalize:
            # ||u|| = 1 identically: the scale only removes rounding drift and is a constant for
            # every derivative (as in hyperspherical.angles_to_unit).
            scale = lax.stop_gradient(lax.rsqrt(jnp.sum(u * u, axis=-1)))
            u = u * scale[:, None]
        return u, (theta, starts, p_rem, scale)

    def bwd(res, g):
        theta, starts, p_rem, scale = res
        return (_tiled_backward_2d(theta, starts, p_rem, g, scale, tile or TILE),)

    unit2d.defvjp(fwd, bwd)

    def unit(theta: Array) -> Array:
        lead = theta.shape[:-1]
        return unit2d(theta.reshape(-1, theta.shape[-1])).reshape(lead + (theta.shape[-1] + 1,))

    return unit


unit_tiled = _make_tiled(renormalize=False)
unit_tiled.__doc__ = """Tiled recurrence with a ``jax.custom_vjp`` that keeps no per-angle residuals.

theta ``(M, n-1)`` is processed in tiles of ``TILE`` angles: each tile is transposed
(so a recurrence step is one contiguous row), sin/cos come from the fused ``sincos``,
and u is written back in the stored layout. The only residuals are theta itself
(an input) and one row ``P_{a-1}`` per tile (``M * (n-1) / TILE`` numbers). The
backward pass walks the tiles in reverse and, per tile, recomputes sin/cos and the
prefix products from the saved row, then runs the division-free reverse recurrence.
A GmPDense step then holds theta, u, dL/du and dL/dtheta (the un-fused floor).
Reverse mode only: ``jax.jvp``/``jax.jacfwd`` raise TypeError (see ``FORWARD_MODE``)."""

#: ``unit_tiled`` followed by the renormalisation of ``hyperspherical.angles_to_unit``, fused
#: into the custom rule (the scale is a constant for derivatives, as there).
unit_tiled_renormalized = _make_tiled(renormalize=True)

#: Implementations with the renormalisation fused in; ``angles_to_unit`` uses these when asked to renormalise.
RENORMALIZED: dict[str, Callable[[Array], Array]] = {"tiled": unit_tiled_renormalized}


IMPLS: dict[str, Callable[[Array], Array]] = {
    "cumprod": unit_cumprod,
    "assoc": unit_assoc,
    "scan": unit_scan,
    "scan_vjp": unit_scan_vjp,
    "scan_jvp": unit_scan_jvp,
    "fast": unit_fast,
    "fast_vjp": unit_fast_vjp,
    "tiled": unit_tiled,
}

#: Implementations that support forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``).
FORWARD_MODE: tuple[str, ...] = ("cumprod", "assoc", "scan", "scan_jvp", "fast")

# The kernel primitive (``gmpjax/_unit_kernel.py``) builds on the XLA forms above, so it is imported
# last; it adds ``native`` (the primitive: the FFI kernel on CPU, ``DEVICE_KERNELS`` elsewhere) and
# ``pallas`` (the Pallas kernels; interpreted on CPU).
from gmpjax import _unit_kernel  # noqa: E402


def _kernel_impl(kernel: str, renormalize: bool, doc: str) -> Callable[[Array], Array]:
    def unit(theta: Array) -> Array:
        return _unit_kernel.unit(theta, renormalize=renormalize, kernel=kernel)

    unit.__doc__ = doc
    return unit


unit_native = _kernel_impl(
    "auto",
    False,
    """The ``u(theta)`` primitive: one kernel per platform, forward and reverse mode, only theta kept as residual.

On CPU the native FFI kernel (``gmpjax/_native``; the ``tiled`` XLA form where it cannot be built),
elsewhere ``_unit_kernel.DEVICE_KERNELS``. JVP, VJP, vmap, jit and higher orders all work.""",
)
unit_pallas = _kernel_impl(
    "pallas", False, """The ``u(theta)`` primitive lowered to the Pallas kernels (GPU/TPU; interpreted on CPU, slow)."""
)
IMPLS["native"] = unit_native
IMPLS["pallas"] = unit_pallas
FORWARD_MODE += ("native", "pallas")
RENORMALIZED["native"] = _kernel_impl("auto", True, "``unit_native`` with the renormalisation fused.")
RENORMALIZED["pallas"] = _kernel_impl("pallas", True, "``unit_pallas`` with the renormalisation fused.")

#: What ``impl="auto"`` is on every backend: the primitive, whose lowering picks the kernel per platform
#: when the computation is lowered (never from the host's default backend at trace time).
AUTO = "native"


def default_for_backend(backend: str) -> str:
    """Name of the implementation used by ``impl="auto"``: ``"native"`` on every backend.

    The per-platform choice happens inside it, at lowering: the FFI kernel on CPU and
    ``_unit_kernel.DEVICE_KERNELS[platform]`` on accelerators (``_unit_kernel.lowered_kernel`` tells which).

    >>> default_for_backend("cpu")
    'native'
    """
    del backend
    return AUTO
