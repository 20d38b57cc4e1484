"""Tensor-parallel annotations of layers: the metadata keywords that split a layer's parameters over a mesh axis.

They only annotate (``nnx.Param(..., out_sharding=...)``); ``train.sharding`` places the annotated
state on a mesh and shards the train step. They live with the layers because a model built column or row
parallel needs nothing from the training code.

>>> column_parallel("gmp")["theta_metadata"]
{'out_sharding': ('model', None), 'eager_sharding': False}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from gmpjax.layers.registry import STANDARD_ROLES, Role, get

__all__ = ["MODEL_AXIS", "column_parallel", "column_metadata", "row_parallel", "STANDARD_ROLES"]

MODEL_AXIS = "model"
"""The mesh axis name the annotations use by default."""


def _names(spec: tuple, eager: bool) -> dict[str, Any]:
    if eager and jax.sharding.get_abstract_mesh().empty:
        raise ValueError(
            "eager=True shards each parameter as the layer is built, which needs a mesh: build the model under "
            "`with jax.set_mesh(mesh):`, or keep eager=False and place the state with shard_state(state, mesh)."
        )
    return {"out_sharding": spec} if eager else {"out_sharding": spec, "eager_sharding": False}


def _spec(role: Role, kernel_ndim: int, axis: str) -> tuple:
    """The partition spec of a parameter of ``role`` split over its outputs (see ``registry.Role``)."""
    if role == "kernel":
        return (None,) * (kernel_ndim - 1) + (axis,)
    return (axis, None) if role == "rows" else (axis,)


def column_metadata(
    roles: Mapping[str, Role], *, kernel_ndim: int = 2, axis: str = MODEL_AXIS, eager: bool = False
) -> dict[str, Any]:
    """Metadata keywords that split the parameters of ``roles`` (keyword -> ``Role``) along their outputs.

    ``column_metadata(STANDARD_ROLES)`` annotates a standard ``nnx.Linear`` (kernel and bias).

    >>> column_metadata(STANDARD_ROLES)["kernel_metadata"]
    {'out_sharding': (None, 'model'), 'eager_sharding': False}
    """
    if isinstance(kernel_ndim, bool) or not isinstance(kernel_ndim, int) or kernel_ndim < 2:
        raise ValueError(f"column_parallel: kernel_ndim must be an int >= 2 (got {kernel_ndim!r}).")
    return {k: _names(_spec(role, kernel_ndim, axis), eager) for k, role in roles.items()}


def column_parallel(
    parameterization: str, *, kernel_ndim: int = 2, axis: str = MODEL_AXIS, eager: bool = False
) -> dict[str, Any]:
    """Metadata keywords that split a layer of ``parameterization`` along its outputs (column parallel).

    Pass the result as ``**kwargs`` to ``make_dense`` / ``make_conv`` (or the layer class). The parameters
    and their roles come from the registry row (``Parameterization.column_parallel``). GmP: ``theta``
    (out, fan_in-1) is split on axis 0, ``radius`` and ``offset`` (out,) on their only axis -- sharding
    theta along its own input axis is not supported. Standard / WN / BN layers: the kernel's last (output)
    axis, bias, WN gain and norm statistics on the output axis.

    Args:
      parameterization: a registry name such as ``"gmp"`` (``registry.names()``).
      kernel_ndim: 2 for a dense kernel (in, out), 3/4/5 for a 1/2/3-D conv kernel.
      axis: the mesh axis the outputs are split over.
      eager: keep flax's eager sharding (the layer must then be built under
        ``jax.set_mesh(mesh)``); by default the parameters are only annotated and
        ``shard_state`` places them.

    >>> column_parallel("gmp")["theta_metadata"]
    {'out_sharding': ('model', None), 'eager_sharding': False}
    """
    try:
        row = get(parameterization)
    except ValueError as e:
        raise ValueError(f"column_parallel: {e}") from None
    return column_metadata(row.column_parallel, kernel_ndim=kernel_ndim, axis=axis, eager=eager)


def row_parallel(*, kernel_ndim: int = 2, axis: str = MODEL_AXIS, eager: bool = False) -> dict[str, Any]:
    """``kernel_metadata`` that splits a standard layer along its input axis (row parallel); the bias is replicated.

    The layer after a column-parallel one (the second matmul of a Megatron MLP):
    each device multiplies its slice of the hidden units and XLA all-reduces the
    partial sums. For ``nnx.Linear``, ``SPDense``, ``WNDense`` (its ``v``).

    >>> row_parallel()
    {'kernel_metadata': {'out_sharding': ('model', None), 'eager_sharding': False}}
    """
    spec = (None,) * (kernel_ndim - 2) + (axis, None)
    return {"kernel_metadata": _names(spec, eager)}
