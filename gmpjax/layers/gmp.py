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

import functools
import inspect
import math
import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

from gmpjax import hyperspherical as hs
from gmpjax.layers.variables import Angle, Offset, Radius

Array = jax.Array
Activation = Callable[[Array], Array] | str | None
Init = Literal["uniform", "official"]
Initializer = Callable[..., Any]
Metadata = Mapping[str, Any]

__all__ = [
    "GmPDense",
    "GmPConv",
    "InputMeanNorm",
    "MeanOnlyBatchNorm",
    "check_input",
    "resolve_activation",
    "HOMOGENEOUS_ACTIVATIONS",
]

_EMPTY: Metadata = MappingProxyType({})
_INITS = ("uniform", "official")
_IDENTITY_NAMES = ("identity", "linear", "none")
#: Activations with ``act(a z) = a act(z)`` for ``a > 0``: for them (and ``None``) a GmP layer and
#: ``act(nnx.Linear)`` describe the same functions, so ``from_linear``/``to_linear`` are exact.
HOMOGENEOUS_ACTIVATIONS: tuple[Callable[[Array], Array], ...] = (jax.nn.relu, jax.nn.leaky_relu)
_PAD_STRINGS = ("SAME", "SAME_LOWER", "VALID", "CIRCULAR", "REFLECT", "CAUSAL")


# ---------------------------------------------------------------------------
# argument checks shared by all layers (construction time)
# ---------------------------------------------------------------------------


def check_input(x: Array, in_features: int, name: str) -> Array:
    """Validate a layer input: floating dtype and ``x.shape[-1] == in_features``."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} expects a floating-point input (got dtype {x.dtype}); cast with x.astype(jnp.float32)."
        )
    if x.ndim < 1 or x.shape[-1] != in_features:
        hint = " (reshape a batch of scalars with x[:, None])" if in_features == 1 else ""
        raise ValueError(
            f"{name} was built with in_features={in_features}, so it expects inputs of shape "
            f"(..., {in_features}), but got {x.shape}; "
            f"the last axis must have size {in_features}{hint}."
        )
    return x


def _as_size(v: Any, arg: str, name: str) -> int:
    """A positive int from an int-like value (Python or numpy integer); bools and floats are rejected."""
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise ValueError(f"{name}: {arg} must be a positive int (got {v!r}).")
    v = operator.index(v)
    if v < 1:
        raise ValueError(f"{name}: {arg} must be a positive int (got {v!r}).")
    return v


def _check_features(in_features: Any, out_features: Any, name: str) -> tuple[int, int]:
    return _as_size(in_features, "in_features", name), _as_size(out_features, "out_features", name)


def resolve_activation(activation: Activation, name: str = "layer") -> Callable[[Array], Array] | None:
    """``None``, a callable, or a name: ``"identity"``/``"linear"``/``"none"`` (-> None) or a ``jax.nn`` name.

    >>> resolve_activation("relu") is jax.nn.relu, resolve_activation("identity")
    (True, None)
    """
    if activation is None or (callable(activation) and not isinstance(activation, str)):
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key in _IDENTITY_NAMES:
            return None
        fn = getattr(jax.nn, key, None)
        if callable(fn) and not isinstance(fn, type) and not key.startswith("_"):
            return fn
        raise ValueError(
            f"{name}: unknown activation {activation!r}; pass a callable, None, 'identity', or a jax.nn "
            "function name such as 'relu', 'leaky_relu', 'gelu', 'tanh'."
        )
    raise TypeError(f"{name}: activation must be a callable, a name or None (got {type(activation).__name__}).")


def _check_impl(impl: Any, name: str) -> str:
    if impl != "auto" and impl not in hs.available_impls():
        raise ValueError(f"{name}: unknown impl {impl!r}; choose 'auto' or one of {hs.available_impls()}.")
    return impl


def _check_metadata(md: Any, arg: str, name: str) -> Metadata:
    if not isinstance(md, Mapping):
        raise TypeError(
            f"{name}: {arg} must be a mapping of nnx.Param metadata such as {{'out_sharding': ('model', None)}} "
            f"(got {type(md).__name__})."
        )
    return md


def _check_callable(fn: Any, arg: str, name: str) -> None:
    if fn is not None and not callable(fn):
        raise TypeError(f"{name}: {arg} must be callable (got {type(fn).__name__}).")


def _resolve_use_offset(use_offset: bool | None, use_bias: bool, name: str) -> bool:
    """``use_offset`` (the paper's name) when given, else ``use_bias`` (nnx's name, default True)."""
    if use_offset is None:
        return bool(use_bias)
    if not use_bias and use_offset:
        raise ValueError(f"{name}: use_bias=False contradicts use_offset=True; pass only one of them.")
    return bool(use_offset)


def _reject_dropped(name: str, **given: Any) -> None:
    """Clear errors for nnx keywords a GmP layer cannot honour (see docs/layers.md)."""
    reasons = {
        "bias_init": "the offset is lambda = b / r, not the bias; use offset_init",
        "kernel_metadata": "a GmP layer has no kernel; annotate theta (shape (out, fan_in-1), output axis first) "
        "with theta_metadata, e.g. kernel_metadata {'out_sharding': (None, 'model')} becomes "
        "theta_metadata {'out_sharding': ('model', None)} plus radius_metadata/offset_metadata ('model',)",
        "bias_metadata": "use offset_metadata (and radius_metadata) for the (out,) parameters",
        "mask": "masking kernel entries would break ||u(theta)|| = 1 and the angle parameterization; use "
        "feature_group_count or a smaller kernel_size for structured sparsity",
    }
    for arg, value in given.items():
        if value is not None:
            raise TypeError(f"{name} does not take {arg}: {reasons[arg]}.")


def expose_signature(cls: type) -> type:
    """Make ``inspect.signature(cls)`` show the constructor's arguments (nnx modules report ``(*args, **kwargs)``)."""
    sig = inspect.signature(cls.__init__)  # type: ignore[misc]  # the class's own __init__, read not called
    params = list(sig.parameters.values())[1:]
    cls.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]  # read by inspect.signature
    return cls


# ---------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))  # one compiled program per layer shape
def _init_gmp(key: Array, fan_in: int, fan_out: int, init: str, dtype) -> tuple[Array, Array, Array]:
    """(theta (fan_out, fan_in-1) or sign (fan_out,) when fan_in == 1, radius, offset).

    ``"uniform"`` (paper, Remark 3.5): u uniform on the sphere, r = 1, lambda = 0.
    ``"official"`` (released code): w ~ Glorot-uniform(fan_in, fan_out), u = w/||w||
    with its last coordinate folded to >= 0, r = ||w||, lambda = 0.
    """
    offset = jnp.zeros((fan_out,), dtype)
    if init == "uniform":
        if fan_in == 1:
            sign = jnp.where(jax.random.bernoulli(key, 0.5, (fan_out,)), 1.0, -1.0).astype(dtype)
            return sign, jnp.ones((fan_out,), dtype), offset
        theta = hs.sample_uniform_angles(key, (fan_out, fan_in - 1), dtype)
        return theta, jnp.ones((fan_out,), dtype), offset
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    w = jax.random.uniform(key, (fan_out, fan_in), dtype, -limit, limit)
    radius = jnp.linalg.norm(w, axis=-1)
    if fan_in == 1:
        return jnp.where(w[:, 0] >= 0, 1.0, -1.0).astype(dtype), radius, offset
    w = w.at[:, -1].set(jnp.abs(w[:, -1]))
    return hs.unit_to_angles(w), radius, offset


def _raw_shape(value: Any) -> tuple[int, ...]:
    raw = value.raw_value if isinstance(value, nnx.VariableMetadata) else value
    return tuple(jnp.shape(raw))


def _storage_dtype(param_dtype: Any, name: str) -> Any:
    """dtype the GmP parameters are stored in: ``param_dtype``, but never below float32 (with a warning)."""
    try:
        dtype = jnp.dtype(param_dtype)
    except TypeError:
        msg = f"{name}: param_dtype must be a floating dtype such as jnp.float32 (got {param_dtype!r})."
        raise TypeError(msg) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}: param_dtype must be a floating dtype such as jnp.float32 (got {dtype}).")
    if dtype.itemsize < 4:
        warnings.warn(
            f"{name}: param_dtype={dtype} would freeze the angles and radii (optimizer steps are smaller than "
            f"{dtype}'s spacing at |theta| ~ 1), so theta, radius and offset are stored in float32; computation "
            "still follows dtype / param_dtype. Pass param_dtype=jnp.float32 with dtype=jnp.bfloat16 to say so "
            "explicitly.",
            UserWarning,
            stacklevel=4,
        )
        return jnp.dtype(jnp.float32)
    return dtype


def _unit_dtype(dtype) -> Any:
    """Dtype in which u(theta) is computed: the parameter dtype, but never below float32."""
    dtype = jnp.dtype(dtype)
    return dtype if dtype.itemsize >= 4 else jnp.dtype(jnp.float32)


def _is_homogeneous(activation: Callable | None) -> bool:
    return activation is None or any(activation is f for f in HOMOGENEOUS_ACTIVATIONS)


def _concrete(x: Any) -> np.ndarray | None:
    """``x`` as numpy when it holds values (outside jit); ``None`` for tracers."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _split_standard(w: Array, b: Array | None, activation: Callable | None, name: str, what: str):
    """GmP parameters ``(theta or sign, radius, offset)`` of rows ``w`` (m, n) and bias ``b`` (m,).

    ``radius = ||w_j||``, ``u = w_j/||w_j||``, ``offset = b_j/||w_j||``. A zero row ``w_j`` is a constant
    unit ``act(b_j)``: GmP represents it exactly with radius 0 only when ``act(b_j) == 0`` (``b_j == 0``, or
    ``b_j <= 0`` for ReLU); anything else raises, naming the columns.
    """
    radius = jnp.linalg.norm(w, axis=-1)
    bias = jnp.zeros_like(radius) if b is None else jnp.asarray(b, w.dtype)
    r_np, b_np = _concrete(radius), _concrete(bias)
    if r_np is not None and b_np is not None:
        zero = np.flatnonzero(r_np == 0)
        if zero.size:
            act_b = np.asarray(bias[zero] if activation is None else activation(bias[zero]))
            bad = zero[act_b != 0]
            if bad.size:
                raise ValueError(
                    f"{name}: {what} {bad.tolist()} of the kernel are zero with bias "
                    f"{b_np[bad].tolist()}, a constant unit act(b) != 0 that a GmP unit "
                    "r * act(u . x + lambda) with ||u|| = 1 cannot represent; set those biases to 0 "
                    "(or <= 0 with ReLU) or drop the units."
                )
    safe_r = jnp.where(radius > 0, radius, 1.0)
    offset = jnp.where(radius > 0, bias / safe_r, 0.0)
    if w.shape[-1] == 1:
        direction = jnp.where(w[:, 0] >= 0, 1.0, -1.0).astype(w.dtype)
        return direction, radius, offset
    return hs.unit_to_angles(w), radius, offset


def _check_not_collapsed(theta: Any, name: str) -> None:
    """Refuse angles whose directions all point near ``e_1``: what a kernel initializer gives as ``theta_init``.

    A Cartesian initializer (Glorot, He, normal(0.01)) draws small numbers; as angles they put every
    ``u(theta)`` within a few degrees of ``e_1`` (mean first coordinate ~0.98, against ~0 for directions
    uniform on the sphere). Skipped under tracing (values unknown) and for a single unit.
    """
    raw = theta.raw_value if isinstance(theta, nnx.VariableMetadata) else theta
    values = _concrete(raw)
    if values is None or values.shape[0] < 2:
        return
    first = np.cos(values[:, 0].astype(np.float64))  # u_1 = cos(theta_1)
    if float(np.mean(first)) > 0.9:
        raise ValueError(
            f"{name}: theta_init gave angles whose directions all point near e_1 (mean u_1 = {np.mean(first):.2f}; "
            "directions uniform on the sphere give ~0), which is what a kernel initializer such as glorot_uniform "
            "gives when used for angles. Pass kernel initializers as kernel_init= (the kernel is split into "
            "directions and radii), and angle initializers such as gmpjax.hyperspherical.sample_uniform_angles as "
            "theta_init=."
        )


_CARRIED_METADATA = ("eager_sharding",)


def _spec_of(var: Any) -> tuple | None:
    spec = var.get_metadata().get("out_sharding") if isinstance(var, nnx.Variable) else None
    return None if spec is None else tuple(spec)


def _carried_metadata(var: nnx.Variable) -> dict[str, Any]:
    md = var.get_metadata()
    return {k: md[k] for k in _CARRIED_METADATA if k in md}


def gmp_metadata_of(kernel: nnx.Variable, where: str) -> dict[str, dict[str, Any]]:
    """``theta/radius/offset_metadata`` carrying a standard kernel's sharding (output axis last).

    ``(..., None, "model")`` becomes theta ``("model", None)`` and radius/offset ``("model",)``. Input-axis
    sharding has no GmP counterpart (a unit's angles live on one device): it is dropped with a warning.
    """
    spec = _spec_of(kernel)
    if spec is None:
        return {}
    out_axis = spec[-1]
    if any(a is not None for a in spec[:-1]):
        warnings.warn(
            f"{where}: the kernel's input axes are sharded {spec}; a GmP unit keeps its angles on one device, so "
            f"only the output-axis sharding ({out_axis!r}) is carried over. Keep such a layer standard (e.g. the "
            "row-parallel half of a Megatron MLP).",
            UserWarning,
            stacklevel=4,
        )
    extra = _carried_metadata(kernel)
    return {
        "theta_metadata": {"out_sharding": (out_axis, None), **extra},
        "radius_metadata": {"out_sharding": (out_axis,), **extra},
        "offset_metadata": {"out_sharding": (out_axis,), **extra},
    }


def standard_metadata_of(theta: Any, kernel_ndim: int) -> dict[str, dict[str, Any]]:
    """``kernel/bias_metadata`` carrying theta's unit-axis sharding back to a standard layer's output axis."""
    spec = _spec_of(theta)
    if spec is None:
        return {}
    extra = _carried_metadata(theta)
    return {
        "kernel_metadata": {"out_sharding": (None,) * (kernel_ndim - 1) + (spec[0],), **extra},
        "bias_metadata": {"out_sharding": (spec[0],), **extra},
    }


def _constant_init(value: Array) -> Initializer:
    def init(key, shape, dtype):
        del key
        if tuple(shape) != tuple(value.shape):
            raise ValueError(f"converted parameter has shape {value.shape}, the layer expects {tuple(shape)}.")
        return jnp.asarray(value, dtype)

    return init


# ---------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------


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
        name = self._name
        if kernel_init is not None and (theta_init is not None or radius_init is not None or init != "uniform"):
            raise ValueError(
                f"{name}: kernel_init draws a standard kernel and splits it into directions and radii, so it "
                "replaces theta_init, radius_init and init; pass either kernel_init or those."
            )
        if init not in _INITS:
            raise ValueError(f"{name}: init must be 'uniform' (paper) or 'official' (released code); got {init!r}.")
        for arg, fn in (
            ("theta_init", theta_init),
            ("radius_init", radius_init),
            ("offset_init", offset_init),
            ("kernel_init", kernel_init),
            ("promote_dtype", promote_dtype),
        ):
            _check_callable(fn, arg, name)
        for arg, md in (
            ("theta_metadata", theta_metadata),
            ("radius_metadata", radius_metadata),
            ("offset_metadata", offset_metadata),
        ):
            _check_metadata(md, arg, name)
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{name}: rngs must be an nnx.Rngs (got {type(rngs).__name__}), e.g. rngs=nnx.Rngs(0).")
        self.activation = resolve_activation(activation, name)
        self.impl = _check_impl(impl, name)
        self.fan_in = fan_in
        self.use_offset = use_offset
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type

        storage = _storage_dtype(param_dtype, name)
        key = rngs.params()
        need_preset = fan_in == 1 or theta_init is None or radius_init is None or (use_offset and offset_init is None)
        preset = _init_gmp(key, fan_in, out_features, init, storage) if need_preset else (None, None, None)
        if kernel_init is not None:
            w = kernel_init(jax.random.fold_in(key, 3), kernel_shape, storage)
            if _raw_shape(w) != tuple(kernel_shape):
                raise ValueError(f"{name}: kernel_init returned shape {_raw_shape(w)}, expected {tuple(kernel_shape)}.")
            rows = jnp.asarray(w, storage).reshape(fan_in, out_features).T  # (out, fan_in): one direction per unit
            direction, radius, _ = _split_standard(rows, None, None, name, "output units")
            preset = (direction, radius, preset[2])

        def make(hook, k, shape, default, arg):
            if hook is None:
                return default
            value = hook(jax.random.fold_in(key, k), shape, storage)
            if _raw_shape(value) != shape:
                raise ValueError(f"{name}: {arg} returned shape {_raw_shape(value)}, expected {shape}.")
            return value

        if fan_in == 1:
            # Direction +-1 is fixed at init and never trained (paper Sec. 4.1.1); it has the radius's shape.
            self.theta: nnx.Param | None = nnx.data(None)
            self.direction: nnx.Variable | None = nnx.Variable(preset[0], **radius_metadata)
        else:
            shape = (out_features, fan_in - 1)
            theta = make(theta_init, 0, shape, preset[0], "theta_init")
            if theta_init is not None:
                _check_not_collapsed(theta, name)
            self.theta = Angle(theta, **theta_metadata)
            self.direction = nnx.data(None)
        self.radius = Radius(make(radius_init, 1, (out_features,), preset[1], "radius_init"), **radius_metadata)
        if use_offset:
            off = make(offset_init, 2, (out_features,), preset[2], "offset_init")
            self.offset: nnx.Param | None = Offset(off, **offset_metadata)
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

        The single place ``u(theta)`` is computed; ``__call__(x, unit=u)`` reuses a precomputed one.
        """
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


def _tuple(v: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """``v`` broadcast to ``n`` positive ints (Python or numpy integers)."""
    t = (v,) * n if isinstance(v, int | np.integer) else tuple(v)
    if len(t) != n or any(isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 1 for i in t):
        raise ValueError(f"{name} must be a positive int or a sequence of {n} positive ints (got {v!r}).")
    return tuple(int(i) for i in t)


def _kernel_size(kernel_size: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(kernel_size, int | np.integer) and not isinstance(kernel_size, bool):
        return _tuple(kernel_size, 1, "kernel_size")  # as nnx.Conv: an int is a 1-D kernel
    try:
        t = tuple(cast(Sequence[int], kernel_size))
    except TypeError:
        raise ValueError(
            f"{name}: kernel_size must be an int or a sequence of 1, 2 or 3 ints (got {kernel_size!r})."
        ) from None
    if len(t) not in (1, 2, 3):
        raise ValueError(f"{name}: kernel_size must have length 1, 2 or 3 (got {kernel_size!r}).")
    return _tuple(t, len(t), "kernel_size")


def canonical_padding(padding: Any, rank: int, name: str) -> str | tuple[tuple[int, int], ...]:
    """Validate ``padding`` as ``nnx.Conv`` accepts it: a string, an int, or ``rank`` ints / (low, high) pairs.

    >>> canonical_padding(1, 2, "conv"), canonical_padding("same", 2, "conv")
    (((1, 1), (1, 1)), 'SAME')
    """
    if isinstance(padding, str):
        p = padding.upper()
        if p not in _PAD_STRINGS:
            raise ValueError(
                f"{name}: padding {padding!r} is not one of {_PAD_STRINGS} (or ints / (low, high) "
                "pairs per spatial axis)."
            )
        if p == "CAUSAL" and rank != 1:
            raise ValueError(f"{name}: padding 'CAUSAL' needs a 1-D kernel (kernel_size has length {rank}).")
        return p
    if isinstance(padding, int | np.integer) and not isinstance(padding, bool):
        return ((int(padding), int(padding)),) * rank
    if isinstance(padding, Sequence) and len(padding) == rank:
        pairs = []
        for p in padding:
            if isinstance(p, int | np.integer) and not isinstance(p, bool):
                pairs.append((int(p), int(p)))
            elif isinstance(p, Sequence) and len(p) == 2 and all(isinstance(q, int | np.integer) for q in p):
                pairs.append((int(p[0]), int(p[1])))
            else:
                break
        else:
            return tuple(pairs)
    raise ValueError(
        f"{name}: padding must be one of {_PAD_STRINGS}, an int, or a sequence of {rank} ints or "
        f"(low, high) pairs (got {padding!r})."
    )


def conv_dimension_numbers(rank: int) -> jax.lax.ConvDimensionNumbers:
    """Channels-last ``(N, *spatial, C)`` input, ``(*spatial, I, O)`` kernel, for ``rank`` spatial axes."""
    lhs = (0, rank + 1, *range(1, rank + 1))
    rhs = (rank + 1, rank, *range(rank))
    return jax.lax.ConvDimensionNumbers(lhs, rhs, lhs)


def conv_apply(layer: Any, x: Array, kernel: Array, bias: Array | None, out_sharding, name: str) -> Array:
    """``nnx.Conv``'s forward pass with ``layer``'s geometry; ``x`` is ``(*batch, *spatial, C)``, unbatched allowed.

    ``layer`` has ``kernel_size, strides, padding, input_dilation, kernel_dilation, feature_group_count,
    dtype, precision, promote_dtype, conv_general_dilated, preferred_element_type`` and ``int_kernel_size``.
    """
    rank = len(layer.kernel_size)
    if x.ndim < rank + 1:
        raise ValueError(
            f"{name} has a {rank}-D kernel {layer.kernel_size}, so it expects inputs of rank {rank + 2} "
            f"(N, {'spatial, ' * rank}C) or more, but got shape {x.shape}"
            + (
                "; kernel_size was an int, which means a 1-D kernel (as in nnx.Conv): pass (k, k) for a 2-D one."
                if layer.int_kernel_size
                else "."
            )
        )
    lead = x.shape[: x.ndim - rank - 1]
    x = x.reshape((-1, *x.shape[x.ndim - rank - 1 :]))
    padding = layer.padding
    if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
        dilated = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.kernel_dilation, strict=True)]
        if padding == "CAUSAL":
            pads = [(0, 0), (dilated[0] - 1, 0), (0, 0)]
            x = jnp.pad(x, pads)
        else:
            pads = [(0, 0), *[((k - 1) // 2, k // 2) for k in dilated], (0, 0)]
            x = jnp.pad(x, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
        padding = ((0, 0),) * rank  # explicit, as lax rejects string padding with input_dilation
    x, kernel, bias = layer.promote_dtype((x, kernel, bias), dtype=layer.dtype)
    kw = {} if layer.preferred_element_type is None else {"preferred_element_type": layer.preferred_element_type}
    y = layer.conv_general_dilated(
        x,
        kernel,
        layer.strides,
        padding,
        lhs_dilation=layer.input_dilation,
        rhs_dilation=layer.kernel_dilation,
        dimension_numbers=conv_dimension_numbers(rank),
        feature_group_count=layer.feature_group_count,
        precision=layer.precision,
        out_sharding=out_sharding,
        **kw,
    )
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y.reshape((*lead, *y.shape[1:]))


class ConvGeometry:
    """Construction-time validation of the ``nnx.Conv`` geometry arguments (shared with the baselines)."""

    def _geometry(
        self,
        name,
        in_features,
        out_features,
        kernel_size,
        strides,
        padding,
        input_dilation,
        kernel_dilation,
        feature_group_count,
    ) -> tuple[int, ...]:
        in_features, out_features = _check_features(in_features, out_features, name)
        self.int_kernel_size = isinstance(kernel_size, int | np.integer)
        self.kernel_size = _kernel_size(kernel_size, name)
        rank = len(self.kernel_size)
        self.strides = _tuple(1 if strides is None else strides, rank, "strides")
        self.input_dilation = _tuple(1 if input_dilation is None else input_dilation, rank, "input_dilation")
        self.kernel_dilation = _tuple(1 if kernel_dilation is None else kernel_dilation, rank, "kernel_dilation")
        self.padding = canonical_padding(padding, rank, name)
        if self.padding == "VALID":
            self.padding = ((0, 0),) * rank
        if self.padding in ("SAME", "SAME_LOWER") and any(d > 1 for d in self.input_dilation):
            raise ValueError(
                f"{name}: padding {self.padding!r} with input_dilation={self.input_dilation} is not defined by "
                "jax.lax.conv_general_dilated (nnx.Conv fails on it at call time); give explicit (low, high) pairs."
            )
        groups = _as_size(feature_group_count, "feature_group_count", name)
        if in_features % groups or out_features % groups:
            raise ValueError(
                f"{name}: feature_group_count={groups} must divide in_features={in_features} and "
                f"out_features={out_features}."
            )
        self.feature_group_count = groups
        self.in_features, self.out_features = in_features, out_features
        return (*self.kernel_size, in_features // groups, out_features)


@expose_signature
class GmPConv(_GmPBase, ConvGeometry):
    """1-, 2- or 3-D convolution of GmP units, one direction per output channel.

    The unit vector of output channel ``j`` spans its group's receptive field,
    ``n = prod(kernel_size) * in_features / feature_group_count``, and is reshaped to a
    ``(*kernel_size, in_features / groups, out_features)`` kernel in row-major order (for 2-D: flat
    index ``(i * kw + j) * C_in + c``, channel fastest), as in the released code. Output:
    ``radius * activation(conv(x, u) + offset)`` on channels-last inputs ``(*batch, *spatial, C)``,
    as ``nnx.Conv`` (several or no batch axes allowed).

    Args:
      in_features: input channels.
      out_features: output channels (filters).
      kernel_size: a tuple of length 1, 2 or 3 (its length is the convolution rank) or an int,
        which means a square **2-D** kernel ``(k, k)`` (unlike ``nnx.Conv``, where an int is 1-D;
        a layer built from an int rejects unbatched inputs, which would be ambiguous).
      strides, padding, input_dilation, kernel_dilation, feature_group_count: as in ``nnx.Conv``
        (padding: 'SAME', 'SAME_LOWER', 'VALID', 'CIRCULAR', 'REFLECT', 'CAUSAL' (1-D), an int, or
        per-axis ints / (low, high) pairs; checked here). ``feature_group_count = in_features`` is
        depthwise.
      conv_general_dilated: the convolution function (default ``jax.lax.conv_general_dilated``).
      activation, init, impl, use_bias/use_offset, dtype, param_dtype, precision, promote_dtype,
      preferred_element_type, theta_init, radius_init, offset_init, *_metadata, rngs: as in ``GmPDense``.
      mask: not supported (raises, see ``docs/layers.md``).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> GmPConv(3, 8, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 3))).shape
    (2, 5, 5, 8)
    >>> GmPConv(4, 4, (3,), feature_group_count=4, rngs=nnx.Rngs(0)).theta.shape  # depthwise 1-D
    (4, 2)
    """

    _name = "GmPConv"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = 1,
        *,
        padding: Any = "SAME",
        input_dilation: int | Sequence[int] | None = 1,
        kernel_dilation: int | Sequence[int] | None = 1,
        feature_group_count: int = 1,
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
        conv_general_dilated: Callable[..., Array] = jax.lax.conv_general_dilated,
        promote_dtype: Callable = nnx_dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: nnx.Rngs,
        theta_metadata: Metadata = _EMPTY,
        radius_metadata: Metadata = _EMPTY,
        offset_metadata: Metadata = _EMPTY,
        mask: None = None,
        kernel_init: Initializer | None = None,
        bias_init: None = None,
        kernel_metadata: None = None,
        bias_metadata: None = None,
    ):
        _reject_dropped(
            self._name,
            mask=mask,
            bias_init=bias_init,
            kernel_metadata=kernel_metadata,
            bias_metadata=bias_metadata,
        )
        shape = self._geometry(
            self._name,
            in_features,
            out_features,
            kernel_size,
            strides,
            padding,
            input_dilation,
            kernel_dilation,
            feature_group_count,
        )
        _check_callable(conv_general_dilated, "conv_general_dilated", self._name)
        self.kernel_shape = shape
        self.conv_general_dilated = conv_general_dilated
        self._setup(
            math.prod(shape[:-1]),
            self.out_features,
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
            kernel_shape=shape,
        )

    def unit_kernel(self, unit: Array | None = None) -> Array:
        """The unit-norm kernel ``u.T`` reshaped to ``(*kernel_size, in_features / groups, out_features)``."""
        return self._checked_unit(unit).T.reshape(self.kernel_shape)

    @property
    def kernel(self) -> Array:
        """Read-only ``nnx.Conv`` kernel of the layer, ``(r u)^T`` in ``(*kernel_size, in / groups, out)`` layout.

        ``act(conv(x, kernel) + bias) == layer(x)`` for activations None, relu, leaky_relu with ``r >= 0``.
        Computed from the parameters on every access (never stored); train ``theta``/``radius``/``offset``.
        """
        u, radius, _ = self._gmp_parts()
        return (radius[:, None] * u).T.reshape(self.kernel_shape)

    def __call__(self, x: Array, out_sharding=None, *, unit: Array | None = None) -> Array:
        """``radius * act(conv(x, kernel(u)) + offset)`` for ``x`` of shape ``(*batch, *spatial, in_features)``."""
        x = check_input(x, self.in_features, self._name)
        kernel = self.unit_kernel(unit)
        kernel = kernel.astype(self._kernel_dtype(kernel))
        z = conv_apply(self, x, kernel, self._compute_offset(kernel.dtype), out_sharding, self._name)
        return self._finish(z)

    @classmethod
    def from_conv(cls, conv: nnx.Conv, *, activation: Activation = None, **kwargs) -> GmPConv:
        """The GmP convolution computing ``act(conv(x))`` exactly; the rules of ``GmPDense.from_linear``.

        Each output channel's kernel slice ``conv.kernel[..., j]`` (flattened row-major) becomes one
        direction; geometry, dtypes and functions are taken from ``conv``.
        """
        act = resolve_activation(activation, "GmPConv.from_conv")
        if not isinstance(conv, nnx.Conv):
            raise TypeError(f"GmPConv.from_conv expects an nnx.Conv (got {type(conv).__name__}).")
        if conv.mask is not None:
            raise ValueError("GmPConv.from_conv: masked convolutions cannot be converted (GmPConv has no mask).")
        if not _is_homogeneous(act):
            raise ValueError(
                f"GmPConv.from_conv: the conversion is exact only for activation None, relu or leaky_relu (got {act})."
            )
        kernel = conv.kernel[...]
        bias = None if conv.bias is None else conv.bias[...]
        w = kernel.reshape(-1, kernel.shape[-1]).T
        theta, radius, offset = _split_standard(w, bias, act, "GmPConv.from_conv", "output channels")
        kwargs = {**gmp_metadata_of(conv.kernel, "GmPConv.from_conv"), **kwargs}
        geometry = {
            "kernel_size": tuple(conv.kernel_size),
            "strides": conv.strides,
            "padding": conv.padding,
            "input_dilation": conv.input_dilation,
            "kernel_dilation": conv.kernel_dilation,
            "feature_group_count": conv.feature_group_count,
            "conv_general_dilated": conv.conv_general_dilated,
        }
        return cls._from_parts(
            (conv.in_features, conv.out_features),
            theta,
            radius,
            offset,
            act,
            kernel.dtype,
            {
                "use_bias": conv.use_bias,
                "dtype": conv.dtype,
                "precision": conv.precision,
                "promote_dtype": conv.promote_dtype,
                "preferred_element_type": conv.preferred_element_type,
            },
            kwargs,
            **geometry,
        )

    def to_conv(self) -> nnx.Conv:
        """The ``nnx.Conv`` with ``act(conv(x)) == self(x)`` (same rules as ``GmPDense.to_linear``)."""
        u, radius, offset = self._gmp_parts()
        self._check_exportable(radius)
        kernel = (radius[:, None] * u).T.reshape(self.kernel_shape)
        return nnx.Conv(
            self.in_features,
            self.out_features,
            self.kernel_size,
            self.strides,
            padding=self.padding,
            input_dilation=self.input_dilation,
            kernel_dilation=self.kernel_dilation,
            feature_group_count=self.feature_group_count,
            use_bias=self.use_offset,
            dtype=self.dtype,
            param_dtype=jnp.dtype(self.param_dtype),
            precision=self.precision,
            kernel_init=_constant_init(kernel),
            bias_init=_constant_init(radius * offset),
            conv_general_dilated=self.conv_general_dilated,
            promote_dtype=self.promote_dtype,
            preferred_element_type=self.preferred_element_type,
            rngs=nnx.Rngs(0),
            **standard_metadata_of(self.theta, len(self.kernel_shape)),
        )


@expose_signature
class InputMeanNorm(nnx.Module):
    """Input mean normalization (IMN, Eq. 14): ``x - mean_batch(x)``, no trainable parameters.

    In training the mean is taken over all axes but the last (the feature /
    channel axis) of the current minibatch; a moving mean
    ``m <- momentum * m + (1 - momentum) * mean`` (momentum 0.99 as the released
    code) is kept in an ``nnx.BatchStat`` and used when ``use_running_average``
    is true (``model.eval()`` sets it). ``epsilon > 0`` reproduces the released
    code's ``(x - mean) / sqrt(1 + epsilon)`` (it uses 1e-6); the paper's default
    is a pure subtraction. The same operation placed on pre-activations is the
    mean-only batch norm (MBN) of the WN+MBN baseline.

    In training mode an input with a single sample per feature (``prod(x.shape[:-1]) == 1``,
    e.g. one row) raises ValueError: its batch mean is the sample itself, so the output would
    be all zeros. Use ``model.eval()`` (the running mean) for single examples.

    ``mean_metadata`` is passed to the running mean's ``nnx.BatchStat`` (e.g. sharding names).

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> y = InputMeanNorm(2)(jnp.array([[1.0, 2.0], [3.0, 6.0]]))
    >>> y.tolist()
    [[-1.0, -2.0], [1.0, 2.0]]
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.99,
        epsilon: float = 0.0,
        use_running_average: bool = False,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
        mean_metadata: Metadata = _EMPTY,
    ):
        if isinstance(num_features, bool) or not isinstance(num_features, int | np.integer) or num_features < 1:
            raise ValueError(f"InputMeanNorm: num_features must be a positive int (got {num_features!r}).")
        _check_metadata(mean_metadata, "mean_metadata", "InputMeanNorm")
        self.num_features = int(num_features)
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.mean = nnx.BatchStat(jnp.zeros((self.num_features,), param_dtype), **mean_metadata)

    def __call__(self, x: Array, *, use_running_average: bool | None = None) -> Array:
        x = check_input(x, self.num_features, "InputMeanNorm")
        use_ra = self.use_running_average if use_running_average is None else use_running_average
        if use_ra:
            mean = self.mean[...].astype(x.dtype)
        else:
            if math.prod(x.shape[:-1]) < 2:
                raise ValueError(
                    f"InputMeanNorm in training mode got input shape {x.shape}: one sample per feature, whose "
                    "batch mean is itself, so every output would be 0. Pass a batch of several rows, or call "
                    "model.eval() (use_running_average=True) to use the running mean."
                )
            mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
            stat = self.mean[...]
            batch_mean = jax.lax.stop_gradient(mean).astype(stat.dtype)
            self.mean[...] = self.momentum * stat + (1 - self.momentum) * batch_mean
        y = x - mean
        if self.epsilon:
            y = y / jnp.sqrt(1.0 + self.epsilon)
        return y


MeanOnlyBatchNorm = InputMeanNorm
"""Mean-only batch norm (Salimans & Kingma 2016): the same operation as IMN, placed on pre-activations."""
