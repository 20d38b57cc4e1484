"""Pure maps of the triangular-wave reparameterization (Milkert, Hyde & Laine, ICML 2025).

A width-4, depth-``d`` ReLU network is written as a closed-form function of the
*peaks* ``a_0 .. a_d`` of asymmetric triangle (tent) maps and of positive *scales*
``s_0 .. s_{d-1}``. Whatever the peaks in (0, 1), the network computes

    F_d(x) = x + sign * sum_{i<d} s_i W_i(x),   W_i = T_{a_i} o ... o T_{a_0},

which has exactly ``2^d`` linear regions on [0, 1]. Conventions follow the verified
notes (``docs/triangular.md``, ``docs/math.md``): peaks are indexed from
``a_0``; the hidden neurons are ordered ``(sum, t1, t2, bias)``; ``sign = -1`` gives
convex outputs and ``sign = +1`` concave ones; Theorem 3.1 ties the scales to the
peaks through ``s_{i+1} = s_i (1 - a_{i+1}) a_{i+2}`` so a depth-``d`` net stores
``d + 1`` peaks (``a_d`` only sets the last scale).

Layers are returned as a list of ``(W, b)`` with ``y = relu(x @ W + b)`` on every
layer but the last (``W`` has shape ``(in, out)``), the format of
:func:`gmpjax.regions.relu_mlp` and :func:`gmpjax.regions.count_linear_regions`.

Every function is jit/grad/vmap-safe and keeps the dtype of its inputs (float32
or float64). Peak validation runs only on concrete (non-traced) values.

>>> import jax.numpy as jnp
>>> peaks = jnp.array([0.5, 0.5, 0.5])
>>> s = theorem31_scales(peaks, 0.25)            # Yarotsky: s_i = 4^-(i+1)
>>> [float(v) for v in s]
[0.25, 0.0625]
>>> layers = peaks_to_weights(peaks, s, sign=-1)
>>> [w.shape for w, _ in layers]
[(1, 4), (4, 4), (4, 1)]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Array = jax.Array
Layers = list[tuple[Array, Array]]

__all__ = [
    "DEFAULT_MARGIN",
    "check_peaks",
    "check_depth",
    "check_sign",
    "tent",
    "tent_relu",
    "compositions",
    "theorem31_scales",
    "theorem31_ratios",
    "normalised_s0",
    "scales_to_ratios",
    "peaks_to_weights",
    "closed_form",
    "constrain_peaks",
    "unconstrain_peaks",
    "block_diagonal",
    "num_raw_params",
]

DEFAULT_MARGIN = 0.02
"""Default margin ``c`` of the constrained peak map: peaks live in ``[c, 1 - c]``."""


# ----------------------------------------------------------------------------- validation


def _is_concrete(x: object) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_peaks(peaks: ArrayLike, name: str = "peaks", *, min_len: int = 1) -> Array:
    """Validate peaks: a 1-D (or batched ``(..., n)``) float array with every entry in the open interval (0, 1).

    Raises ``ValueError`` naming ``name`` for NaN, values outside (0, 1), an empty or
    too-short last axis, and ``TypeError`` for non-float input. Traced values are
    returned unchecked (the check is a Python-level guard).
    """
    p = jnp.asarray(peaks)
    if not jnp.issubdtype(p.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array (got dtype {p.dtype}); pass e.g. jnp.array([0.3, 0.6])."
        )
    if p.ndim < 1 or p.shape[-1] < min_len:
        raise ValueError(f"{name} must have a last axis of length >= {min_len} (got shape {p.shape}).")
    if _is_concrete(p):
        v = np.asarray(p)
        if np.isnan(v).any():
            raise ValueError(f"{name} contains NaN; every peak must be a number in the open interval (0, 1).")
        if (v <= 0).any() or (v >= 1).any():
            raise ValueError(
                f"{name} must lie in the open interval (0, 1) (got min {v.min():.4g}, max {v.max():.4g}); "
                "use constrain_peaks(u, c) to map unconstrained values into [c, 1 - c]."
            )
    return p


def check_depth(depth: int, name: str = "depth") -> int:
    """Validate a network depth: a Python int >= 1."""
    if not isinstance(depth, (int, np.integer)) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"{name} must be an int >= 1 (the number of hidden ReLU layers); got {depth!r}.")
    return int(depth)


def check_sign(sign: int) -> int:
    """Validate ``sign`` (sigma): -1 (convex output) or +1 (concave output)."""
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 (convex output) or +1 (concave output); got {sign!r}.")
    return int(sign)


def _check_scales(scales: ArrayLike, name: str = "scales") -> Array:
    s = jnp.asarray(scales)
    if not jnp.issubdtype(s.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array (got dtype {s.dtype}).")
    if s.ndim < 1 or s.shape[-1] < 1:
        raise ValueError(f"{name} must have a last axis of length >= 1 (the depth); got shape {s.shape}.")
    if _is_concrete(s):
        v = np.asarray(s)
        if np.isnan(v).any() or (v <= 0).any():
            raise ValueError(f"{name} must be positive and finite (got min {np.nanmin(v) if v.size else v}).")
    return s


# ----------------------------------------------------------------------------- tents


def tent(x: Array, a: Array) -> Array:
    """Asymmetric triangle map ``T_a`` on [0, 1] (peak ``T_a(a) = 1``, ``T_a(0) = T_a(1) = 0``).

        T_a(x) = x / a                 for 0 <= x <= a
               = (1 - x) / (1 - a)     for a <= x <= 1

    Args:
      x: points, any shape.
      a: peak(s) in (0, 1), broadcastable against ``x``.

    >>> round(float(tent(0.25, 0.5)), 6), round(float(tent(0.75, 0.25)), 6)
    (0.5, 0.333333)
    """
    x = jnp.asarray(x)
    a = jnp.asarray(a, dtype=jnp.result_type(x, a))
    return jnp.where(x <= a, x / a, (1 - x) / (1 - a))


def tent_relu(x: Array, a: Array) -> Array:
    """``T_a`` written with two ReLUs: ``relu(x)/a - relu(x - a)/(a (1 - a))`` (equals :func:`tent` for x >= 0)."""
    return jax.nn.relu(x) / a - jax.nn.relu(x - a) / (a * (1 - a))


def compositions(x: Array, peaks: Array, depth: int) -> Array:
    """The tent compositions ``W_i(x) = T_{a_i}(W_{i-1}(x))``, ``W_{-1}(x) = x``, for i < depth.

    Args:
      x: points in [0, 1], shape ``(n,)``.
      peaks: shape ``(>= depth,)``.
      depth: number of compositions.

    Returns:
      ``(depth, n)``; row ``i`` has ``2^(i+1)`` linear pieces on [0, 1].
    """
    out = []
    w = jnp.asarray(x)
    for i in range(depth):
        w = tent(w, peaks[i])
        out.append(w)
    return jnp.stack(out)


# ----------------------------------------------------------------------------- scales


def theorem31_ratios(peaks: Array) -> Array:
    """Ratios ``S_i = s_i / s_{i-1}`` for i >= 1 under Theorem 3.1: ``S_i = (1 - a_i) a_{i+1}``.

    Args:
      peaks: ``(..., d + 1)``.

    Returns:
      ``(..., d - 1)`` ratios ``S_1 .. S_{d-1}``.
    """
    return (1 - peaks[..., 1:-1]) * peaks[..., 2:]


def theorem31_scales(peaks: Array, s0: ArrayLike) -> Array:
    """Scales from Theorem 3.1's recurrence ``s_{i+1} = s_i (1 - a_{i+1}) a_{i+2}``.

    This is the condition for the infinite-depth ``sum s_i W_i`` to be C^1
    (necessary; sufficient when the peaks stay in [c, 1 - c]).

    Args:
      peaks: ``(..., d + 1)`` peaks ``a_0 .. a_d`` in (0, 1).
      s0: the free first scale, scalar or ``(...)``.

    Returns:
      ``(..., d)`` scales ``s_0 .. s_{d-1}``.

    >>> [float(v) for v in theorem31_scales(jnp.array([0.5] * 4), 0.25)]
    [0.25, 0.0625, 0.015625]
    """
    peaks = check_peaks(peaks, min_len=1)
    s0 = jnp.asarray(s0, peaks.dtype)
    ratios = theorem31_ratios(peaks)
    ones = jnp.ones(ratios.shape[:-1] + (1,), peaks.dtype)
    return s0[..., None] * jnp.cumprod(jnp.concatenate([ones, ratios], axis=-1), axis=-1)


def normalised_s0(peaks: Array) -> Array:
    """The ``s_0`` that makes ``G_d'(0+) = sum_{i<d} s_i / (a_0 ... a_i) = 1`` under Theorem 3.1 scales.

    With ``sign = -1`` this gives ``F_d'(0+) = 0`` (as for x^2, x^3, x^11) and keeps every
    partial sum ``x - G_k`` non-negative, so the raw ReLU network equals the closed form
    (research notes, section 2.5).

    Args:
      peaks: ``(..., d + 1)``.

    Returns:
      ``(...)``.

    >>> round(float(normalised_s0(jnp.array([0.5, 0.5, 0.5]))), 6)  # 1 / (1/0.5 + 0.25/0.25)
    0.333333
    """
    peaks = check_peaks(peaks, min_len=1)
    rel = theorem31_scales(peaks, jnp.ones(peaks.shape[:-1], peaks.dtype))  # s_i / s_0
    d = rel.shape[-1]
    slope = jnp.sum(rel / jnp.cumprod(peaks[..., :d], axis=-1), axis=-1)
    return 1.0 / slope


def scales_to_ratios(scales: Array) -> Array:
    """``S_i = s_i / s_{i-1}`` with ``s_{-1} = 1`` (so ``S_0 = s_0``); shape preserved."""
    prev = jnp.concatenate([jnp.ones_like(scales[..., :1]), scales[..., :-1]], axis=-1)
    return scales / prev


# ----------------------------------------------------------------------------- weights


def peaks_to_weights(
    peaks: Array,
    scales: Array,
    sign: int = -1,
    *,
    gain: ArrayLike | None = None,
    offset: ArrayLike | None = None,
) -> Layers:
    """Weights and biases of the width-4, depth-``d`` triangle network (research notes section 2.3).

    With ``p_i = S_i / a_i``, ``q_i = S_i / (a_i (1 - a_i))`` and ``S_i = s_i / s_{i-1}``
    (``s_{-1} = 1``), neurons ordered ``(sum, t1, t2, bias)``:

    * input (1 -> 4): ``W = [[1, 1, 1, 0]]``, ``b = (0, 0, -a_0, 1)``;
    * hidden ``i = 0 .. d-2`` (4 -> 4, zero bias); output row ``r`` holds, for inputs ``(sum, t1, t2, bias)``,

          sum : [1, sign p_i, -sign q_i, 0]
          t1  : [0,      p_i,      -q_i, 0]
          t2  : [0,      p_i,      -q_i, -S_i a_{i+1}]
          bias: [0,        0,         0,  S_i]

    * output (4 -> 1): ``gain * [1, sign p_{d-1}, -sign q_{d-1}, 0]``, bias ``offset``.

    The network then computes ``gain * (x + sign * sum_i s_i W_i(x)) + offset``.

    Args:
      peaks: ``(n,)`` with ``n >= d``; only ``a_0 .. a_{d-1}`` are used (pass all ``d + 1``
        Theorem-3.1 peaks freely).
      scales: ``(d,)`` positive scales ``s_0 .. s_{d-1}``; ``d`` is the depth.
      sign: -1 (convex output) or +1 (concave output).
      gain, offset: optional scalars of an output affine head (default 1 and 0).

    Returns:
      ``[(W_in (1, 4), b_in (4,)), (M_0 (4, 4), 0), ..., (W_out (4, 1), b_out (1,))]``,
      ``d + 1`` layers (ReLU after all but the last) in ``y = x @ W + b`` form.
    """
    sign = check_sign(sign)
    scales = _check_scales(scales)
    if scales.ndim != 1:
        raise ValueError(f"scales must be 1-D (d,), got shape {scales.shape}; use jax.vmap for batches.")
    d = scales.shape[0]
    peaks = check_peaks(peaks, min_len=d)
    if peaks.ndim != 1:
        raise ValueError(f"peaks must be 1-D (n,), got shape {peaks.shape}; use jax.vmap for batches.")
    dtype = jnp.result_type(peaks.dtype, scales.dtype)
    peaks, scales = peaks.astype(dtype), scales.astype(dtype)
    a = peaks[:d]
    S = scales_to_ratios(scales)
    zero, one = jnp.zeros((), dtype), jnp.ones((), dtype)
    p = S / a  # (d,)
    q = S / (a * (1 - a))
    z = jnp.zeros((d - 1,), dtype)
    o = jnp.ones((d - 1,), dtype)
    t2_bias = -S[:-1] * peaks[1:d]
    # hidden matrices as (d-1, out, in), then transposed to (in, out)
    rows = jnp.stack(
        [
            jnp.stack([o, sign * p[:-1], -sign * q[:-1], z], -1),
            jnp.stack([z, p[:-1], -q[:-1], z], -1),
            jnp.stack([z, p[:-1], -q[:-1], t2_bias], -1),
            jnp.stack([z, z, z, S[:-1]], -1),
        ],
        axis=1,
    )
    hidden = jnp.swapaxes(rows, 1, 2)
    layers: Layers = [(jnp.array([[1.0, 1.0, 1.0, 0.0]], dtype), jnp.stack([zero, zero, -a[0], one]))]
    zeros4 = jnp.zeros((4,), dtype)
    layers += [(hidden[i], zeros4) for i in range(d - 1)]
    g = one if gain is None else jnp.asarray(gain, dtype)
    b = zero if offset is None else jnp.asarray(offset, dtype)
    w_out = g * jnp.stack([one, sign * p[-1], -sign * q[-1], zero])[:, None]
    layers.append((w_out, jnp.reshape(b, (1,))))
    return layers


def closed_form(
    x: ArrayLike,
    peaks: ArrayLike,
    scales: ArrayLike,
    sign: int = -1,
    *,
    gain: ArrayLike | None = None,
    offset: ArrayLike | None = None,
) -> Array:
    """``F_d(x) = gain * (x + sign * sum_{i<d} s_i W_i(x)) + offset`` evaluated from the tents (for x in [0, 1]).

    Independent of :func:`peaks_to_weights`: composes :func:`tent` directly.

    Args:
      x: points in [0, 1], any shape.
      peaks: ``(n,)``, ``n >= d``.
      scales: ``(d,)``.

    >>> round(float(closed_form(0.5, jnp.array([0.5, 0.5]), jnp.array([0.25]), -1)), 6)  # x - x(1-x)/... = 0.25
    0.25
    """
    sign = check_sign(sign)
    scales = _check_scales(scales)
    d = scales.shape[-1]
    peaks = check_peaks(peaks, min_len=d)
    x = jnp.asarray(x)
    flat = jnp.reshape(x, (-1,))
    w = compositions(flat, peaks, d)
    y = flat + sign * jnp.sum(scales[:, None] * w, axis=0)
    if gain is not None:
        y = jnp.asarray(gain) * y
    if offset is not None:
        y = y + jnp.asarray(offset)
    return jnp.reshape(y, x.shape)


# ----------------------------------------------------------------------------- constraints


def constrain_peaks(u: Array, c: float = DEFAULT_MARGIN) -> Array:
    """Map unconstrained ``u`` to peaks in ``[c, 1 - c]``: ``a = c + (1 - 2c) sigmoid(u)``.

    >>> float(constrain_peaks(0.0))
    0.5
    """
    if not (0.0 <= c < 0.5):
        raise ValueError(f"margin c must satisfy 0 <= c < 0.5 (got {c!r}).")
    return c + (1 - 2 * c) * jax.nn.sigmoid(u)


def unconstrain_peaks(peaks: Array, c: float = DEFAULT_MARGIN) -> Array:
    """Inverse of :func:`constrain_peaks`; peaks must lie strictly inside ``(c, 1 - c)``.

    >>> round(float(unconstrain_peaks(constrain_peaks(1.5))), 5)
    1.5
    """
    if not (0.0 <= c < 0.5):
        raise ValueError(f"margin c must satisfy 0 <= c < 0.5 (got {c!r}).")
    peaks = jnp.asarray(peaks)
    if _is_concrete(peaks):
        v = np.asarray(peaks)
        if np.isnan(v).any() or (v <= c).any() or (v >= 1 - c).any():
            raise ValueError(f"peaks must lie strictly inside (c, 1 - c) = ({c}, {1 - c}) to be unconstrained.")
    z = (peaks - c) / (1 - 2 * c)
    return jnp.log(z) - jnp.log1p(-z)


# ----------------------------------------------------------------------------- utilities


def block_diagonal(subnets: Sequence[Layers], out_weights: Sequence[float] | None = None) -> Layers:
    """Run several 1-input ReLU MLPs of equal depth side by side as one MLP.

    The input layers are concatenated, hidden weights become block-diagonal, and the
    outputs are combined as ``sum_k out_weights[k] * subnet_k(x)`` (default: all 1), e.g.
    ``out_weights = (1, -1)`` for a difference of two convex subnets (``x^3 - x``).

    Args:
      subnets: list of layer lists, each ``[(W (1, h_k), b), ..., (W (h_k', 1), b)]``.

    Returns:
      one layer list with widths ``sum_k h_k``.
    """
    if len(subnets) == 0:
        raise ValueError("subnets must contain at least one layer list.")
    depth = len(subnets[0])
    if any(len(s) != depth for s in subnets):
        raise ValueError(f"all subnets must have the same number of layers (got {[len(s) for s in subnets]}).")
    ws = [1.0] * len(subnets) if out_weights is None else list(out_weights)
    if len(ws) != len(subnets):
        raise ValueError(f"out_weights has {len(ws)} entries but there are {len(subnets)} subnets.")
    layers: Layers = []
    for k in range(depth):
        Ws = [s[k][0] for s in subnets]
        bs = [s[k][1] for s in subnets]
        if k == 0:
            W = jnp.concatenate(Ws, axis=1)
            b = jnp.concatenate(bs)
        elif k == depth - 1:
            W = jnp.concatenate([w * wk for w, wk in zip(Ws, ws, strict=True)], axis=0)
            b = sum((bk * wk for bk, wk in zip(bs, ws, strict=True)), start=jnp.zeros_like(bs[0]))
        else:
            W = jax.scipy.linalg.block_diag(*Ws)
            b = jnp.concatenate(bs)
        layers.append((W, b))
    return layers


def num_raw_params(depth: int, width: int = 4) -> int:
    """Parameter count of a 1 -> width x depth -> 1 ReLU MLP (93 for the paper's 4 x 5 net).

    >>> num_raw_params(5)
    93
    """
    depth = check_depth(depth)
    return 2 * width + (depth - 1) * (width * width + width) + width + 1
