"""Flax NNX modules for Geometric Parameterization (GmP): thin wrappers over ``gmpjax.hyperspherical``.

A GmP unit (Chen & Ge 2024, Eq. 13) computes ``r * act(u(theta) . x + lambda)``:
the direction ``u(theta)`` of the characteristic activation boundary lives on the
unit sphere, ``offset`` (lambda) is its signed distance from the origin and
``radius`` (r) scales the activation.

``GmPDense`` and ``GmPConv`` take the keyword arguments of ``nnx.Linear`` and
``nnx.Conv`` wherever they mean the same thing (``dtype``, ``param_dtype``,
``precision``, ``dot_general`` / ``conv_general_dilated``, ``promote_dtype``,
``preferred_element_type``, ``use_bias``; ``docs/layers.md`` has the side-by-side
table), plus per-parameter initializers and metadata (``theta_init``,
``theta_metadata``, ...).

Mixed-precision policy (all GmP layers):

* ``theta``, ``radius`` and ``offset`` are stored in ``promote_types(param_dtype, float32)``:
  a ``param_dtype`` below float32 (bfloat16, float16) keeps float32 copies of them, because
  angles are O(1) and r is about 1, where bfloat16's spacing (2**-7 relative) swallows every
  optimizer step (a bf16-stored layer trained 20 adam steps at lr 1e-3 moved 0.4 % of its angles
  and none of its radii). A UserWarning says so once; ``param_dtype`` still sets the compute
  dtype when ``dtype=None`` (as in ``nnx.Linear``) and the dtype of ``to_linear``'s layer;
* ``u(theta)`` is computed in ``promote_types(param_dtype, float32)`` -- never
  below float32, so bf16 angles still give ``| ||u|| - 1 | ~ 1e-7`` --
  and cast to the compute dtype only for the matmul / convolution;
* the compute dtype follows ``nnx.Linear``: ``dtype=None`` promotes the input
  with the parameter dtype, ``dtype=jnp.bfloat16`` casts input, ``u`` and
  ``offset`` to bf16; ``radius`` is applied in the output dtype, so the output
  has dtype ``dtype`` (or the promoted one, or ``preferred_element_type``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from gmpjax import hyperspherical as hs
from gmpjax.layers.checks import (
    _EMPTY,
    Activation,
    Metadata,
    _check_callable,
    _check_dtype,
    _check_features,
    _check_impl,
    _check_metadata,
    _check_out_sharding,
    _concrete,
    _is_homogeneous,
    _reject_dropped,
    _resolve_use_offset,
    check_input,
    expose_signature,
    resolve_activation,
)
from gmpjax.layers.gmp_params import (
    Initializer,
    _check_not_collapsed,
    _constant_init,
    _init_gmp,
    _raw_shape,
    _split_standard,
    _storage_dtype,
    _unit_dtype,
    gmp_metadata_of,
    standard_metadata_of,
)
from gmpjax.layers.variables import Angle, Offset, Radius

Array = jax.Array
Init = Literal["uniform", "official"]

__all__ = ["GmPDense", "angle_layers", "precomputed_units"]

_INITS = ("uniform", "official")


# ---------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------


#: layer id -> u(theta) fed by ``precomputed_units`` (a context variable: safe across threads and nesting).
_FED_UNITS: contextvars.ContextVar[dict[int, Array] | None] = contextvars.ContextVar("gmpjax_fed_units", default=None)


def angle_layers(model: nnx.Module) -> list[nnx.Module]:
    """The GmP layers of ``model`` whose direction comes from angles (``layer.unit()`` computes ``u(theta)``).

    >>> from flax import nnx
    >>> model = nnx.Sequential(GmPDense(3, 4, rngs=nnx.Rngs(0)), GmPDense(4, 2, rngs=nnx.Rngs(1)))
    >>> len(angle_layers(model))
    2
    """
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, _GmPBase) and m.theta is not None]


@contextlib.contextmanager
def precomputed_units(layers: Sequence[nnx.Module], units: Sequence[Array]) -> Iterator[None]:
    """Within the block, ``layer.unit()`` of each of ``layers`` returns the matching array of ``units``.

    The hook for computing ``u(theta)`` once and reusing it, e.g. over the microbatches of one step
    (the train step of ``train.engine`` differentiates ``[layer.unit() for layer in angle_layers(model)]`` once and
    feeds the result to every microbatch). Nothing is stored on the layers.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = GmPDense(3, 2, rngs=nnx.Rngs(0))
    >>> u = jnp.eye(2, 3)
    >>> with precomputed_units([layer], [u]):
    ...     bool((layer.unit() == u).all())
    True
    >>> bool((layer.unit() == u).all())
    False
    """
    layers, units = list(layers), list(units)
    if len(layers) != len(units):
        raise ValueError(f"precomputed_units: {len(layers)} layers but {len(units)} unit arrays; pass one per layer.")
    for layer, u in zip(layers, units, strict=True):
        if not isinstance(layer, _GmPBase):
            raise TypeError(f"precomputed_units: expected GmP layers (see angle_layers), got {type(layer).__name__}.")
        want = (layer.out_features, layer.fan_in)
        if tuple(jnp.shape(u)) != want:
            name = type(layer).__name__
            raise ValueError(f"precomputed_units: u for {name} must have shape {want}, got {jnp.shape(u)}.")
    outer = _FED_UNITS.get() or {}
    token = _FED_UNITS.set({**outer, **{id(layer): u for layer, u in zip(layers, units, strict=True)}})
    try:
        yield
    finally:
        _FED_UNITS.reset(token)


class _GmPBase(nnx.Module):
    """Shared parameter handling of GmPDense and GmPConv over a fan-in ``n``."""

    _name = "GmP"
    out_features: int
    fan_in: int

    def _setup(
        self,
        fan_in: int,
        out_features: int,
        *,
        activation: Activation,
        init: str,
        impl: str,
        use_offset: bool,
        dtype,
        param_dtype,
        precision,
        promote_dtype: Callable,
        preferred_element_type,
        theta_init: Initializer | None,
        radius_init: Initializer | None,
        offset_init: Initializer | None,
        theta_metadata: Metadata,
        radius_metadata: Metadata,
        offset_metadata: Metadata,
        rngs: nnx.Rngs,
        kernel_init: Initializer | None = None,
        kernel_shape: tuple[int, ...] = (),
    ) -> None:
        """Check and store the options, then create theta (or the fixed direction), radius and offset."""
        inits = {"theta": theta_init, "radius": radius_init, "offset": offset_init}
        metadata = {"theta": theta_metadata, "radius": radius_metadata, "offset": offset_metadata}
        self._check_options(init, inits, kernel_init, metadata, promote_dtype, rngs)
        name = self._name
        self.activation = resolve_activation(activation, name)
        self.impl = _check_impl(impl, name)
        self.fan_in = fan_in
        self.use_offset = use_offset
        self.dtype = _check_dtype(dtype, "dtype", name)
        self.param_dtype = param_dtype
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        storage = _storage_dtype(param_dtype, name)
        key = rngs.params()
        preset = self._preset(key, fan_in, out_features, init, inits, kernel_init, kernel_shape, storage)
        self._init_params(key, out_features, inits, preset, metadata, storage)

    def _check_options(
        self,
        init: str,
        inits: dict[str, Initializer | None],
        kernel_init: Initializer | None,
        metadata: dict[str, Metadata],
        promote_dtype: Callable,
        rngs: nnx.Rngs,
    ) -> None:
        name = self._name
        if kernel_init is not None and (inits["theta"] is not None or inits["radius"] is not None or init != "uniform"):
            raise ValueError(
                f"{name}: kernel_init draws a standard kernel and splits it into directions and radii, so it "
                "replaces theta_init, radius_init and init; pass either kernel_init or those."
            )
        if init not in _INITS:
            raise ValueError(f"{name}: init must be 'uniform' (paper) or 'official' (released code); got {init!r}.")
        fns = {f"{k}_init": fn for k, fn in inits.items()} | {
            "kernel_init": kernel_init,
            "promote_dtype": promote_dtype,
        }
        for arg, fn in fns.items():
            _check_callable(fn, arg, name)
        for arg, md in metadata.items():
            _check_metadata(md, f"{arg}_metadata", name)
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{name}: rngs must be an nnx.Rngs (got {type(rngs).__name__}), e.g. rngs=nnx.Rngs(0).")

    def _preset(self, key, fan_in, out_features, init, inits, kernel_init, kernel_shape, storage) -> tuple:
        """``(direction, radius, offset)`` of the ``init`` preset, or of ``kernel_init``'s split kernel."""
        theta_init, radius_init, offset_init = inits["theta"], inits["radius"], inits["offset"]
        need = fan_in == 1 or theta_init is None or radius_init is None or (self.use_offset and offset_init is None)
        preset = _init_gmp(key, fan_in, out_features, init, storage) if need else (None, None, None)
        if kernel_init is None:
            return preset
        w = kernel_init(jax.random.fold_in(key, 3), kernel_shape, storage)
        if _raw_shape(w) != tuple(kernel_shape):
            raise ValueError(
                f"{self._name}: kernel_init returned shape {_raw_shape(w)}, expected {tuple(kernel_shape)}."
            )
        rows = jnp.asarray(w, storage).reshape(fan_in, out_features).T  # (out, fan_in): one direction per unit
        direction, radius, _ = _split_standard(rows, None, None, self._name, "output units")
        return direction, radius, preset[2]

    def _init_params(self, key, out_features, inits, preset, metadata, storage) -> None:
        """theta (an ``Angle``; fan-in 1: the fixed ``direction``), radius (``Radius``) and offset (``Offset``)."""
        name = self._name

        def make(arg: str, k: int, shape: tuple[int, ...], default: Any) -> Any:
            hook = inits[arg]
            if hook is None:
                return default
            value = hook(jax.random.fold_in(key, k), shape, storage)
            if _raw_shape(value) != shape:
                raise ValueError(f"{name}: {arg}_init returned shape {_raw_shape(value)}, expected {shape}.")
            return value

        if self.fan_in == 1:
            # Direction +-1 is fixed at init and never trained (paper Sec. 4.1.1); it has the radius's shape.
            self.theta: nnx.Param | None = nnx.data(None)
            self.direction: nnx.Variable | None = nnx.Variable(preset[0], **metadata["radius"])
        else:
            theta = make("theta", 0, (out_features, self.fan_in - 1), preset[0])
            if inits["theta"] is not None:
                _check_not_collapsed(theta, name)
            self.theta = Angle(theta, **metadata["theta"])
            self.direction = nnx.data(None)
        self.radius = Radius(make("radius", 1, (out_features,), preset[1]), **metadata["radius"])
        if self.use_offset:
            self.offset: nnx.Param | None = Offset(make("offset", 2, (out_features,), preset[2]), **metadata["offset"])
        else:
            self.offset = nnx.data(None)

    # -- parameter access with shape checks (a wrong-shaped nnx.update is caught on the next call) --

    def _value(self, var: nnx.Variable, arg: str, shape: tuple[int, ...]) -> Array:
        value = var[...]
        if tuple(value.shape) != shape:
            raise ValueError(
                f"{self._name}.{arg} has shape {tuple(value.shape)}, but this layer (out_features="
                f"{self.out_features}, fan_in={self.fan_in}) expects {shape}; check the state passed to "
                "nnx.update / nnx.merge."
            )
        return value

    def unit(self) -> Array:
        """Unit directions ``u(theta)``, shape ``(out_features, fan_in)``, in ``promote_types(param_dtype, f32)``.

        The single place ``u(theta)`` is computed; ``__call__(x, unit=u)`` reuses a precomputed one, and
        inside ``with precomputed_units(layers, units):`` it returns the array fed for this layer.
        """
        fed = _FED_UNITS.get()
        if fed is not None and id(self) in fed:
            return fed[id(self)]
        if self.theta is None:
            d = self._value(cast(nnx.Variable, self.direction), "direction", (self.out_features,))
            return d[:, None].astype(_unit_dtype(d.dtype))
        theta = self._value(self.theta, "theta", (self.out_features, self.fan_in - 1))
        return hs.angles_to_unit(theta.astype(_unit_dtype(theta.dtype)), impl=self.impl)

    def _checked_unit(self, unit: Array | None) -> Array:
        """``unit`` (validated) or ``self.unit()``; checks every parameter's shape before any compute."""
        self._value(self.radius, "radius", (self.out_features,))
        self._offset()
        if unit is None:
            return self.unit()
        unit = jnp.asarray(unit)
        if unit.shape != (self.out_features, self.fan_in):
            raise ValueError(
                f"{self._name}: unit must be u(theta) of shape {(self.out_features, self.fan_in)} "
                f"(out_features, fan_in), as returned by layer.unit(); got {unit.shape}."
            )
        values = _concrete(unit)
        if values is not None:
            norms = np.linalg.norm(values.astype(np.float64), axis=-1)
            if np.any(np.abs(norms - 1.0) > 1e-3):
                bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
                raise ValueError(
                    f"{self._name}: unit must hold unit vectors (rows of norm 1, as layer.unit() returns), but rows "
                    f"{bad[:5].tolist()} have norms {np.round(norms[bad[:5]], 4).tolist()}; a GmP direction has norm 1 "
                    "by construction (the scale is the radius)."
                )
        return unit

    def _kernel_dtype(self, unit: Array):
        """dtype u enters promote_dtype with: the declared ``param_dtype`` if ``dtype=None`` (nnx.Linear's rule)."""
        return jnp.dtype(self.param_dtype) if self.dtype is None else unit.dtype

    def _compute_offset(self, dtype: Any) -> Array | None:
        """The offset as it enters the computation: in the kernel's dtype (the declared ``param_dtype``)."""
        offset = self._offset()
        return None if offset is None else offset.astype(dtype)

    def _offset(self) -> Array | None:
        return None if self.offset is None else self._value(self.offset, "offset", (self.out_features,))

    def _finish(self, z: Array) -> Array:
        if self.activation is not None:
            z = self.activation(z)
        radius = self._value(self.radius, "radius", (self.out_features,))
        return radius.astype(z.dtype) * z

    def _preferred(self) -> dict[str, Any]:
        return {} if self.preferred_element_type is None else {"preferred_element_type": self.preferred_element_type}

    @property
    def bias(self) -> Array | None:
        """Read-only standard bias ``r * lambda`` of shape ``(out,)`` (None without an offset); never stored."""
        if self.offset is None:
            return None
        _, radius, offset = self._gmp_parts()
        return radius * offset

    def _gmp_parts(self) -> tuple[Array, Array, Array]:
        """``(u, radius, offset)`` in float32-or-wider, for conversions."""
        u = self.unit()
        radius = self._value(self.radius, "radius", (self.out_features,)).astype(u.dtype)
        offset = self._offset()
        offset = jnp.zeros_like(radius) if offset is None else offset.astype(u.dtype)
        return u, radius, offset

    @classmethod
    def _from_parts(cls, sizes, theta, radius, offset, act, param_dtype, inherited, kwargs, **geometry):
        fan_in_one = theta.ndim == 1
        opts = {**inherited, "param_dtype": param_dtype, **kwargs}
        factory: Any = cls  # the concrete subclass (GmPDense / GmPConv), whose __init__ takes these keywords
        layer = factory(
            *sizes,
            **geometry,
            activation=act,
            rngs=nnx.Rngs(0),
            theta_init=None if fan_in_one else _constant_init(theta),
            radius_init=_constant_init(radius),
            offset_init=_constant_init(offset),
            **opts,
        )
        if fan_in_one:
            layer.direction[...] = theta.astype(layer.direction[...].dtype)
        return layer

    def _check_exportable(self, radius: Array) -> None:
        if not _is_homogeneous(self.activation):
            raise ValueError(
                f"{self._name}: only layers with activation None, relu or leaky_relu equal act(standard layer); "
                f"this one has {self.activation}."
            )
        r = _concrete(radius)
        if self.activation is not None and r is None:
            raise ValueError(
                f"{self._name}: converting a layer with an activation needs concrete radii (r * act(z) == act(r z) "
                "only for r >= 0, which cannot be checked on traced values); convert outside jax.jit / nnx.jit."
            )
        if self.activation is not None and r is not None and np.any(r < 0):
            raise ValueError(
                f"{self._name}: units {np.flatnonzero(r < 0).tolist()} have radius < 0; r * act(z) != act(r z) "
                "for them, so there is no equivalent standard layer."
            )


@expose_signature
class GmPDense(_GmPBase):
    """Dense layer of GmP units: ``y = radius * activation(x @ u(theta).T + offset)``.

    Parameters: ``theta`` (out, in-1) angles, ``radius`` (out,) r, ``offset`` (out,) lambda.
    For ``in_features == 1`` there is no ``theta``: the direction is a fixed sign
    (a non-trainable ``direction`` variable of shape (out,)), as in the paper's 1-D experiment.

    Args:
      in_features: input size n (int or numpy integer).
      out_features: number of units m.
      activation: applied before the radius (default ``nnx.relu``); a callable, ``None`` or a
        name (``"relu"``, ``"identity"``, any ``jax.nn`` function); ``None`` gives the linear unit
        ``radius * (u . x + offset)``.
      init: preset for all parameters: ``"uniform"`` (paper: u uniform on the sphere, r = 1,
        lambda = 0) or ``"official"`` (released code: Glorot-uniform direction folded to the
        half-sphere u_n >= 0, r = ||w||).
      impl: implementation of ``u(theta)`` (see ``hyperspherical.available_impls``); checked here.
      use_bias: add the offset lambda (nnx's name and default, True); ``False`` leaves
        ``layer.offset = None``.
      use_offset: the paper's name for the same switch; when given it overrides ``use_bias``
        (``use_bias=False, use_offset=True`` is rejected as contradictory).
      dtype: compute dtype (``None``: promote input and parameters, as ``nnx.Linear``); see the
        module docstring for the mixed-precision policy.
      param_dtype: dtype of theta, radius and offset.
      precision, dot_general, promote_dtype, preferred_element_type: as in ``nnx.Linear``.
      theta_init, radius_init, offset_init: ``(key, shape, dtype) -> array`` initializers (any
        nnx/jax initializer, also wrapped by ``nnx.with_partitioning``) overriding the ``init``
        preset for that parameter; ``hyperspherical.sample_uniform_angles`` is the paper's theta init.
        ``theta_init`` is unused when ``in_features == 1``.
      rngs: random streams (``params`` is used).
      theta_metadata, radius_metadata, offset_metadata: keyword arguments of the ``nnx.Param``
        of each parameter, as ``nnx.Linear``'s ``kernel_metadata`` (e.g.
        ``{"out_sharding": ("model", None)}`` for theta); ``radius_metadata`` also annotates the fixed
        ``direction`` when ``in_features == 1``.
      kernel_init: a Cartesian kernel initializer under its nnx name (``(key, (in, out), dtype)``, e.g.
        ``jax.nn.initializers.glorot_uniform()``): the drawn kernel is split into directions and radii,
        ``u_j = w_j / ||w_j||``, ``r_j = ||w_j||`` (as the released code's Glorot-hyperspherical init).
        Replaces ``theta_init``, ``radius_init`` and ``init``. A kernel initializer passed as
        ``theta_init`` (all directions near e_1) is refused with a ValueError.
      bias_init, kernel_metadata, bias_metadata: not supported (no bias/kernel parameter); giving one
        raises a TypeError that names the replacement.

    Call: ``layer(x, out_sharding=None, *, unit=None)``; ``x`` has shape ``(..., in_features)``, and
    ``unit`` is an optional precomputed ``layer.unit()`` of shape ``(out_features, in_features)``.

    Example::

    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> layer = GmPDense(3, 4, rngs=nnx.Rngs(0))
    >>> jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(layer, nnx.Param)))
    {'offset': (4,), 'radius': (4,), 'theta': (4, 2)}
    >>> layer(jnp.ones((2, 3))).shape
    (2, 4)
    >>> GmPDense(3, 4, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))(jnp.ones((2, 3))).dtype
    dtype(bfloat16)
    """

    _name = "GmPDense"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: Activation = nnx.relu,
        init: Init = "uniform",
        impl: str = "auto",
        use_bias: bool = True,
        use_offset: bool | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        theta_init: Initializer | None = None,
        radius_init: Initializer | None = None,
        offset_init: Initializer | None = None,
        dot_general: Callable[..., Array] = jax.lax.dot_general,
        promote_dtype: Callable = nnx_dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: nnx.Rngs,
        theta_metadata: Metadata = _EMPTY,
        radius_metadata: Metadata = _EMPTY,
        offset_metadata: Metadata = _EMPTY,
        kernel_init: Initializer | None = None,
        bias_init: None = None,
        kernel_metadata: None = None,
        bias_metadata: None = None,
    ):
        _reject_dropped(
            self._name,
            bias_init=bias_init,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        in_features, out_features = _check_features(in_features, out_features, self._name)
        _check_callable(dot_general, "dot_general", self._name)
        self.in_features = in_features
        self.out_features = out_features
        self.dot_general = dot_general
        self._setup(
            in_features,
            out_features,
            activation=activation,
            init=init,
            impl=impl,
            use_offset=_resolve_use_offset(use_offset, use_bias, self._name),
            dtype=dtype,
            param_dtype=param_dtype,
            precision=precision,
            promote_dtype=promote_dtype,
            preferred_element_type=preferred_element_type,
            theta_init=theta_init,
            radius_init=radius_init,
            offset_init=offset_init,
            theta_metadata=theta_metadata,
            radius_metadata=radius_metadata,
            offset_metadata=offset_metadata,
            rngs=rngs,
            kernel_init=kernel_init,
            kernel_shape=(in_features, out_features),
        )

    def __call__(self, x: Array, out_sharding=None, *, unit: Array | None = None) -> Array:
        """``radius * act(x @ u.T + offset)`` for ``x`` of shape ``(..., in_features)``."""
        x = check_input(x, self.in_features, self._name)
        _check_out_sharding(out_sharding, self._name)
        u = self._checked_unit(unit)
        kernel = u.T.astype(self._kernel_dtype(u))
        x, kernel, offset = self.promote_dtype((x, kernel, self._compute_offset(kernel.dtype)), dtype=self.dtype)
        y = self.dot_general(
            x,
            kernel,
            (((x.ndim - 1,), (0,)), ((), ())),
            precision=self.precision,
            out_sharding=out_sharding,
            **self._preferred(),
        )
        if offset is not None:
            y = y + offset.astype(y.dtype)  # differs from y's dtype only with preferred_element_type
        return self._finish(y)

    @classmethod
    def from_linear(cls, linear: nnx.Linear, *, activation: Activation = None, **kwargs) -> GmPDense:
        """The GmP layer computing ``act(linear(x))`` exactly (``act`` None, relu or leaky_relu).

        ``radius_j = ||w_j||``, ``u(theta_j) = w_j / radius_j``, ``offset_j = b_j / radius_j`` for each
        kernel column ``w_j``; fan-in 1 gives the fixed-sign form. A zero column is exact with radius 0
        when ``act(b_j) == 0``; otherwise a ValueError names the column. ``dtype``, ``param_dtype``,
        ``precision``, ``dot_general``, ``promote_dtype``, ``preferred_element_type`` and ``use_bias`` are
        taken from ``linear``; ``kwargs`` (``impl``, metadata, ...) go to the constructor.

        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> lin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> gmp = GmPDense.from_linear(lin, activation="relu")
        >>> x = jnp.ones((4, 3))
        >>> bool(jnp.allclose(gmp(x), nnx.relu(lin(x)), atol=1e-6))
        True
        """
        act = resolve_activation(activation, "GmPDense.from_linear")
        if not isinstance(linear, nnx.Linear):
            raise TypeError(f"GmPDense.from_linear expects an nnx.Linear (got {type(linear).__name__}).")
        if not _is_homogeneous(act):
            raise ValueError(
                "GmPDense.from_linear: the conversion is exact only for activation None, relu or "
                f"leaky_relu (got {act})."
            )
        kernel = linear.kernel[...]
        bias = None if linear.bias is None else linear.bias[...]
        theta, radius, offset = _split_standard(kernel.T, bias, act, "GmPDense.from_linear", "columns")
        kwargs = {**gmp_metadata_of(linear.kernel, "GmPDense.from_linear"), **kwargs}
        return cls._from_parts(
            (linear.in_features, linear.out_features),
            theta,
            radius,
            offset,
            act,
            kernel.dtype,
            {
                "use_bias": linear.use_bias,
                "dtype": linear.dtype,
                "precision": linear.precision,
                "dot_general": linear.dot_general,
                "promote_dtype": linear.promote_dtype,
                "preferred_element_type": linear.preferred_element_type,
            },
            kwargs,
        )

    @property
    def kernel(self) -> Array:
        """Read-only ``nnx.Linear`` kernel of the layer, ``(r u)^T`` of shape ``(in, out)``.

        ``act(x @ kernel + bias) == layer(x)`` for activations None, relu, leaky_relu with ``r >= 0``.
        Computed from the parameters on every access (never stored); train ``theta``/``radius``/``offset``.

        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> layer = GmPDense(3, 2, activation=None, rngs=nnx.Rngs(0))
        >>> x = jnp.ones((4, 3))
        >>> bool(jnp.allclose(x @ layer.kernel + layer.bias, layer(x), atol=1e-6))
        True
        """
        u, radius, _ = self._gmp_parts()
        return (radius[:, None] * u).T

    def to_linear(self) -> nnx.Linear:
        """The ``nnx.Linear`` with ``act(linear(x)) == self(x)``: ``kernel = (r u).T``, ``bias = r * offset``.

        theta's sharding annotation moves to the kernel's output axis and the bias. Raises ValueError for
        activations other than None/relu/leaky_relu, or for a negative radius with an activation
        (``r * act(z) != act(r z)`` there).
        """
        u, radius, offset = self._gmp_parts()
        self._check_exportable(radius)
        kernel = (radius[:, None] * u).T
        dtype = jnp.dtype(self.param_dtype)
        return nnx.Linear(
            self.in_features,
            self.out_features,
            use_bias=self.use_offset,
            dtype=self.dtype,
            param_dtype=dtype,
            precision=self.precision,
            kernel_init=_constant_init(kernel),
            bias_init=_constant_init(radius * offset),
            dot_general=self.dot_general,
            promote_dtype=self.promote_dtype,
            preferred_element_type=self.preferred_element_type,
            **standard_metadata_of(self.theta, 2),
            rngs=nnx.Rngs(0),
        )
