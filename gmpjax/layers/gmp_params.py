"""GmP parameter construction: initial angles/radii/offsets, storage dtype, splitting a standard kernel, metadata.

Pure helpers of ``GmPDense``/``GmPConv`` (``gmpjax/layers/gmp.py``, ``gmp_conv.py``): the paper's and the
released code's initialisations, ``w = r u`` splitting for conversions and ``kernel_init``, and the mapping of
sharding metadata between a standard kernel and ``theta``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gmpjax import hyperspherical as hs
from gmpjax.layers.checks import _concrete

Array = jax.Array
Initializer = Callable[..., Any]

__all__ = ["gmp_metadata_of", "standard_metadata_of"]


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
    return hs.unit_to_angles(w, allow_zero=True), radius, offset  # zero rows have radius 0


def _check_not_collapsed(theta: Any, name: str) -> None:
    """Refuse angles whose directions all point near ``e_1``: what a kernel initializer gives as ``theta_init``.

    A Cartesian initializer (Glorot, He, normal(0.01)) draws small numbers; as angles they put every
    ``u(theta)`` within a few degrees of ``e_1`` (mean first coordinate ~0.98, against ~0 for directions
    uniform on the sphere). Skipped under tracing (values unknown) and for a single unit.
    """
    raw = theta.raw_value if isinstance(theta, nnx.VariableMetadata) else theta
    values = _concrete(raw[:, 0])  # only theta_1 decides u_1 = cos(theta_1): copy one column, not all of theta
    if values is None or values.shape[0] < 2:
        return
    first = np.cos(values.astype(np.float64))
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

    >>> from flax import nnx
    >>> lin = nnx.Linear(3, 4, kernel_metadata={"out_sharding": (None, "model"), "eager_sharding": False},
    ...                  rngs=nnx.Rngs(0))
    >>> gmp_metadata_of(lin.kernel, "example")["theta_metadata"]["out_sharding"]
    ('model', None)
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
    """``kernel/bias_metadata`` carrying theta's unit-axis sharding back to a standard layer's output axis.

    >>> from flax import nnx
    >>> theta = nnx.Param(jnp.zeros((4, 2)), out_sharding=("model", None), eager_sharding=False)
    >>> standard_metadata_of(theta, 2)["kernel_metadata"]["out_sharding"]
    (None, 'model')
    """
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
