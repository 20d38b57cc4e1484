"""Flax NNX modules of the triangular-wave reparameterization (thin wrappers over ``gmpjax.triangular``).

* :class:`TriangleNet` -- a width-4, depth-``d`` 1-D ReLU network. In ``mode="peaks"``
  its trainable parameters are the (constrained) peaks, ``log s_0`` (or free log
  scales) and an optional output gain/offset; the raw weights are rebuilt from them
  by :func:`gmpjax.triangular.peaks_to_weights` on every call, so the function has
  exactly ``2^d`` linear regions on [0, 1]. ``to_raw()`` returns a :class:`ReLUMLP`
  with the identical function whose weights are free ("raw mode"); ``mode="raw"``
  builds that plain MLP right away from random peaks ("skip pretraining").
* :class:`ReLUMLP` -- a plain ReLU MLP holding ``(kernel, bias)`` per layer, with the
  PyTorch-default ("kaiming") and randomized asymmetric ("raai") initialisations.
* :class:`TriangleDifference` -- ``F_1(x) - F_2(x)`` of two convex :class:`TriangleNet` s
  (a non-convex 1-D function such as ``x^3 - x``); ``to_raw()`` is one width-8 ReLU MLP
  with block-diagonal hidden weights.
* :class:`TriangleActivation` -- ``features`` independent width-4 subnets, one learned
  convex 1-D activation per feature (block-diagonal hidden weights), usable as an
  activation inside any Flax model.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gmpjax import triangular as tri
from gmpjax.layers.checks import check_input
from gmpjax.regions import relu_mlp

Array = jax.Array
ScaleMode = Literal["theorem31", "free"]
S0Mode = Literal["bounded", "trained", "normalised"]

#: initial logit of the ``s0="bounded"`` factor: sigmoid(5) = 0.9933 of the normalised s_0.
S0_BOUND_INIT = 5.0
PeakInit = Literal["uniform", "half"]

__all__ = [
    "ReLUMLP",
    "TriangleNet",
    "TriangleDifference",
    "TriangleActivation",
    "init_peaks",
    "INIT_METHODS",
    "init_method_net",
]


def init_peaks(
    key: Array, shape: Sequence[int], init: PeakInit = "uniform", peak_range=(0.2, 0.8), dtype=jnp.float32
) -> Array:
    """Initial peaks: ``U(peak_range)`` ("uniform", research notes' default) or all ``1/2`` ("half", Yarotsky)."""
    lo, hi = peak_range
    if not (0.0 < lo < hi < 1.0):
        raise ValueError(f"peak_range must satisfy 0 < lo < hi < 1; got {peak_range!r}.")
    if init == "uniform":
        return jax.random.uniform(key, tuple(shape), dtype, lo, hi)
    if init == "half":
        return jnp.full(tuple(shape), 0.5, dtype)
    raise ValueError(f"peak_init must be 'uniform' or 'half'; got {init!r}.")


# ----------------------------------------------------------------------------- plain MLP


def _torch_default(key, fan_in: int, fan_out: int, dtype):
    """PyTorch ``nn.Linear`` default: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    kw, kb = jax.random.split(key)
    bound = 1.0 / np.sqrt(fan_in)
    return (
        jax.random.uniform(kw, (fan_in, fan_out), dtype, -bound, bound),
        jax.random.uniform(kb, (fan_out,), dtype, -bound, bound),
    )


def _raai(key, fan_in: int, fan_out: int, dtype):
    """Randomized asymmetric initialisation (Lu, Shin, Su & Karniadakis 2020), as reconstructed here.

    For each neuron, the augmented vector ``(w, b)`` of length ``fan_in + 1`` has one
    entry, at a uniformly random position, drawn from ``Beta(2, 1)`` (positive, so
    the neuron cannot be dead for every input) and the others from
    ``N(0, 1 / (fan_in + 1))`` (He-style second-moment scale). The exact variances of
    the original paper were not available here; see docs/triangular.md.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    n = fan_in + 1
    v = jax.random.normal(k1, (fan_out, n), dtype) * jnp.sqrt(jnp.asarray(1.0 / n, dtype))
    pos = jax.random.randint(k2, (fan_out,), 0, n)
    beta = jax.random.beta(k3, 2.0, 1.0, (fan_out,), dtype)
    v = v.at[jnp.arange(fan_out), pos].set(beta)
    return v[:, :fan_in].T, v[:, fan_in]


def _check_modes(scales: str, s0: str, mode: str) -> None:
    """Validate the scale, s0 and parameter-mode options shared by TriangleNet and TriangleActivation."""
    if scales not in ("theorem31", "free"):
        raise ValueError(f"scales must be 'theorem31' or 'free'; got {scales!r}.")
    if s0 not in ("bounded", "trained", "normalised"):
        raise ValueError(f"s0 must be 'bounded', 'trained' or 'normalised'; got {s0!r}.")
    if mode not in ("peaks", "raw"):
        raise ValueError(f"mode must be 'peaks' or 'raw'; got {mode!r}.")


def _first_scale(m: Any, a: Array) -> Array:
    """s0 of a TriangleNet / TriangleActivation ``m`` with peaks ``a``, by its ``s0_mode``.

    "trained": ``exp(log_s0)``; "normalised": ``normalised_s0(a)``; "bounded":
    ``normalised_s0(a) * sigmoid(s0_logit)``.
    """
    if m.s0_mode == "trained":
        return jnp.exp(m.log_s0[...])
    s0 = tri.normalised_s0(a)
    if m.s0_mode == "bounded":
        s0 = s0 * jax.nn.sigmoid(m.s0_logit[...])
    return s0


class ReLUMLP(nnx.Module):
    """Plain ReLU MLP ``relu(... relu(x @ K_0 + b_0) ...) @ K_L + b_L`` (ReLU on all but the last layer).

    Args:
      sizes: layer sizes, e.g. ``(1, 4, 4, 4, 4, 4, 1)`` (ignored when ``layers`` is given).
      layers: optional list of ``(W (in, out), b (out,))`` to copy (e.g. from ``peaks_to_weights``).
      init: "kaiming" (PyTorch default uniform) or "raai" (randomized asymmetric, Lu et al. 2020).
      param_dtype: parameter dtype.
      rngs: random streams (needed unless ``layers`` is given).

    >>> from flax import nnx
    >>> net = ReLUMLP((1, 4, 4, 1), rngs=nnx.Rngs(0))
    >>> net(jnp.zeros((3, 1))).shape, [w.shape for w, _ in net.layer_arrays()]
    ((3, 1), [(1, 4), (4, 4), (4, 1)])
    """

    def __init__(
        self,
        sizes: Sequence[int] | None = None,
        *,
        layers=None,
        init: str = "kaiming",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        if layers is None:
            if sizes is None or len(sizes) < 2 or any(not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
                raise ValueError(f"sizes must be a sequence of >= 2 positive ints, e.g. (1, 4, 4, 1); got {sizes!r}.")
            if rngs is None:
                raise ValueError("ReLUMLP needs rngs=nnx.Rngs(seed) to initialise random weights.")
            makers = {"kaiming": _torch_default, "raai": _raai}
            if init not in makers:
                raise ValueError(f"init must be one of {sorted(makers)}; got {init!r}.")
            layers = [makers[init](rngs.params(), a, b, param_dtype) for a, b in itertools.pairwise(sizes)]
        self.kernels = nnx.List([nnx.Param(jnp.asarray(w)) for w, _ in layers])
        self.biases = nnx.List([nnx.Param(jnp.asarray(b)) for _, b in layers])
        self.in_features = int(layers[0][0].shape[0])

    def layer_arrays(self) -> list[tuple[Array, Array]]:
        """The ``(W, b)`` list (the format of ``gmpjax.regions``)."""
        return [(k[...], b[...]) for k, b in zip(self.kernels, self.biases, strict=True)]

    def __call__(self, x: Array) -> Array:
        x = check_input(x, self.in_features, "ReLUMLP")
        return relu_mlp(self.layer_arrays(), x)


# ----------------------------------------------------------------------------- TriangleNet


class TriangleNet(nnx.Module):
    """Width-4, depth-``d`` ReLU network parameterised by triangle peaks (Milkert et al. 2025).

    Args:
      depth: number of hidden ReLU layers ``d`` (2^d linear regions on [0, 1]).
      sign: -1 for convex targets (``x - G_d``), +1 for concave ones (``x + G_d``).
      scales: "theorem31" (``s_{i+1} = s_i (1 - a_{i+1}) a_{i+2}``, the paper's regularisation)
        or "free" (trainable ``log s_i``; the "no regularisation" ablation).
      s0: how ``s_0`` is set (with ``scales="theorem31"``): "bounded" (default;
        ``s_0 = s_0^norm(a) * sigmoid(v)`` with a trainable ``v`` initialised to 5, so
        ``G_d'(0+) <= 1`` always holds and, for ``sign=-1``, no sum-neuron ReLU can clip:
        the raw net equals the closed form and has exactly ``2^d`` regions throughout
        pretraining), "trained" (free ``log s_0`` initialised by the normalisation; may clip)
        or "normalised" (``G_d'(0+) = 1`` recomputed from the peaks every call).
      output_affine: add a trainable output gain ``g`` (init 1) and offset (init 0).
      margin: peaks are ``c + (1 - 2c) sigmoid(u)`` in ``[c, 1 - c]``.
      peak_init: "uniform" (``U(peak_range)``) or "half".
      peaks: explicit initial peaks ``(d + 1,)`` inside ``(margin, 1 - margin)`` (overrides ``peak_init``).
      mode: "peaks" (pretraining parameterisation) or "raw" (a plain :class:`ReLUMLP` built
        from the initial peaks and trained without constraint: "skip pretraining").
      param_dtype: float32 or float64.
      rngs: random streams.

    Inputs have shape ``(..., 1)``; outputs ``(..., 1)``.

    >>> from flax import nnx
    >>> net = TriangleNet(3, rngs=nnx.Rngs(0))
    >>> from gmpjax.regions import count_linear_regions
    >>> count_linear_regions(net.layer_arrays(), min_width=1e-6)  # float32: no slivers of rounding
    8
    """

    def __init__(
        self,
        depth: int,
        *,
        sign: int = -1,
        scales: ScaleMode = "theorem31",
        s0: S0Mode = "bounded",
        output_affine: bool = False,
        margin: float = tri.DEFAULT_MARGIN,
        peak_init: PeakInit = "uniform",
        peak_range=(0.2, 0.8),
        peaks: Array | None = None,
        mode: str = "peaks",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        self.depth = tri.check_depth(depth)
        self.sign = tri.check_sign(sign)
        _check_modes(scales, s0, mode)
        self.scale_mode, self.s0_mode, self.margin, self.mode = scales, s0, float(margin), mode
        self.output_affine = bool(output_affine)
        if peaks is None:
            if rngs is None:
                raise ValueError("TriangleNet needs rngs=nnx.Rngs(seed) for random peaks (or pass peaks=...).")
            a = init_peaks(rngs.params(), (self.depth + 1,), peak_init, peak_range, param_dtype)
        else:
            a = tri.check_peaks(jnp.asarray(peaks, param_dtype), "peaks")
            if a.shape != (self.depth + 1,):
                raise ValueError(f"peaks must have shape (depth + 1,) = ({self.depth + 1},); got {a.shape}.")
        s = tri.theorem31_scales(a, tri.normalised_s0(a))
        self.peak_logits = nnx.Param(tri.unconstrain_peaks(a, self.margin))
        if scales == "free":
            self.log_scales = nnx.Param(jnp.log(s))
        elif s0 == "trained":
            self.log_s0 = nnx.Param(jnp.log(s[0]))
        elif s0 == "bounded":
            self.s0_logit = nnx.Param(jnp.full((), S0_BOUND_INIT, param_dtype))
        if self.output_affine:
            self.gain = nnx.Param(jnp.ones((), param_dtype))
            self.offset = nnx.Param(jnp.zeros((), param_dtype))
        if mode == "raw":
            self.raw = ReLUMLP(layers=self._peak_layers())
            del self.peak_logits
            for name in ("log_scales", "log_s0", "s0_logit", "gain", "offset"):
                if hasattr(self, name):
                    delattr(self, name)

    # -- peak parameterisation --------------------------------------------------------------
    def peaks(self) -> Array:
        """Current peaks ``(d + 1,)`` in ``[margin, 1 - margin]``."""
        self._require_peaks("peaks")
        return tri.constrain_peaks(self.peak_logits[...], self.margin)

    def scales(self) -> Array:
        """Current scales ``(d,)``."""
        self._require_peaks("scales")
        a = self.peaks()
        if self.scale_mode == "free":
            return jnp.exp(self.log_scales[...])
        s0 = self._s0(a)
        return tri.theorem31_scales(a, s0)

    _s0 = _first_scale

    def _require_peaks(self, what: str):
        if self.mode != "peaks":
            raise ValueError(f"{what}() is only defined in mode='peaks'; this TriangleNet holds raw weights.")

    def _peak_layers(self):
        a = tri.constrain_peaks(self.peak_logits[...], self.margin)
        if self.scale_mode == "free":
            s = jnp.exp(self.log_scales[...])
        else:
            s0 = self._s0(a)
            s = tri.theorem31_scales(a, s0)
        gain = self.gain[...] if self.output_affine else None
        offset = self.offset[...] if self.output_affine else None
        return tri.peaks_to_weights(a, s, self.sign, gain=gain, offset=offset)

    def layer_arrays(self) -> list[tuple[Array, Array]]:
        """The current ``(W, b)`` list of the network (built from the peaks in mode "peaks")."""
        return self._peak_layers() if self.mode == "peaks" else self.raw.layer_arrays()

    def closed_form(self, x: Array) -> Array:
        """``gain * (x + sign * sum_i s_i W_i(x)) + offset`` from the tents (x in [0, 1], shape ``(n,)``)."""
        self._require_peaks("closed_form")
        g = self.gain[...] if self.output_affine else None
        o = self.offset[...] if self.output_affine else None
        return tri.closed_form(x, self.peaks(), self.scales(), self.sign, gain=g, offset=o)

    def to_raw(self) -> ReLUMLP:
        """A plain :class:`ReLUMLP` computing the identical function, with free (unconstrained) weights."""
        if self.mode == "raw":
            return ReLUMLP(layers=self.raw.layer_arrays())
        return ReLUMLP(layers=self._peak_layers())

    def __call__(self, x: Array) -> Array:
        x = check_input(x, 1, "TriangleNet")
        return relu_mlp(self.layer_arrays(), x)


INIT_METHODS: tuple[str, ...] = ("kaiming", "raai", "skip", "noreg", "thm31")
"""The rows of Milkert et al. (2025), Table 1, as :func:`init_method_net` builds them."""


def init_method_net(
    method: str,
    depth: int,
    *,
    width: int = 4,
    sign: int = -1,
    output_affine: bool = False,
    s0: S0Mode = "bounded",
    param_dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
    **peaks: Any,
) -> nnx.Module:
    """The network of one row of Table 1 (Milkert et al. 2025) for a 1-D target on ``[0, 1]``.

    ``kaiming`` / ``raai``: a :class:`ReLUMLP` ``1 -> width x depth -> 1`` with that initialisation; ``skip``:
    a :class:`TriangleNet` (``sign``, ``output_affine``) built from random peaks and trained raw ("skip
    pretraining", ``mode="raw"``); ``noreg`` / ``thm31``: a :class:`TriangleNet` of peaks with free scales /
    Theorem 3.1's scales (``s0``), to pretrain and then switch to its raw weights. ``peaks``: the
    :class:`TriangleNet` keywords ``margin``, ``peak_range``, ... (ignored by the ReLU rows).

    >>> [type(init_method_net(m, 3, rngs=nnx.Rngs(0))).__name__ for m in INIT_METHODS]
    ['ReLUMLP', 'ReLUMLP', 'TriangleNet', 'TriangleNet', 'TriangleNet']
    """
    if method in ("kaiming", "raai"):
        return ReLUMLP((1,) + (width,) * depth + (1,), init=method, param_dtype=param_dtype, rngs=rngs)
    net = dict(sign=sign, output_affine=output_affine, param_dtype=param_dtype, rngs=rngs, **peaks)
    if method == "skip":
        return TriangleNet(depth, mode="raw", **net)
    if method in ("noreg", "thm31"):
        return TriangleNet(depth, scales="free" if method == "noreg" else "theorem31", s0=s0, **net)
    raise ValueError(f"init_method_net: unknown method {method!r}; choose from {' '.join(INIT_METHODS)}.")


class TriangleDifference(nnx.Module):
    """Difference of two convex triangle subnets, for non-convex 1-D targets such as ``x^3 - x``.

    ``y = F_1(x) - F_2(x)``, where each ``F_k(x) = g_k (x - sum_i s_{k,i} W_{k,i}(x)) + o_k`` is a
    :class:`TriangleNet` with ``sign=-1`` (convex on [0, 1]) and its own output gain ``g_k`` and
    offset ``o_k`` (both trainable, so the difference is not tied to ``F(0) = 0``, ``F(1) = 1``).
    Both subnets are trained in peak mode, which keeps each one at exactly ``2^d`` regions.
    :meth:`to_raw` returns one 1 -> 8 x d -> 1 :class:`ReLUMLP` with block-diagonal 4x4 hidden
    blocks and output weights ``(+1, -1)`` (``gmpjax.triangular.block_diagonal``) that computes
    the identical function.

    Args:
      depth: depth ``d`` of each subnet.
      param_dtype: parameter dtype.
      rngs: random streams (the first subnet draws its peaks first).
      **kwargs: the other keywords of :class:`TriangleNet` (``scales``, ``s0``, ``margin``,
        ``peak_init``, ``peak_range``), shared by both subnets.

    Inputs have shape ``(..., 1)``; outputs ``(..., 1)``.

    >>> from flax import nnx
    >>> net = TriangleDifference(3, rngs=nnx.Rngs(0))
    >>> x = jnp.linspace(0, 1, 5)[:, None]
    >>> net(x).shape, [w.shape for w, _ in net.to_raw().layer_arrays()][:2]
    ((5, 1), [(1, 8), (8, 8)])
    """

    def __init__(self, depth: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs, **kwargs: Any):
        for bad in ("sign", "output_affine", "mode"):
            if bad in kwargs:
                raise ValueError(f"TriangleDifference fixes {bad!r} (two convex subnets with gain/offset); drop it.")
        self.f1 = TriangleNet(depth, sign=-1, output_affine=True, param_dtype=param_dtype, rngs=rngs, **kwargs)
        self.f2 = TriangleNet(depth, sign=-1, output_affine=True, param_dtype=param_dtype, rngs=rngs, **kwargs)

    def layer_arrays(self) -> list[tuple[Array, Array]]:
        """The ``(W, b)`` list of the equivalent width-8 MLP (the format of ``gmpjax.regions``)."""
        return tri.block_diagonal([self.f1.layer_arrays(), self.f2.layer_arrays()], (1.0, -1.0))

    def to_raw(self) -> ReLUMLP:
        """A plain width-8 :class:`ReLUMLP` computing the identical function, with free weights."""
        return ReLUMLP(layers=self.layer_arrays())

    def __call__(self, x: Array) -> Array:
        return self.f1(x) - self.f2(x)


# ----------------------------------------------------------------------------- activation


def _per_feature_matmul(h: Array, W: Array) -> Array:
    """``out[..., f, o] = sum_i h[..., f, i] W[f, i, o]`` as explicit multiply-adds (faster than a batched dot
    for 4x4 blocks on CPU)."""
    out = h[..., 0:1] * W[:, 0]
    for i in range(1, W.shape[-2]):
        out = out + h[..., i : i + 1] * W[:, i]
    return out


def _batched_forward(layers, x: Array) -> Array:
    """``features`` independent 1-D subnets; ``layers[k] = (W (F, in, out), b (F, out))``, x ``(..., F)``."""
    W0, b0 = layers[0]
    h = jax.nn.relu(x[..., None] * W0[:, 0, :] + b0)  # (..., F, 4)
    for W, b in layers[1:-1]:
        h = jax.nn.relu(_per_feature_matmul(h, W) + b)
    W, b = layers[-1]
    return _per_feature_matmul(h, W)[..., 0] + b[:, 0]


class TriangleActivation(nnx.Module):
    """``features`` independent triangle subnets: one learned convex (sign=-1) 1-D activation per feature.

    Equivalent to a width-``4 * features`` ReLU MLP with block-diagonal 4x4 hidden weights
    (see :meth:`block_diagonal_layers`). Put it between two linear layers instead of a ReLU.
    Each subnet is 0 for x < 0, the learned ``2^d``-piece function on [0, 1] and linear
    beyond 1.

    Args:
      features: number of features (neurons) it acts on, input shape ``(..., features)``.
      depth: depth ``d`` of each subnet.
      sign, scales, s0, margin, peak_init, peak_range: as in :class:`TriangleNet`.
      mode: "peaks" (weights built from the peaks) or "raw" (free per-feature weights).
      param_dtype: parameter dtype.
      rngs: random streams.

    >>> from flax import nnx
    >>> act = TriangleActivation(6, 3, rngs=nnx.Rngs(0))
    >>> act(jnp.ones((2, 6))).shape
    (2, 6)
    """

    def __init__(
        self,
        features: int,
        depth: int,
        *,
        sign: int = -1,
        scales: ScaleMode = "theorem31",
        s0: S0Mode = "bounded",
        margin: float = tri.DEFAULT_MARGIN,
        peak_init: PeakInit = "uniform",
        peak_range=(0.2, 0.8),
        mode: str = "peaks",
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not isinstance(features, (int, np.integer)) or isinstance(features, bool) or features < 1:
            raise ValueError(f"features must be a positive int; got {features!r}.")
        self.features = int(features)
        self.depth = tri.check_depth(depth)
        self.sign = tri.check_sign(sign)
        _check_modes(scales, s0, mode)
        self.scale_mode, self.s0_mode, self.margin, self.mode = scales, s0, float(margin), mode
        a = init_peaks(rngs.params(), (self.features, self.depth + 1), peak_init, peak_range, param_dtype)
        s = tri.theorem31_scales(a, tri.normalised_s0(a))
        self.peak_logits = nnx.Param(tri.unconstrain_peaks(a, self.margin))
        if scales == "free":
            self.log_scales = nnx.Param(jnp.log(s))
        elif s0 == "trained":
            self.log_s0 = nnx.Param(jnp.log(s[:, 0]))
        elif s0 == "bounded":
            self.s0_logit = nnx.Param(jnp.full((self.features,), S0_BOUND_INIT, param_dtype))
        if mode == "raw":
            stacked = self._peak_layers()
            self.kernels = nnx.List([nnx.Param(W) for W, _ in stacked])
            self.biases = nnx.List([nnx.Param(b) for _, b in stacked])
            del self.peak_logits
            for name in ("log_scales", "log_s0", "s0_logit"):
                if hasattr(self, name):
                    delattr(self, name)

    _s0 = _first_scale

    def peaks(self) -> Array:
        """``(features, d + 1)`` peaks."""
        return tri.constrain_peaks(self.peak_logits[...], self.margin)

    def _peak_layers(self):
        a = tri.constrain_peaks(self.peak_logits[...], self.margin)
        if self.scale_mode == "free":
            s = jnp.exp(self.log_scales[...])
        else:
            s0 = self._s0(a)
            s = tri.theorem31_scales(a, s0)
        layers = jax.vmap(lambda ai, si: tri.peaks_to_weights(ai, si, self.sign))(a, s)
        return list(layers)

    def stacked_layers(self) -> list[tuple[Array, Array]]:
        """Per-feature layers ``[(W (F, in, out), b (F, out)), ...]``."""
        if self.mode == "peaks":
            return self._peak_layers()
        return [(k[...], b[...]) for k, b in zip(self.kernels, self.biases, strict=True)]

    def subnet_layers(self, f: int) -> list[tuple[Array, Array]]:
        """The ``(W, b)`` list of feature ``f``'s subnet (a 1 -> 4 x d -> 1 MLP)."""
        return [(W[f], b[f]) for W, b in self.stacked_layers()]

    def block_diagonal_layers(self) -> list[tuple[Array, Array]]:
        """One ``features -> 4F x d -> features`` MLP with block-diagonal weights computing the same map."""
        stacked = self.stacked_layers()
        F = self.features
        eye = jnp.eye(F, dtype=stacked[0][0].dtype)
        W0, b0 = stacked[0]
        out = [(jnp.einsum("fg,fo->fgo", eye, W0[:, 0, :]).reshape(F, 4 * F), b0.reshape(-1))]
        for W, b in stacked[1:-1]:
            out.append((jax.scipy.linalg.block_diag(*W), b.reshape(-1)))
        W, b = stacked[-1]
        out.append((jnp.einsum("fo,fg->fog", W[:, :, 0], eye).reshape(4 * F, F), b[:, 0]))
        return out

    def to_raw(self) -> TriangleActivation:
        """A copy in mode "raw" (free per-feature weights) computing the identical function."""
        new = nnx.clone(self)
        if self.mode == "raw":
            return new
        stacked = self._peak_layers()
        new.mode = "raw"
        new.kernels = nnx.List([nnx.Param(W) for W, _ in stacked])
        new.biases = nnx.List([nnx.Param(b) for _, b in stacked])
        del new.peak_logits
        for name in ("log_scales", "log_s0", "s0_logit"):
            if hasattr(new, name):
                delattr(new, name)
        return new

    def __call__(self, x: Array) -> Array:
        x = check_input(x, self.features, "TriangleActivation")
        return _batched_forward(self.stacked_layers(), x)
