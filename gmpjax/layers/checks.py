"""Argument checks and small helpers shared by every layer: each raises where the mistake is made, naming the fix.

>>> resolve_activation("relu") is jax.nn.relu
True
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gmpjax import hyperspherical as hs

Array = jax.Array
Activation = Callable[[Array], Array] | str | None
Metadata = Mapping[str, Any]

__all__ = ["check_input", "resolve_activation", "expose_signature", "HOMOGENEOUS_ACTIVATIONS"]

_EMPTY: Metadata = MappingProxyType({})
_IDENTITY_NAMES = ("identity", "linear", "none")
HOMOGENEOUS_ACTIVATIONS: tuple[Callable[[Array], Array], ...] = (jax.nn.relu, jax.nn.leaky_relu)
"""Activations with ``act(a z) = a act(z)`` for ``a > 0``: for them (and ``None``) a GmP layer and
``act(nnx.Linear)`` describe the same functions, so ``from_linear``/``to_linear`` are exact."""


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
    if "sharding" in md or "sharding_names" in md:
        old = "sharding" if "sharding" in md else "sharding_names"
        raise ValueError(f"{name}: {arg} uses the old key {old!r}; flax >= 0.12 reads 'out_sharding' (same value).")
    spec = md.get("out_sharding")
    mesh = jax.sharding.get_abstract_mesh()
    if spec is not None and not mesh.empty:
        names = [n for entry in spec if entry is not None for n in ((entry,) if isinstance(entry, str) else entry)]
        missing = [n for n in names if n not in mesh.axis_names]
        if missing:
            raise ValueError(
                f"{name}: {arg} shards over mesh axes {missing}, but the current mesh has axes {mesh.axis_names}; "
                "rename the axes in the metadata or build the mesh with them."
            )
    return md


def _check_dtype(dtype: Any, arg: str, name: str) -> Any:
    """``None`` or a floating dtype (a clear error for names such as ``"bf16"``)."""
    if dtype is None:
        return None
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"{name}: {arg}={dtype!r} is not a dtype; pass e.g. jnp.bfloat16, jnp.float32 or 'bfloat16'."
        ) from None
    if not jnp.issubdtype(resolved, jnp.floating):
        raise TypeError(f"{name}: {arg} must be a floating dtype such as jnp.bfloat16 (got {resolved}).")
    return dtype


def _check_out_sharding(out_sharding: Any, name: str) -> None:
    """A ``PartitionSpec`` names mesh axes, so it needs a mesh context (``jax.set_mesh``)."""
    if isinstance(out_sharding, jax.sharding.PartitionSpec) and jax.sharding.get_abstract_mesh().empty:
        raise ValueError(
            f"{name}: out_sharding={out_sharding} names mesh axes but no mesh is set; call the layer under "
            "`with jax.set_mesh(mesh):` or pass a NamedSharding."
        )


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


def _is_homogeneous(activation: Callable | None) -> bool:
    return activation is None or any(activation is f for f in HOMOGENEOUS_ACTIVATIONS)


def _concrete(x: Any) -> np.ndarray | None:
    """``x`` as numpy when it holds values (outside jit); ``None`` for tracers."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
