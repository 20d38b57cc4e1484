"""u(theta) as one JAX primitive with forward and reverse mode, lowered to a kernel per platform.

Three primitives, all on ``theta`` of shape ``(..., K)`` (any leading dimensions):

* ``unit_p``:         ``theta -> u``                      (..., K) -> (..., K+1)
* ``unit_tangent_p``: ``(theta, t) -> du = S J(theta) t``  linear in ``t``
* ``unit_bwd_p``:     ``(theta, g) -> J(theta)^T S g``     linear in ``g``

with ``J = du/dtheta`` of the raw map (Eq. (11): ``u_k = cos(theta_k) prod_{j<k} sin(theta_j)``)
and ``S`` the renormalisation ``1 / ||u||`` per row when ``renormalize`` (1 otherwise), a
constant for every derivative as in ``hyperspherical.angles_to_unit``. The rules:

* JVP of ``unit_p`` is ``unit_tangent_p`` (linear in the tangent), so forward mode runs a kernel;
* ``unit_tangent_p`` transposes to ``unit_bwd_p`` and back, so reverse mode (JAX transposes the
  linearised JVP) runs the backward kernel, and the only residual kept for it is ``theta``;
* derivatives of the two linear primitives with respect to ``theta`` (second order: Hessians,
  ``jacfwd(jacrev)``) differentiate the parallel-prefix reference ``unit_cumprod`` in XLA;
* batching moves the batch axis to the front, which is just more rows for every kernel.

Lowering, chosen per platform by JAX when the computation is lowered (so a program exported for
``cuda`` from a CPU host carries the GPU lowering, and a multi-platform export carries both):

* ``cpu``: the native FFI kernels (``gmpjax/_native``) for float32 and float64; other dtypes, or
  no native build, use the memory-lean ``tiled`` XLA forms (same residuals: theta only);
* ``cuda``/``rocm``/``tpu``: the kernel named in ``DEVICE_KERNELS`` (``"xla"``, the parallel
  prefix form, until ``benchmarks/device_check.sh`` has measured ``"pallas"`` there);
* ``impl="pallas"`` forces the Pallas kernels (interpreted on CPU, which is for tests only).

Sharding: under a mesh, each computation is wrapped in ``custom_partitioning`` so that a
``theta`` sharded over its rows runs the kernel on each device's own rows (no all-gather); the
angle axis is always replicated. On an explicit-axis mesh the output sharding is the row sharding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from gmpjax import _native
from gmpjax import _unit_impls as _xla

Array = jax.Array

__all__ = ["unit", "unit_tangent", "unit_bwd", "unit_p", "unit_tangent_p", "unit_bwd_p", "DEVICE_KERNELS", "KERNELS"]

#: Kernel names a primitive can be asked for: ``auto`` (per platform), ``native`` (the CPU FFI kernel
#: where possible), ``pallas`` and ``xla``.
KERNELS = ("auto", "native", "pallas", "xla")
#: Kernel of ``impl="auto"`` on each accelerator platform. Unmeasured so far (no device has run
#: ``benchmarks/device_check.sh`` for this primitive): the XLA parallel-prefix form is the safe default.
DEVICE_KERNELS: dict[str, str] = {"cuda": "xla", "rocm": "xla", "tpu": "xla"}

unit_p = Primitive("gmp_unit")
unit_tangent_p = Primitive("gmp_unit_tangent")
unit_bwd_p = Primitive("gmp_unit_bwd")


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def unit(theta: Array, *, renormalize: bool = True, kernel: str = "auto") -> Array:
    """``u(theta)`` (renormalised when asked), shape ``(..., K) -> (..., K+1)``, through ``unit_p``."""
    return unit_p.bind(theta, renormalize=bool(renormalize), kernel=kernel)


def unit_tangent(theta: Array, t: Array, *, renormalize: bool = True, kernel: str = "auto") -> Array:
    """Forward-mode derivative ``S J(theta) t``, shape ``(..., K+1)``."""
    return unit_tangent_p.bind(theta, t, renormalize=bool(renormalize), kernel=kernel)


def unit_bwd(theta: Array, g: Array, *, renormalize: bool = True, kernel: str = "auto") -> Array:
    """Reverse-mode derivative ``J(theta)^T S g``, shape ``(..., K)``."""
    return unit_bwd_p.bind(theta, g, renormalize=bool(renormalize), kernel=kernel)


# ---------------------------------------------------------------------------------------------
# Pure-JAX forms (fallback lowerings and second-order rules)
# ---------------------------------------------------------------------------------------------


def _scale(u: Array) -> Array:
    """``1 / ||u||`` per row, shape ``(..., 1)``, a constant for derivatives."""
    return lax.stop_gradient(lax.rsqrt(jnp.sum(u * u, axis=-1, keepdims=True)))


def _ref_tangent(theta: Array, t: Array, renormalize: bool) -> Array:
    u, du = jax.jvp(_xla.unit_cumprod, (theta,), (t,))
    return du * _scale(u) if renormalize else du


def _ref_bwd(theta: Array, g: Array, renormalize: bool) -> Array:
    u, vjp = jax.vjp(_xla.unit_cumprod, theta)
    return vjp(g * _scale(u) if renormalize else g)[0]


def _rows(x: Array) -> Array:
    return x.reshape(-1, x.shape[-1])


def _tiled_fwd(theta: Array, renormalize: bool) -> Array:
    return (_xla.unit_tiled_renormalized if renormalize else _xla.unit_tiled)(theta)


def _tiled_bwd(theta: Array, g: Array, renormalize: bool) -> Array:
    rows = _rows(theta)
    u, starts, p_rem = _xla._tiled_forward_2d(rows, _xla.TILE)
    scale = _scale(u)[:, 0] if renormalize else None
    return _xla._tiled_backward_2d(rows, starts, p_rem, _rows(g), scale, _xla.TILE).reshape(theta.shape)


def _cumprod_fwd(theta: Array, renormalize: bool) -> Array:
    u = _xla.unit_cumprod(theta)
    return u * _scale(u) if renormalize else u


def _tangent_xla_cpu(theta: Array, t: Array, renormalize: bool) -> Array:
    u, du = jax.jvp(_xla.unit_fast, (theta,), (t,))  # kernel-layout scan: the fastest XLA:CPU forward mode
    return du * _scale(u) if renormalize else du


# ---------------------------------------------------------------------------------------------
# Abstract evaluation (shapes, dtypes and, on explicit meshes, shardings)
# ---------------------------------------------------------------------------------------------


def _check(theta: Any, kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} (got {kernel!r}).")
    if theta.ndim < 1 or theta.shape[-1] < 1:
        raise ValueError(f"theta must have shape (..., n-1) with n-1 >= 1 (got {theta.shape}).")
    if not jnp.issubdtype(theta.dtype, jnp.floating):
        raise TypeError(f"theta must be floating point (got {theta.dtype}).")


def _row_sharding(aval: Any, what: str) -> Any:
    """The sharding of an output with ``aval``'s rows and a replicated last axis (explicit meshes)."""
    sharding = getattr(aval, "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is None or len(spec) == 0:
        return sharding
    if spec[-1] is not None:
        raise ValueError(
            f"{what}: the angle axis (last) of theta is sharded over mesh axis {spec[-1]!r}, but each unit's "
            "angles must live on one device; shard theta over its rows only, e.g. P('model', None)."
        )
    return sharding


def _abstract(theta: Any, *others: Any, out_last: int, what: str) -> Any:
    for o in others:
        if o.dtype != theta.dtype:
            raise TypeError(f"{what}: operands must share theta's dtype {theta.dtype} (got {o.dtype}).")
    sharding = _row_sharding(theta, what)
    shape = theta.shape[:-1] + (out_last,)
    if sharding is None:
        return theta.update(shape=shape)
    return theta.update(shape=shape, sharding=sharding)


def _unit_abstract(theta: Any, *, renormalize: bool, kernel: str) -> Any:
    _check(theta, kernel)
    return _abstract(theta, out_last=theta.shape[-1] + 1, what="u(theta)")


def _tangent_abstract(theta: Any, t: Any, *, renormalize: bool, kernel: str) -> Any:
    _check(theta, kernel)
    if t.shape != theta.shape:
        raise ValueError(f"the tangent of theta must have theta's shape {theta.shape} (got {t.shape}).")
    return _abstract(theta, t, out_last=theta.shape[-1] + 1, what="the tangent of u(theta)")


def _bwd_abstract(theta: Any, g: Any, *, renormalize: bool, kernel: str) -> Any:
    _check(theta, kernel)
    want = theta.shape[:-1] + (theta.shape[-1] + 1,)
    if g.shape != want:
        raise ValueError(f"the cotangent of u(theta) must have shape {want} (got {g.shape}).")
    return _abstract(theta, g, out_last=theta.shape[-1], what="the gradient of u(theta)")


unit_p.def_abstract_eval(_unit_abstract)
unit_tangent_p.def_abstract_eval(_tangent_abstract)
unit_bwd_p.def_abstract_eval(_bwd_abstract)


@functools.cache
def _jitted(prim: Primitive, renormalize: bool, kernel: str) -> Callable[..., Array]:
    return jax.jit(functools.partial(prim.bind, renormalize=renormalize, kernel=kernel))


def _impl(prim: Primitive) -> Callable[..., Array]:
    def impl(*args: Array, renormalize: bool, kernel: str) -> Array:  # eager evaluation: compile and run
        return _jitted(prim, renormalize, kernel)(*args)

    return impl


for _p in (unit_p, unit_tangent_p, unit_bwd_p):
    _p.def_impl(_impl(_p))


# ---------------------------------------------------------------------------------------------
# Autodiff
# ---------------------------------------------------------------------------------------------


def _unit_jvp(primals: tuple[Array], tangents: tuple[Any], *, renormalize: bool, kernel: str) -> tuple[Array, Any]:
    (theta,), (t,) = primals, tangents
    u = unit_p.bind(theta, renormalize=renormalize, kernel=kernel)
    if type(t) is ad.Zero:
        return u, ad.Zero.from_primal_value(u)  # type: ignore[attr-defined]
    return u, unit_tangent_p.bind(theta, t, renormalize=renormalize, kernel=kernel)


def _linear_in_second(prim: Primitive, ref: Callable[[Array, Array, bool], Array]) -> None:
    """JVP rules of a primitive ``f(theta, v)`` that is linear in ``v``: itself in ``v``, ``ref`` in ``theta``."""

    def d_theta(dtheta: Array, theta: Array, v: Array, *, renormalize: bool, kernel: str) -> Array:
        return jax.jvp(lambda th: ref(th, v, renormalize), (theta,), (dtheta,))[1]

    def d_v(dv: Array, theta: Array, v: Array, *, renormalize: bool, kernel: str) -> Array:
        return prim.bind(theta, dv, renormalize=renormalize, kernel=kernel)

    ad.defjvp(prim, d_theta, d_v)


def _transpose_to(other: Primitive) -> Callable[..., tuple[None, Any]]:
    """Transpose rule of a primitive linear in its second operand: the ``other`` primitive of the pair."""

    def rule(ct: Any, theta: Any, v: Any, *, renormalize: bool, kernel: str) -> tuple[None, Any]:
        if ad.is_undefined_primal(theta):
            raise NotImplementedError("u(theta)'s derivative is linear in the tangent only, not in theta.")
        if type(ct) is ad.Zero:
            return None, ad.Zero(v.aval)
        return None, other.bind(theta, ad.instantiate_zeros(ct), renormalize=renormalize, kernel=kernel)

    return rule


ad.primitive_jvps[unit_p] = _unit_jvp
_linear_in_second(unit_tangent_p, _ref_tangent)
_linear_in_second(unit_bwd_p, _ref_bwd)
ad.primitive_transposes[unit_tangent_p] = _transpose_to(unit_bwd_p)
ad.primitive_transposes[unit_bwd_p] = _transpose_to(unit_tangent_p)


# ---------------------------------------------------------------------------------------------
# Batching: the batch axis becomes one more leading (row) axis
# ---------------------------------------------------------------------------------------------


def _batcher(prim: Primitive) -> Callable[..., tuple[Array, int]]:
    def rule(args: tuple[Array, ...], dims: tuple[Any, ...], **params: Any) -> tuple[Array, int]:
        size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
        moved = [batching.bdim_at_front(a, d, size) for a, d in zip(args, dims, strict=True)]
        return prim.bind(*moved, **params), 0

    return rule


for _p in (unit_p, unit_tangent_p, unit_bwd_p):
    batching.primitive_batchers[_p] = _batcher(_p)


# ---------------------------------------------------------------------------------------------
# Lowering per platform
# ---------------------------------------------------------------------------------------------


def _pallas() -> Any:
    from gmpjax import _pallas_unit

    return _pallas_unit


def _pallas_fn(comp: str, interpret: bool) -> Callable[..., Array]:
    def fn(theta: Array, *rest: Array, renormalize: bool) -> Array:
        kernel = getattr(_pallas(), {"fwd": "unit_fwd", "tangent": "unit_tangent", "bwd": "unit_bwd"}[comp])
        out = kernel(*(_rows(a) for a in (theta, *rest)), renormalize=renormalize, interpret=interpret)
        return out.reshape(theta.shape[:-1] + (out.shape[-1],))

    return fn


#: Pure-JAX lowerings: (computation, "cpu" or "device") -> function(theta, *rest, renormalize).
_XLA: dict[tuple[str, str], Callable[..., Array]] = {
    ("fwd", "cpu"): _tiled_fwd,
    ("bwd", "cpu"): _tiled_bwd,
    ("tangent", "cpu"): _tangent_xla_cpu,
    ("fwd", "device"): _cumprod_fwd,
    ("bwd", "device"): _ref_bwd,
    ("tangent", "device"): _ref_tangent,
}
_NATIVE_DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _lower_fn(comp: str, platform: str, kernel: str, dtype: np.dtype) -> tuple[str, Callable[..., Array] | str]:
    """(name of the kernel, the function to lower or the FFI target name) for one computation on a platform."""
    if kernel == "pallas":
        return "pallas", _pallas_fn(comp, interpret=platform == "cpu")
    if platform == "cpu":
        if kernel in ("auto", "native") and dtype in _NATIVE_DTYPES and _native.available():
            return "native", _native.TARGETS[(comp, _NATIVE_DTYPES[dtype])][0]
        return "xla", _XLA[(comp, "cpu")]
    chosen = DEVICE_KERNELS.get(platform, "xla") if kernel in ("auto", "native") else kernel
    if chosen == "pallas" and dtype == np.dtype(np.float32):
        return "pallas", _pallas_fn(comp, interpret=False)
    return "xla", _XLA[(comp, "device")]


def _ffi_fn(target: str, comp: str) -> Callable[..., Array]:
    def fn(theta: Array, *rest: Array, renormalize: bool) -> Array:
        last = theta.shape[-1] if comp == "bwd" else theta.shape[-1] + 1
        out = jax.ShapeDtypeStruct(theta.shape[:-1] + (last,), theta.dtype)
        call = jax.ffi.ffi_call(target, out, vmap_method="broadcast_all")
        return call(theta, *rest, renormalize=np.int32(renormalize))

    return fn


#: Shardy rules: leading (row) axes pass through, the angle axes ``i`` (K) and ``j`` (K+1) stay whole.
_SHARDY_RULES = {"fwd": "... i -> ... j", "tangent": "... i, ... i -> ... j", "bwd": "... i, ... j -> ... i"}


def _rows_only(sharding: Any, ndim: int) -> Any:
    """``sharding`` with the last axis replicated (each device keeps whole rows)."""
    from jax.sharding import NamedSharding, PartitionSpec

    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[: ndim - 1], None))


def _row_partitioned(fn: Callable[..., Array], comp: str) -> Callable[..., Array]:
    """``fn`` under ``custom_partitioning``: each device runs it on its own rows, the angle axis replicated."""
    from jax.experimental.custom_partitioning import custom_partitioning

    cp = custom_partitioning(fn)

    def infer(mesh: Any, arg_shapes: Any, result_shape: Any) -> Any:
        return _rows_only(arg_shapes[0].sharding, len(arg_shapes[0].shape))

    def partition(mesh: Any, arg_shapes: Any, result_shape: Any) -> Any:
        rows = _rows_only(arg_shapes[0].sharding, len(arg_shapes[0].shape))
        args = tuple(_rows_only(rows, len(a.shape)) for a in arg_shapes)
        return mesh, fn, _rows_only(rows, len(result_shape.shape)), args

    cp.def_partition(
        partition,
        infer_sharding_from_operands=infer,
        sharding_rule=_SHARDY_RULES[comp],
        need_replication_factors=("i", "j"),
    )
    return cp


def _partitioned_module(ctx: Any) -> bool:
    """True when the module is lowered for several known devices by the SPMD partitioner (not in shard_map).

    ``custom_partitioning`` needs the device assignment while lowering; JAX provides it for primitives
    registered as needing it (below). Where it is missing (an export, or a JAX without that registry)
    the kernel is lowered as is: still correct, with XLA gathering theta's rows onto every device.
    """
    axis_ctx = ctx.module_context.axis_context
    return (
        type(axis_ctx).__name__ == "ShardingContext"
        and getattr(axis_ctx, "num_devices", 1) > 1
        and getattr(axis_ctx, "device_assignment", None) is not None
    )


def _make_lowering(comp: str, platform: str) -> Callable[..., Any]:
    def rule(ctx: Any, *operands: Any, renormalize: bool, kernel: str) -> Any:
        dtype = np.dtype(ctx.avals_in[0].dtype)
        _, target = _lower_fn(comp, platform, kernel, dtype)
        kernel_fn = _ffi_fn(target, comp) if isinstance(target, str) else target

        def fn(*arrays: Array) -> Array:
            return kernel_fn(*arrays, renormalize=renormalize)

        if _partitioned_module(ctx):
            fn = _row_partitioned(fn, comp)
        return mlir.lower_fun(fn, multiple_results=False)(ctx, *operands)

    return rule


try:  # JAX passes the device assignment to the lowering of primitives in this (internal) registry
    from jax._src import dispatch as _dispatch

    _dispatch.prim_requires_devices_during_lowering.update((unit_p, unit_tangent_p, unit_bwd_p))
except (ImportError, AttributeError):  # pragma: no cover - the kernels then run on gathered rows
    pass

for _comp, _p in (("fwd", unit_p), ("tangent", unit_tangent_p), ("bwd", unit_bwd_p)):
    for _platform in ("cpu", "cuda", "rocm", "tpu"):
        mlir.register_lowering(_p, _make_lowering(_comp, _platform), platform=_platform)


def lowered_kernel(comp: str, platform: str, kernel: str = "auto", dtype: Any = np.float32) -> str:
    """Which kernel (``"native"``, ``"pallas"`` or ``"xla"``) a computation lowers to on ``platform``.

    >>> lowered_kernel("fwd", "cuda")
    'xla'
    """
    return _lower_fn(comp, platform, kernel, np.dtype(dtype))[0]
