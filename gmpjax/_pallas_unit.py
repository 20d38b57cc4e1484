"""Pallas kernels for the angle -> unit-vector map u(theta) and its two derivatives.

Three plain, jittable functions on row-major 2-D arrays (one row = one unit vector):

* ``unit_fwd(theta)``: ``(M, K) -> (M, K+1)``, the map itself;
* ``unit_tangent(theta, t)``: ``(M, K), (M, K) -> (M, K+1)``, the forward-mode derivative ``J t``;
* ``unit_bwd(theta, g)``: ``(M, K), (M, K+1) -> (M, K)``, the reverse-mode derivative ``J^T g``.

The math (0-based, one row, ``s_k = sin theta_k``, ``c_k = cos theta_k``)::

    P_{-1} = 1,   P_k = P_{k-1} s_k,   u_k = P_{k-1} c_k  (k < K),   u_K = P_{K-1};
    tangent:  dP_{-1} = 0,   dP_k = s_k dP_{k-1} + u_k t_k,   du_k = c_k dP_{k-1} - P_k t_k,   du_K = dP_{K-1};
    backward: R_{K-1} = g_K,   dtheta_k = P_{k-1} (c_k R_k - s_k g_k),   R_{k-1} = g_k c_k + s_k R_k.

Nothing divides, so values and derivatives are exact and finite at ``theta_k in {0, pi}``. With
``renormalize=True`` every output row is multiplied by the row's ``scale = 1 / sqrt(sum_k u_k^2)`` (1 in exact
arithmetic; it removes float32 rounding drift). The scale is a constant for the derivatives: the tangent is
``scale * J t`` and, as ``J^T`` acts row by row, the backward ``J^T (scale g) = scale * J^T g``. The kernels
therefore return the unscaled result plus the per-row ``sum_k u_k^2`` and the wrapper applies the scale (XLA fuses
the multiply into the transpose back to row-major).

Padding. An appended angle ``0`` has ``s = 0``, ``c = 1``: after the real angles it yields ``u_K = P_{K-1} c = P_{K-1}``
at index ``K`` and zeros after it (``P_K = 0``), it adds nothing to the tangent (padded ``t`` is 0, so
``du_K = dP_{K-1}``) and the backward recurrence started from ``R = 0`` there reaches ``R_{K-1} = g_K`` (padded ``g``
is 0). So every kernel runs one uniform recurrence over ``Kp >= K + 1`` angles: theta and ``t`` are zero-padded to
``Kp`` angles, ``g`` to ``Kp`` components, and the wrapper slices the first ``K + 1`` (resp. ``K``) results. Padded
rows (angles 0) give ``u = e_0`` and are dropped.

Kernel layout. The wrapper transposes to put the angle axis first and the rows on the 128-wide lane axis:
``x[k, r // 128, r % 128] = theta[r, k]``, shape ``(Kp, L, 128)`` with ``L = ceil(M / 128)`` (rows padded). One
sequential step of the recurrence is then one elementwise operation on a ``(rows/128, 128)`` slab ``x[k]`` of many
rows, loaded with a dynamic index on the untiled leading axis; the running products live in registers/scratch, never
a whole row. Pallas has no cumulative product (Triton has only a forward cumsum, Mosaic none), so each recurrence is
a ``lax.fori_loop`` over angles, unrolled by hand ``_UNROLL`` times (Triton's lowering takes no ``unroll``).

TPU (Mosaic). Block ``(TK, SB, 128)`` with ``SB = min(8, L)`` sublanes (one full vreg per step for float32) and an
angle tile ``TK = min(128, K + 1)``; ``Kp = TK * ceil((K + 1) / TK)``. The grid is ``(L / SB, Kp / TK)``: row blocks
``"parallel"``, angle tiles ``"arbitrary"`` (sequential). The carries (``P``; ``P, dP``) persist across angle tiles
in ``(SB, 128)`` VMEM scratch, and ``sum u^2`` accumulates in its output block, which stays resident along the angle
axis. The backward runs ``2 Kp / TK`` angle steps: steps ``j < T`` (``T = Kp / TK``) sweep the tiles forwards and save
only each tile's starting product ``P_{jTK-1}`` in a ``(T, SB, 128)`` scratch; steps ``j >= T`` visit tile
``2T - 1 - j`` (last first), recompute its ``P_{k-1}``, ``s_k``, ``c_k`` into ``(TK, SB, 128)`` scratch from the saved
start, and run the reverse recurrence with ``R`` carried in ``(SB, 128)`` scratch. ``g`` and ``dtheta`` keep block
``T - 1`` during the forward half, so nothing is fetched or written back early.

GPU (Triton). No scratch and no sequential grid axis, so one program owns a 128-row block (grid ``(L,)``, block
``(Kp, 1, 128)`` with ``Kp = K + 1``, 4 warps: one row per thread) and loops over all angles with the carries in
registers; loads and stores are ``(1, 128)`` slabs (Triton needs power-of-two tensor sizes, not block shapes). The
backward's forward sweep stores ``P_{k-1}`` into the ``dtheta`` output buffer itself and, after a block barrier, the
reverse sweep reads it back and overwrites it with ``dtheta_k``, so no residual exists outside the kernel (the buffer
is the output; the traffic equals one more read of theta).

dtypes: computation is in the input dtype. float32 on TPU and GPU; float64 works in interpret mode (under
``jax.enable_x64``) and the Triton lowering accepts it, Mosaic (TPU) does not support float64.

Platform choice: ``lax.platform_dependent`` picks the Mosaic kernels on TPU and the Triton kernels on CUDA/ROCm at
lowering time (so ``jax.export`` for either works on any host). ``interpret=True`` runs the chosen kernel in the
Pallas interpreter; other backends (CPU) get the Mosaic variant, which Pallas runs there only with ``interpret=True``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

Array = jax.Array
Ref = Any  # a Pallas kernel reference (indexable, assignable)

__all__ = ["unit_fwd", "unit_tangent", "unit_bwd"]

LANES = 128  #: rows per lane group (the TPU lane width; one Triton program)
_TPU_SUBLANES = 8  #: lane groups per TPU row block (SB): one float32 vreg per step
_TPU_TILE = 128  #: angles per TPU angle tile (TK)
_UNROLL = 8  #: hand unrolling of the angle loops
_INTERPRET_UNROLL = 2  #: the same in interpret mode, which is compile-bound (still a chunked loop plus a remainder)
_TRITON_WARPS = 4  #: 4 warps x 32 threads = 128 rows per program


# ---------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------


def _round_up(n: int, m: int) -> int:
    """Smallest multiple of ``m`` that is ``>= n``."""
    return -(-n // m) * m


def _to_kernel(x: Array, rows: int, cols: int) -> Array:
    """``(M, N) -> (cols, rows / 128, 128)``: zero-pad to ``(rows, cols)``, transpose, split rows into lane groups."""
    m, n = x.shape
    x = jnp.pad(x, ((0, rows - m), (0, cols - n)))
    return x.T.reshape(cols, rows // LANES, LANES)


def _from_kernel(y: Array, m: int, n: int) -> Array:
    """Inverse of ``_to_kernel``: ``(cols, rows / 128, 128) -> (m, n)`` (drops the padding)."""
    cols = y.shape[0]
    return y.reshape(cols, -1).T[:m, :n]


def _row_scale(sumsq: Array, m: int) -> Array:
    """Per-row ``1 / sqrt(sum_k u_k^2)`` as an ``(m, 1)`` column, from the kernels' ``(rows / 128, 128)`` sums."""
    return lax.rsqrt(sumsq.reshape(-1)[:m])[:, None]


# ---------------------------------------------------------------------------
# loops and recurrence steps (shape-agnostic: they act on one (rows/128, 128) slab per angle)
# ---------------------------------------------------------------------------


def _loop(n: int, body: Callable[[Any, Any], Any], carry: Any, *, unroll: int, reverse: bool = False) -> Any:
    """``carry = body(k, carry)`` for ``k = 0 .. n-1`` (or ``n-1 .. 0``), ``n`` static.

    A ``fori_loop`` over ``n // unroll`` chunks of ``unroll`` straight-line steps, then the remainder straight-line;
    independent loads and sin/cos of neighbouring steps can then overlap the dependent multiply chain.
    """

    # The step index is an int32 carried through the loop, not the fori_loop index: with x64 enabled that index is
    # int64, which Mosaic lowers as i32 and then fails to convert.
    def index(k: Any) -> Any:
        return np.int32(n - 1) - k if reverse else k

    def chunk(_: Any, kc: tuple[Array, Any]) -> tuple[Array, Any]:
        k, c = kc
        for d in range(unroll):
            c = body(index(k + np.int32(d)), c)
        return k + np.int32(unroll), c

    main = n // unroll
    if main > 0:
        _, carry = lax.fori_loop(0, main, chunk, (jnp.zeros((), jnp.int32), carry))
    for k in range(main * unroll, n):
        carry = body(index(k), carry)
    return carry


def _unroll(interpret: bool) -> int:
    """Steps per loop chunk: ``_UNROLL`` for a compiler, fewer for the interpreter (the same code, faster to build)."""
    return _INTERPRET_UNROLL if interpret else _UNROLL


def _sumsq_add(acc: Array | None, u: Array) -> Array | None:
    """``acc + u^2`` (or ``None`` when no sum is kept)."""
    return None if acc is None else acc + u * u


def _fwd_sweep(
    theta: Ref, u_out: Ref, n: int, p: Array, acc: Array | None, *, unroll: int
) -> tuple[Array, Array | None]:
    """``u_k = P_{k-1} c_k`` into ``u_out[k]`` for the ``n`` angles of ``theta``; returns the new ``(P, sum u^2)``."""

    def body(k: Any, carry: tuple[Array, Array | None]) -> tuple[Array, Array | None]:
        p, acc = carry
        th = theta[k]
        u = p * jnp.cos(th)
        u_out[k] = u
        return p * jnp.sin(th), _sumsq_add(acc, u)

    return _loop(n, body, (p, acc), unroll=unroll)


def _tangent_sweep(
    theta: Ref, t: Ref, du_out: Ref, n: int, p: Array, dp: Array, acc: Array | None, *, unroll: int
) -> tuple[Array, Array, Array | None]:
    """``du_k = c_k dP_{k-1} - P_k t_k``, ``dP_k = s_k dP_{k-1} + u_k t_k``; returns the new ``(P, dP, sum u^2)``."""

    def body(k: Any, carry: tuple[Array, Array, Array | None]) -> tuple[Array, Array, Array | None]:
        p, dp, acc = carry
        th, tk = theta[k], t[k]
        s, c = jnp.sin(th), jnp.cos(th)
        u = p * c
        p_next = p * s
        du_out[k] = c * dp - p_next * tk
        return p_next, s * dp + u * tk, _sumsq_add(acc, u)

    return _loop(n, body, (p, dp, acc), unroll=unroll)


def _prefix_sweep(
    theta: Ref,
    n: int,
    p: Array,
    acc: Array | None,
    *,
    unroll: int,
    p_out: Ref | None = None,
    sc_out: tuple[Ref, Ref] | None = None,
) -> tuple[Array, Array | None]:
    """Run ``P_k = P_{k-1} s_k`` over ``n`` angles, storing ``P_{k-1}`` (and ``s_k, c_k``) where asked.

    Returns the new ``(P, sum u^2)``; ``acc`` (``None``: not kept) adds ``u_k^2 = (P_{k-1} c_k)^2``.
    """

    def body(k: Any, carry: tuple[Array, Array | None]) -> tuple[Array, Array | None]:
        p, acc = carry
        th = theta[k]
        s = jnp.sin(th)
        if p_out is not None:
            p_out[k] = p
        if acc is not None or sc_out is not None:
            c = jnp.cos(th)
            acc = None if acc is None else acc + (p * c) ** 2
            if sc_out is not None:
                sc_out[0][k], sc_out[1][k] = s, c
        return p * s, acc

    return _loop(n, body, (p, acc), unroll=unroll)


def _reverse_sweep(
    g: Ref, dtheta_out: Ref, n: int, r: Array, p_prev: Ref, sincos: Callable[[Any], tuple[Array, Array]], *, unroll: int
) -> Array:
    """``dtheta_k = P_{k-1} (c_k R_k - s_k g_k)``, ``R_{k-1} = g_k c_k + s_k R_k`` for ``k = n-1 .. 0``.

    ``p_prev[k]`` holds ``P_{k-1}`` (it may be ``dtheta_out`` itself: element ``k`` is read before it is written) and
    ``sincos(k)`` gives ``(s_k, c_k)``. Returns ``R_{-1}`` of the swept range (the carry into the previous range).
    """

    def body(k: Any, r: Array) -> Array:
        s, c = sincos(k)
        gk = g[k]
        pm = p_prev[k]
        dtheta_out[k] = pm * (c * r - s * gk)
        return gk * c + s * r

    return _loop(n, body, r, unroll=unroll, reverse=True)


# ---------------------------------------------------------------------------
# TPU (Mosaic) kernels: grid (row blocks, angle tiles), carries in VMEM scratch
# ---------------------------------------------------------------------------


def _tpu_fwd_kernel(theta: Ref, u: Ref, *rest: Ref, renormalize: bool, unroll: int) -> None:
    """One ``(TK, SB, 128)`` angle tile of the forward map; ``rest = ([sumsq_out,] p_scratch)``."""
    sumsq, p_scr = (rest[0], rest[1]) if renormalize else (None, rest[0])
    first = pl.program_id(1) == 0

    @pl.when(first)
    def _init() -> None:
        p_scr[...] = jnp.ones(p_scr.shape, p_scr.dtype)
        if sumsq is not None:
            sumsq[...] = jnp.zeros(sumsq.shape, sumsq.dtype)

    acc = None if sumsq is None else sumsq[...]
    p, acc = _fwd_sweep(theta, u, theta.shape[0], p_scr[...], acc, unroll=unroll)
    p_scr[...] = p
    if sumsq is not None:
        sumsq[...] = acc


def _tpu_tangent_kernel(theta: Ref, t: Ref, du: Ref, *rest: Ref, renormalize: bool, unroll: int) -> None:
    """One angle tile of the tangent map; ``rest = ([sumsq_out,] p_scratch, dp_scratch)``."""
    sumsq, p_scr, dp_scr = (rest[0], rest[1], rest[2]) if renormalize else (None, rest[0], rest[1])

    @pl.when(pl.program_id(1) == 0)
    def _init() -> None:
        p_scr[...] = jnp.ones(p_scr.shape, p_scr.dtype)
        dp_scr[...] = jnp.zeros(dp_scr.shape, dp_scr.dtype)
        if sumsq is not None:
            sumsq[...] = jnp.zeros(sumsq.shape, sumsq.dtype)

    acc = None if sumsq is None else sumsq[...]
    p, dp, acc = _tangent_sweep(theta, t, du, theta.shape[0], p_scr[...], dp_scr[...], acc, unroll=unroll)
    p_scr[...], dp_scr[...] = p, dp
    if sumsq is not None:
        sumsq[...] = acc


def _tpu_bwd_kernel(theta: Ref, g: Ref, dtheta: Ref, *rest: Ref, renormalize: bool, unroll: int, tiles: int) -> None:
    """Angle step ``j`` of the backward: forward tile ``j`` for ``j < T``, reverse tile ``2T-1-j`` after.

    ``rest = ([sumsq_out,] starts, carry, p_tile, s_tile, c_tile)``: ``starts[j] = P_{j TK - 1}`` (``(T, SB, 128)``),
    ``carry`` is ``P`` in the forward half and ``R`` in the reverse half, the tile arrays hold ``P_{k-1}, s_k, c_k``.
    """
    sumsq = rest[0] if renormalize else None
    starts, carry, p_tile, s_tile, c_tile = rest[1:] if renormalize else rest
    j = pl.program_id(1)
    tk = theta.shape[0]

    @pl.when(j == 0)
    def _init() -> None:
        carry[...] = jnp.ones(carry.shape, carry.dtype)
        if sumsq is not None:
            sumsq[...] = jnp.zeros(sumsq.shape, sumsq.dtype)

    @pl.when(j < tiles)
    def _forward() -> None:
        starts[j] = carry[...]
        acc = None if sumsq is None else sumsq[...]
        p, acc = _prefix_sweep(theta, tk, carry[...], acc, unroll=unroll)
        carry[...] = p
        if sumsq is not None:
            sumsq[...] = acc

    @pl.when(j == tiles)
    def _start_reverse() -> None:
        carry[...] = jnp.zeros(carry.shape, carry.dtype)  # R_{Kp-1} = g_{Kp} = 0 (padding)

    @pl.when(j >= tiles)
    def _reverse() -> None:
        tile = np.int32(2 * tiles - 1) - j
        _prefix_sweep(theta, tk, starts[tile], None, unroll=unroll, p_out=p_tile, sc_out=(s_tile, c_tile))
        carry[...] = _reverse_sweep(g, dtheta, tk, carry[...], p_tile, lambda k: (s_tile[k], c_tile[k]), unroll=unroll)


def _tpu_blocks(m: int, k: int) -> tuple[int, int, int, int]:
    """``(SB, rows, TK, Kp)`` for ``M = m`` rows and ``K = k`` angles (see the module docstring)."""
    groups = -(-m // LANES)
    sb = min(_TPU_SUBLANES, groups)
    tk = min(_TPU_TILE, k + 1)
    return sb, _round_up(groups, sb) * LANES, tk, _round_up(k + 1, tk)


TileMap = Callable[[Any], Any]  # angle step j -> angle tile


def _step(j: Any) -> Any:
    """The identity tile map: angle step ``j`` visits tile ``j``."""
    return j


def _tpu_call(
    kernel: Callable[..., None],
    inputs: Sequence[tuple[Array, TileMap]],
    out: tuple[int, TileMap],
    blocks: tuple[int, int, int],
    scratch: Sequence[tuple[int, ...]],
    *,
    renormalize: bool,
    interpret: bool,
) -> tuple[Array, Array | None]:
    """``pallas_call`` on TPU: arrays ``(Kp, rows/128, 128)``, blocks ``(TK, SB, 128)``, grid ``(row blocks, steps)``.

    Args:
        kernel: the kernel, called with ``renormalize`` bound.
        inputs: kernel-layout inputs, each with the map from angle step to the angle tile it reads.
        out: ``(Kp_out, tile_map)`` for the single kernel-layout output.
        blocks: ``(SB, TK, steps)``: lane groups per block, angles per tile, angle steps of the grid.
        scratch: shapes of the VMEM scratch arrays (input dtype).
        renormalize: whether the kernel also returns the per-row sums of ``u_k^2``.
        interpret: run in the Pallas interpreter.

    Returns:
        The kernel-layout output and, if ``renormalize``, the ``(rows/128, 128)`` sums of squares (else ``None``).
    """
    sb, tk, steps = blocks
    _, groups, _ = inputs[0][0].shape
    dtype = inputs[0][0].dtype
    out_rows, out_tile = out

    def spec(tile: TileMap) -> pl.BlockSpec:
        return pl.BlockSpec((tk, sb, LANES), lambda i, j: (tile(j), i, 0))

    out_specs = [spec(out_tile)]
    out_shape = [jax.ShapeDtypeStruct((out_rows, groups, LANES), dtype)]
    if renormalize:
        out_specs.append(pl.BlockSpec((sb, LANES), lambda i, j: (i, 0)))
        out_shape.append(jax.ShapeDtypeStruct((groups, LANES), dtype))
    outs = pl.pallas_call(
        functools.partial(kernel, renormalize=renormalize, unroll=_unroll(interpret)),
        grid=(groups // sb, steps),
        in_specs=[spec(tile) for _, tile in inputs],
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM(shape, dtype) for shape in scratch],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        interpret=interpret,
    )(*(x for x, _ in inputs))
    return outs[0], (outs[1] if renormalize else None)


def _tpu_fwd(theta: Array, renormalize: bool, interpret: bool) -> Array:
    """Mosaic ``unit_fwd`` (see ``unit_fwd``)."""
    m, k = theta.shape
    sb, rows, tk, kp = _tpu_blocks(m, k)
    u, sumsq = _tpu_call(
        _tpu_fwd_kernel,
        [(_to_kernel(theta, rows, kp), _step)],
        (kp, _step),
        (sb, tk, kp // tk),
        [(sb, LANES)],
        renormalize=renormalize,
        interpret=interpret,
    )
    u = _from_kernel(u, m, k + 1)
    return u if sumsq is None else u * _row_scale(sumsq, m)


def _tpu_tangent(theta: Array, t: Array, renormalize: bool, interpret: bool) -> Array:
    """Mosaic ``unit_tangent`` (see ``unit_tangent``)."""
    m, k = theta.shape
    sb, rows, tk, kp = _tpu_blocks(m, k)
    inputs = [(_to_kernel(theta, rows, kp), _step), (_to_kernel(t, rows, kp), _step)]
    du, sumsq = _tpu_call(
        _tpu_tangent_kernel,
        inputs,
        (kp, _step),
        (sb, tk, kp // tk),
        [(sb, LANES)] * 2,
        renormalize=renormalize,
        interpret=interpret,
    )
    du = _from_kernel(du, m, k + 1)
    return du if sumsq is None else du * _row_scale(sumsq, m)


def _tpu_bwd(theta: Array, g: Array, renormalize: bool, interpret: bool) -> Array:
    """Mosaic ``unit_bwd`` (see ``unit_bwd``): ``2T`` angle steps, forward tiles then reverse tiles."""
    m, k = theta.shape
    sb, rows, tk, kp = _tpu_blocks(m, k)
    tiles = kp // tk

    def theta_tile(j: Any) -> Any:  # 0, 1, .., T-1, T-1, .., 0
        return jnp.minimum(j, np.int32(2 * tiles - 1) - j)

    def g_tile(j: Any) -> Any:  # T-1 through the forward half (fetched once, nothing written back), then T-1, .., 0
        return jnp.minimum(np.int32(tiles - 1), np.int32(2 * tiles - 1) - j)

    inputs = [(_to_kernel(theta, rows, kp), theta_tile), (_to_kernel(g, rows, kp), g_tile)]
    scratch = [(tiles, sb, LANES), (sb, LANES)] + [(tk, sb, LANES)] * 3
    dtheta, sumsq = _tpu_call(
        functools.partial(_tpu_bwd_kernel, tiles=tiles),
        inputs,
        (kp, g_tile),
        (sb, tk, 2 * tiles),
        scratch,
        renormalize=renormalize,
        interpret=interpret,
    )
    dtheta = _from_kernel(dtheta, m, k)
    return dtheta if sumsq is None else dtheta * _row_scale(sumsq, m)


# ---------------------------------------------------------------------------
# GPU (Triton) kernels: grid (row blocks,), all angles of a 128-row block in one program, carries in registers
# ---------------------------------------------------------------------------


def _triton_fwd_kernel(theta: Ref, u: Ref, *rest: Ref, renormalize: bool, unroll: int) -> None:
    """All ``Kp`` angles of one 128-row block; ``rest = (sumsq_out,)`` if ``renormalize``."""
    ones = jnp.ones(theta.shape[1:], theta.dtype)
    acc = jnp.zeros_like(ones) if renormalize else None
    _, acc = _fwd_sweep(theta, u, theta.shape[0], ones, acc, unroll=unroll)
    if renormalize:
        rest[0][...] = acc


def _triton_tangent_kernel(theta: Ref, t: Ref, du: Ref, *rest: Ref, renormalize: bool, unroll: int) -> None:
    """All ``Kp`` angles of one 128-row block; ``rest = (sumsq_out,)`` if ``renormalize``."""
    ones = jnp.ones(theta.shape[1:], theta.dtype)
    zeros = jnp.zeros_like(ones)
    acc = zeros if renormalize else None
    _, _, acc = _tangent_sweep(theta, t, du, theta.shape[0], ones, zeros, acc, unroll=unroll)
    if renormalize:
        rest[0][...] = acc


def _triton_bwd_kernel(
    theta: Ref, g: Ref, dtheta: Ref, *rest: Ref, renormalize: bool, unroll: int, barrier: bool
) -> None:
    """Forward sweep writing ``P_{k-1}`` into ``dtheta``, then the reverse sweep overwriting it with ``dtheta_k``.

    ``barrier``: synchronise the block between the sweeps, so the reverse sweep sees every store of the forward one
    whatever Triton's thread layout (the interpreter has no barrier and needs none).
    """
    kp = theta.shape[0]
    ones = jnp.ones(theta.shape[1:], theta.dtype)
    zeros = jnp.zeros_like(ones)
    _, acc = _prefix_sweep(theta, kp, ones, zeros if renormalize else None, unroll=unroll, p_out=dtheta)
    if barrier:
        pltriton.debug_barrier()

    def sincos(k: Any) -> tuple[Array, Array]:
        th = theta[k]
        return jnp.sin(th), jnp.cos(th)

    _reverse_sweep(g, dtheta, kp, zeros, dtheta, sincos, unroll=unroll)
    if renormalize:
        rest[0][...] = acc


def _triton_call(
    kernel: Callable[..., None], inputs: Sequence[Array], out_rows: int, *, renormalize: bool, interpret: bool
) -> tuple[Array, Array | None]:
    """``pallas_call`` on GPU: arrays ``(Kp, rows/128, 128)``, blocks ``(Kp, 1, 128)``, grid ``(rows/128,)``.

    Returns the kernel-layout output (``out_rows`` angles) and, if ``renormalize``, the ``(rows/128, 128)`` sums of
    squares (else ``None``).
    """
    kp, groups, _ = inputs[0].shape
    dtype = inputs[0].dtype
    out_specs = [pl.BlockSpec((out_rows, 1, LANES), lambda i: (0, i, 0))]
    out_shape = [jax.ShapeDtypeStruct((out_rows, groups, LANES), dtype)]
    if renormalize:
        out_specs.append(pl.BlockSpec((1, LANES), lambda i: (i, 0)))
        out_shape.append(jax.ShapeDtypeStruct((groups, LANES), dtype))
    outs = pl.pallas_call(
        functools.partial(kernel, renormalize=renormalize, unroll=_unroll(interpret)),
        grid=(groups,),
        in_specs=[pl.BlockSpec((x.shape[0], 1, LANES), lambda i: (0, i, 0)) for x in inputs],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=_TRITON_WARPS, num_stages=1),
        interpret=interpret,
    )(*inputs)
    return outs[0], (outs[1] if renormalize else None)


def _triton_fwd(theta: Array, renormalize: bool, interpret: bool) -> Array:
    """Triton ``unit_fwd`` (see ``unit_fwd``)."""
    m, k = theta.shape
    rows = _round_up(m, LANES)
    u, sumsq = _triton_call(
        _triton_fwd_kernel, [_to_kernel(theta, rows, k + 1)], k + 1, renormalize=renormalize, interpret=interpret
    )
    u = _from_kernel(u, m, k + 1)
    return u if sumsq is None else u * _row_scale(sumsq, m)


def _triton_tangent(theta: Array, t: Array, renormalize: bool, interpret: bool) -> Array:
    """Triton ``unit_tangent`` (see ``unit_tangent``)."""
    m, k = theta.shape
    rows = _round_up(m, LANES)
    inputs = [_to_kernel(theta, rows, k + 1), _to_kernel(t, rows, k + 1)]
    du, sumsq = _triton_call(_triton_tangent_kernel, inputs, k + 1, renormalize=renormalize, interpret=interpret)
    du = _from_kernel(du, m, k + 1)
    return du if sumsq is None else du * _row_scale(sumsq, m)


def _triton_bwd(theta: Array, g: Array, renormalize: bool, interpret: bool) -> Array:
    """Triton ``unit_bwd`` (see ``unit_bwd``)."""
    m, k = theta.shape
    rows = _round_up(m, LANES)
    inputs = [_to_kernel(theta, rows, k + 1), _to_kernel(g, rows, k + 1)]
    kernel = functools.partial(_triton_bwd_kernel, barrier=not interpret)
    dtheta, sumsq = _triton_call(kernel, inputs, k + 1, renormalize=renormalize, interpret=interpret)
    dtheta = _from_kernel(dtheta, m, k)
    return dtheta if sumsq is None else dtheta * _row_scale(sumsq, m)


# ---------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------


def _check(theta: Array, other: Array | None = None, other_cols: int = 0, name: str = "") -> None:
    """Raise ``ValueError`` unless ``theta`` is float ``(M, K)``, ``M, K >= 1``, and ``other`` ``(M, other_cols)``."""
    if theta.ndim != 2 or theta.shape[0] < 1 or theta.shape[1] < 1:
        raise ValueError(f"theta must be 2-D (M, K) with M, K >= 1, got shape {theta.shape}")
    if not jnp.issubdtype(theta.dtype, jnp.floating):
        raise ValueError(f"theta must be a float array, got {theta.dtype}")
    if other is not None and (other.shape != (theta.shape[0], other_cols) or other.dtype != theta.dtype):
        raise ValueError(
            f"{name} must have shape {(theta.shape[0], other_cols)} and dtype {theta.dtype}, "
            f"got {other.shape} {other.dtype}"
        )


def _dispatch(tpu: Callable[..., Array], gpu: Callable[..., Array], *args: Array) -> Array:
    """Mosaic kernels on TPU, Triton on CUDA/ROCm, chosen at lowering; Mosaic elsewhere (interpret mode only)."""
    return lax.platform_dependent(*args, tpu=tpu, cuda=gpu, rocm=gpu, default=tpu)


@functools.partial(jax.jit, static_argnames=("renormalize", "interpret"))
def unit_fwd(theta: Array, *, renormalize: bool, interpret: bool = False) -> Array:
    """The unit vector ``u(theta)`` row by row, as a Pallas kernel.

    ``u_k = cos(theta_k) prod_{j<k} sin(theta_j)`` for ``k < K`` and ``u_K = prod_{j<K} sin(theta_j)``.

    Args:
        theta: ``(M, K)`` angles, float32 (float64 in interpret mode and on GPU only).
        renormalize: multiply each row by ``1 / ||u||`` (removes rounding drift from the unit norm).
        interpret: run the kernel in the Pallas interpreter (any backend, e.g. CPU).

    Returns:
        ``(M, K+1)`` unit vectors, dtype of ``theta``.
    """
    _check(theta)
    return _dispatch(
        functools.partial(_tpu_fwd, renormalize=renormalize, interpret=interpret),
        functools.partial(_triton_fwd, renormalize=renormalize, interpret=interpret),
        theta,
    )


@functools.partial(jax.jit, static_argnames=("renormalize", "interpret"))
def unit_tangent(theta: Array, t: Array, *, renormalize: bool, interpret: bool = False) -> Array:
    """Forward-mode derivative ``J(theta) t`` of ``unit_fwd``, row by row.

    ``du_k = c_k dP_{k-1} - P_k t_k``, ``du_K = dP_{K-1}`` with ``dP_k = s_k dP_{k-1} + u_k t_k``, ``dP_{-1} = 0``;
    with ``renormalize`` the result is multiplied by the (constant) per-row scale ``1 / ||u||``.

    Args:
        theta: ``(M, K)`` angles, float32 (float64 in interpret mode and on GPU only).
        t: ``(M, K)`` tangent, same dtype.
        renormalize: scale rows by ``1 / ||u||`` as ``unit_fwd`` does (the scale is not differentiated).
        interpret: run the kernel in the Pallas interpreter.

    Returns:
        ``(M, K+1)`` tangent of ``u``.
    """
    _check(theta, t, theta.shape[1], "t")
    return _dispatch(
        functools.partial(_tpu_tangent, renormalize=renormalize, interpret=interpret),
        functools.partial(_triton_tangent, renormalize=renormalize, interpret=interpret),
        theta,
        t,
    )


@functools.partial(jax.jit, static_argnames=("renormalize", "interpret"))
def unit_bwd(theta: Array, g: Array, *, renormalize: bool, interpret: bool = False) -> Array:
    """Reverse-mode derivative ``J(theta)^T g`` of ``unit_fwd``, row by row.

    ``R_{K-1} = g_K``; for ``k = K-1 .. 0``: ``dtheta_k = P_{k-1} (c_k R_k - s_k g_k)``,
    ``R_{k-1} = g_k c_k + s_k R_k``. With ``renormalize``, ``g`` is first multiplied by the (constant) per-row scale.

    Args:
        theta: ``(M, K)`` angles, float32 (float64 in interpret mode and on GPU only).
        g: ``(M, K+1)`` cotangent ``dL/du``, same dtype.
        renormalize: scale rows by ``1 / ||u||`` as ``unit_fwd`` does (the scale is not differentiated).
        interpret: run the kernel in the Pallas interpreter.

    Returns:
        ``(M, K)`` cotangent ``dL/dtheta``.
    """
    _check(theta, g, theta.shape[1] + 1, "g")
    return _dispatch(
        functools.partial(_tpu_bwd, renormalize=renormalize, interpret=interpret),
        functools.partial(_triton_bwd, renormalize=renormalize, interpret=interpret),
        theta,
        g,
    )
