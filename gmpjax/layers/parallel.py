"""Tensor-parallel annotations of layers: the metadata keywords that split a layer's parameters over a mesh axis.

They only annotate (``nnx.Param(..., out_sharding=...)``); ``train.sharding`` places the annotated
state on a mesh and shards the train step. They live with the layers because a model built column or row
parallel needs nothing from the training code.

>>> column_parallel("gmp")["theta_metadata"]
{'out_sharding': ('model', None), 'eager_sharding': False}
"""

from __future__ import annotations

from typing import Any

import jax

from gmpjax.layers.registry import check_parameterization

__all__ = ["MODEL_AXIS", "column_parallel", "row_parallel"]

MODEL_AXIS = "model"
"""The mesh axis name the annotations use by default."""


def _names(spec: tuple, eager: bool) -> dict[str, Any]:
    if eager and jax.sharding.get_abstract_mesh().empty:
        raise ValueError(
            "eager=True shards each parameter as the layer is built, which needs a mesh: build the model under "
            "`with jax.set_mesh(mesh):`, or keep eager=False and place the state with shard_state(state, mesh)."
        )
    return {"out_sharding": spec} if eager else {"out_sharding": spec, "eager_sharding": False}


def column_parallel(
    parameterization: str, *, kernel_ndim: int = 2, axis: str = MODEL_AXIS, eager: bool = False
) -> dict[str, Any]:
    """Metadata keywords that split a layer of ``parameterization`` along its outputs (column parallel).

    Pass the result as ``**kwargs`` to ``make_dense`` / ``make_conv`` (or the layer
    class). GmP: ``theta`` (out, fan_in-1) is split on axis 0, ``radius`` and
    ``offset`` (out,) on their only axis -- sharding theta along its own input
    axis is not supported. Standard / WN / BN layers: the kernel's last (output)
    axis, bias, WN gain and norm statistics on the output axis.

    Args:
      parameterization: "sp", "wn", "wn_mbn", "bn", "gmp" or "gmp_imn".
      kernel_ndim: 2 for a dense kernel (in, out), 3/4/5 for a 1/2/3-D conv kernel.
      axis: the mesh axis the outputs are split over.
      eager: keep flax's eager sharding (the layer must then be built under
        ``jax.set_mesh(mesh)``); by default the parameters are only annotated and
        ``shard_state`` places them.

    >>> column_parallel("gmp")["theta_metadata"]
    {'out_sharding': ('model', None), 'eager_sharding': False}
    """
    try:
        p = check_parameterization(parameterization)
    except ValueError:
        raise ValueError(f"column_parallel: unknown parameterization {parameterization!r}.") from None
    vec = _names((axis,), eager)
    if p in ("gmp", "gmp_imn"):
        return {"theta_metadata": _names((axis, None), eager), "radius_metadata": vec, "offset_metadata": vec}
    out = {"kernel_metadata": _names((None,) * (kernel_ndim - 1) + (axis,), eager), "bias_metadata": vec}
    if p in ("wn", "wn_mbn"):
        out["g_metadata"] = vec
    if p in ("bn", "wn_mbn"):
        out["norm_metadata"] = vec
    if p not in ("sp", "wn", "wn_mbn", "bn"):
        raise ValueError(f"column_parallel: unknown parameterization {parameterization!r}.")
    return out


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
