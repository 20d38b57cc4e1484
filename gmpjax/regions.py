"""Exact linear-region counting for ReLU MLPs with one input.

A ReLU MLP ``R -> R^m`` given as a list of ``(W, b)`` (``y = relu(x @ W + b)`` on every
layer but the last) is piecewise linear in its scalar input. Its breakpoints are
found exactly by *breakpoint propagation* (no grid sampling): going layer by layer,
every pre-activation is linear between the current knots, so each sign change of a
neuron between two consecutive knots is one new knot ``x* = x_l + (x_r - x_l) v_l / (v_l - v_r)``.
After the last hidden layer the function is linear between consecutive knots; the
slope on each interval is the product of the weight matrices masked by the
activation pattern at its midpoint (no division by the interval width, so tiny
pieces keep an accurate slope). Adjacent intervals with equal slope are merged.

Works for any 1-input MLP (triangle nets, Kaiming/RAAI baselines, GmP nets
converted to ``(W, b)``). Computation is float64 NumPy.

>>> import numpy as np
>>> hat = [(np.array([[1.0, 1.0]]), np.array([0.0, -0.5])), (np.array([[2.0], [-4.0]]), np.array([0.0]))]
>>> count_linear_regions(hat, (0.0, 1.0))    # 2x on [0, .5], 2 - 2x on [.5, 1]
2
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.typing import ArrayLike

from gmpjax._optional import require

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Array = jax.Array
LayerList = Sequence[tuple[Any, Any]]
Interval = tuple[float, float]

__all__ = [
    "relu_mlp",
    "as_layers",
    "Pieces",
    "linear_pieces",
    "count_linear_regions",
    "count_activation_regions",
    "count_linear_regions_batched",
    "plot_linear_regions",
]


def relu_mlp(layers: LayerList, x: Array) -> Array:
    """Forward pass ``relu(... relu(x @ W_0 + b_0) ...) @ W_L + b_L`` (ReLU on all but the last layer).

    Args:
      layers: list of ``(W (in, out), b (out,))``.
      x: ``(..., in)``.

    Returns:
      ``(..., out)``.
    """
    h = x
    for k, (W, b) in enumerate(layers):
        h = h @ W + b
        if k < len(layers) - 1:
            h = jax.nn.relu(h)
    return h


def as_layers(params: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Normalise ``params`` to a list of float64 NumPy ``(W (in, out), b (out,))``.

    Accepts a list/tuple of ``(W, b)`` pairs or any object with a ``layer_arrays()``
    method (e.g. ``gmpjax.layers.TriangleNet`` and ``ReLUMLP``).
    """
    if hasattr(params, "layer_arrays"):
        params = params.layer_arrays()
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        raise TypeError(
            "params must be a non-empty list of (W, b) pairs with W of shape (in, out), "
            f"or a module with layer_arrays(); got {type(params).__name__}."
        )
    out = []
    prev = None
    for k, pair in enumerate(params):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError(f"params[{k}] must be a (W, b) pair; got {type(pair).__name__}.")
        W = np.asarray(pair[0], dtype=np.float64)
        b = np.asarray(pair[1], dtype=np.float64)
        if W.ndim != 2 or b.shape != (W.shape[1],):
            raise ValueError(f"params[{k}]: W must be (in, out) and b (out,); got W {W.shape}, b {b.shape}.")
        if prev is not None and W.shape[0] != prev:
            raise ValueError(f"params[{k}]: W has {W.shape[0]} inputs but the previous layer has {prev} outputs.")
        prev = W.shape[1]
        out.append((W, b))
    if out[0][0].shape[0] != 1:
        raise ValueError(
            f"linear regions are counted for 1-input networks; the first W has shape {out[0][0].shape} (need (1, h))."
        )
    return out


def _check_interval(interval: Any) -> Interval:
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (lo, hi) of numbers; got {interval!r}.") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"interval must satisfy lo < hi with finite ends; got {(lo, hi)}.")
    return lo, hi


def _forward_np(layers: LayerList, x: np.ndarray, upto: int) -> np.ndarray:
    """Pre-activations of layer ``upto`` at points ``x`` (n,); ``upto = len(layers) - 1`` is the output."""
    h = x[:, None]
    for k in range(upto + 1):
        W, b = layers[k]
        h = h @ W + b
        if k < upto:
            h = np.maximum(h, 0.0)
    return h


@dataclass(frozen=True)
class Pieces:
    """Linear pieces of a 1-input ReLU MLP on an interval.

    Attributes:
      knots: ``(n + 1,)`` sorted piece boundaries (first/last = interval ends).
      values: ``(n + 1, m)`` network outputs at the knots.
      slopes: ``(n, m)`` slope of each piece.
      raw_knots: ``(k + 1,)`` every breakpoint candidate found by propagation (activation-pattern changes).
      patterns: ``(k, H)`` boolean activation pattern (all hidden neurons) on each raw interval.
    """

    knots: np.ndarray
    values: np.ndarray
    slopes: np.ndarray
    raw_knots: np.ndarray
    patterns: np.ndarray

    @property
    def count(self) -> int:
        return int(self.slopes.shape[0])


def linear_pieces(
    params: Any,
    interval: Interval = (0.0, 1.0),
    *,
    rtol: float = 1e-10,
    merge_gap: float = 1e-13,
    min_width: float = 0.0,
) -> Pieces:
    """Exact breakpoints and maximal linear pieces of a 1-input ReLU MLP on ``interval``.

    Args:
      params: list of ``(W, b)`` or a module with ``layer_arrays()``.
      interval: ``(lo, hi)``.
      rtol: two neighbouring intervals are one piece when their slopes differ by at most
        ``rtol`` times the absolute path sum ``|W_L|^T D ... D |W_0|`` (the scale of the
        float64 rounding error of the slope); the default 1e-10 is ~1e5 ulps.
      merge_gap: knots closer than ``merge_gap * (hi - lo)`` are the same point.
      min_width: if > 0, pieces narrower than ``min_width * (hi - lo)`` are collapsed into a
        single breakpoint (use ~1e-6 to ignore the ~1e-8-wide artefacts that float32 weights
        create where a neuron should touch zero exactly); 0 (default) counts exactly.

    Returns:
      :class:`Pieces`.
    """
    layers = as_layers(params)
    lo, hi = _check_interval(interval)
    gap = merge_gap * (hi - lo)
    xs = np.array([lo, hi])
    for k in range(len(layers) - 1):
        pre = _forward_np(layers, xs, k)
        v0, v1 = pre[:-1], pre[1:]
        cross = ((v0 < 0) & (v1 > 0)) | ((v0 > 0) & (v1 < 0))
        if cross.any():
            i, _ = np.nonzero(cross)
            t = v0[cross] / (v0[cross] - v1[cross])
            new = xs[i] + t * (xs[i + 1] - xs[i])
            xs = np.sort(np.concatenate([xs, new]))
            keep = np.concatenate([[True], np.diff(xs) > gap])
            keep[-1] = True
            xs = xs[keep]
            # the interval ends are exact; drop a merged interior point next to ``hi``
            if xs.shape[0] > 2 and xs[-1] - xs[-2] <= gap:
                xs = np.delete(xs, -2)
    # slopes per raw interval from the activation pattern at its midpoint
    mids = 0.5 * (xs[:-1] + xs[1:])
    n = mids.shape[0]
    h = mids[:, None]
    J = np.ones((n, 1, 1))  # d h / d x, shape (n, 1, width)
    A = np.ones((n, 1, 1))  # absolute path sums
    pats = []
    for k, (W, b) in enumerate(layers):
        h = h @ W + b
        J = J @ W
        A = A @ np.abs(W)
        if k < len(layers) - 1:
            on = h > 0
            pats.append(on)
            h = np.where(on, h, 0.0)
            J = J * on[:, None, :]
            A = A * on[:, None, :]
    slopes_raw = J[:, 0, :]
    scale = A[:, 0, :]
    patterns = np.concatenate(pats, axis=1) if pats else np.zeros((n, 0), bool)
    # merge neighbouring intervals with equal slopes
    diff = np.abs(slopes_raw[1:] - slopes_raw[:-1])
    tol = rtol * np.maximum(np.maximum(scale[1:], scale[:-1]), np.finfo(np.float64).tiny)
    is_kink = (diff > tol).any(axis=1)
    idx = np.concatenate([[0], np.nonzero(is_kink)[0] + 1, [n]])
    knots = xs[idx]
    slopes = slopes_raw[idx[:-1]]
    if min_width > 0:
        knots, slopes = _absorb_narrow(knots, slopes, scale[idx[:-1]], min_width * (hi - lo), rtol)
    values = _forward_np(layers, knots, len(layers) - 1)
    return Pieces(knots=knots, values=values, slopes=slopes, raw_knots=xs, patterns=patterns)


def _absorb_narrow(
    knots: np.ndarray, slopes: np.ndarray, scale: np.ndarray, width: float, rtol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Collapse every run of pieces narrower than ``width`` into one knot (its midpoint) and re-merge equal slopes."""
    w = np.diff(knots)
    wide = np.nonzero(w >= width)[0]
    if wide.size == 0:  # everything is narrow: one piece
        return knots[[0, -1]], slopes[:1]
    new_knots = [knots[0]]
    new_slopes = [slopes[wide[0]]]
    new_scale = [scale[wide[0]]]
    for prev, j in itertools.pairwise(wide):
        left_end, right_start = knots[prev + 1], knots[j]
        same = np.all(np.abs(slopes[j] - new_slopes[-1]) <= rtol * np.maximum(scale[j], new_scale[-1]))
        if same:
            continue
        new_knots.append(0.5 * (left_end + right_start))
        new_slopes.append(slopes[j])
        new_scale.append(scale[j])
    new_knots.append(knots[-1])
    return np.asarray(new_knots), np.asarray(new_slopes)


def count_linear_regions(
    params: Any, interval: Interval = (0.0, 1.0), *, rtol: float = 1e-10, min_width: float = 0.0
) -> int:
    """Number of maximal linear pieces of a 1-input ReLU MLP on ``interval`` (exact breakpoint propagation).

    Args:
      params: list of ``(W (in, out), b (out,))`` with ``in = 1`` for the first layer, or a
        module with ``layer_arrays()`` (``TriangleNet``, ``ReLUMLP``).
      interval: ``(lo, hi)``.
      rtol: relative slope tolerance for merging (see :func:`linear_pieces`).
      min_width: collapse pieces narrower than ``min_width * (hi - lo)`` (see :func:`linear_pieces`).

    >>> import numpy as np
    >>> relu_id = [(np.array([[1.0]]), np.array([0.0])), (np.array([[1.0]]), np.array([0.0]))]
    >>> count_linear_regions(relu_id, (-1, 1)), count_linear_regions(relu_id, (0, 1))
    (2, 1)
    """
    return linear_pieces(params, interval, rtol=rtol, min_width=min_width).count


def count_activation_regions(params: Any, interval: Interval = (0.0, 1.0)) -> int:
    """Number of maximal intervals with a constant activation pattern (>= the number of linear pieces)."""
    p = linear_pieces(params, interval)
    pats = p.patterns
    if pats.shape[0] == 0:
        return 0
    changes = (pats[1:] != pats[:-1]).any(axis=1)
    return int(1 + changes.sum())


def count_linear_regions_batched(
    stacked: Any, interval: Interval = (0.0, 1.0), *, rtol: float = 1e-10, min_width: float = 0.0
) -> np.ndarray:
    """Region counts of replicas whose layer arrays carry a leading replica axis ``R``.

    Args:
      stacked: list of ``(W (R, in, out), b (R, out))``.

    Returns:
      ``(R,)`` int array.
    """
    if not isinstance(stacked, (list, tuple)) or len(stacked) == 0:
        raise TypeError("stacked must be a non-empty list of (W (R, in, out), b (R, out)) pairs.")
    Ws = [np.asarray(W, np.float64) for W, _ in stacked]
    bs = [np.asarray(b, np.float64) for _, b in stacked]
    if Ws[0].ndim != 3:
        raise ValueError(f"stacked W must have shape (R, in, out); got {Ws[0].shape}.")
    R = Ws[0].shape[0]
    return np.array(
        [
            count_linear_regions(
                [(W[r], b[r]) for W, b in zip(Ws, bs, strict=True)], interval, rtol=rtol, min_width=min_width
            )
            for r in range(R)
        ]
    )


def plot_linear_regions(
    params: Any,
    interval: Interval = (0.0, 1.0),
    *,
    ax: Axes | None = None,
    target: Callable[[np.ndarray], ArrayLike] | None = None,
    output: int = 0,
    title: str | None = None,
    shade: bool = True,
) -> Axes:
    """Plot the network on ``interval`` with its linear pieces shaded alternately and breakpoints marked.

    Args:
      params: list of ``(W, b)`` or a module with ``layer_arrays()``.
      interval: ``(lo, hi)``.
      ax: matplotlib Axes (a new figure when None).
      target: optional callable ``f(x)`` drawn dashed for comparison.
      output: which output unit to draw.
      title: axes title (default: the region count).

    Returns:
      the Axes.
    """
    require("matplotlib", "experiments", "the region plot")
    import matplotlib.pyplot as plt

    p = linear_pieces(params, interval)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    if shade:
        for j in range(p.count):
            if j % 2 == 0:
                ax.axvspan(p.knots[j], p.knots[j + 1], color="0.9", lw=0)
    ax.plot(p.knots, p.values[:, output], "-", color="C0", lw=1.2, label="network")
    if p.count < 2000:
        ax.plot(p.knots[1:-1], p.values[1:-1, output], ".", color="C3", ms=3, label="breakpoints")
    if target is not None:
        xs = np.linspace(*_check_interval(interval), 1001)
        ax.plot(xs, np.asarray(target(xs)), "--", color="k", lw=0.8, label="target")
    ax.set_title(title if title is not None else f"{p.count} linear regions")
    ax.set_xlabel("x")
    ax.legend(loc="best", fontsize=7)
    return ax
