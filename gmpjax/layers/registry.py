"""One place to build a layer by parameterization name, so experiments switch with a string."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from gmpjax.layers import baselines as B
from gmpjax.layers.gmp import GmPDense
from gmpjax.layers.gmp_conv import GmPConv
from gmpjax.layers.imn import GmPIMN

__all__ = ["PARAMETERIZATIONS", "make_dense", "make_conv", "check_parameterization"]


def _gmp_imn_dense(i, o, **kw):
    return GmPIMN(GmPDense(i, o, **kw), param_dtype=kw.get("param_dtype", jnp.float32))


def _gmp_imn_conv(i, o, k, **kw):
    return GmPIMN(GmPConv(i, o, k, **kw), param_dtype=kw.get("param_dtype", jnp.float32))


_DENSE: dict[str, Callable[..., nnx.Module]] = {
    "sp": B.SPDense,
    "wn": B.WNDense,
    "wn_mbn": B.WNMBNDense,
    "bn": B.BNDense,
    "gmp": GmPDense,
    "gmp_imn": _gmp_imn_dense,
}
_CONV: dict[str, Callable[..., nnx.Module]] = {
    "sp": B.SPConv,
    "wn": B.WNConv,
    "wn_mbn": B.WNMBNConv,
    "bn": B.BNConv,
    "gmp": GmPConv,
    "gmp_imn": _gmp_imn_conv,
}
PARAMETERIZATIONS: tuple[str, ...] = tuple(_DENSE)
"""The parameterization names ``make_dense``/``make_conv`` and every model accept."""
#: The layer class whose keywords each entry takes.
_DENSE_CLASS: dict[str, type] = {**{k: v for k, v in _DENSE.items() if isinstance(v, type)}, "gmp_imn": GmPDense}
_CONV_CLASS: dict[str, type] = {**{k: v for k, v in _CONV.items() if isinstance(v, type)}, "gmp_imn": GmPConv}


def check_parameterization(name: str) -> str:
    """Normalise a parameterization name (case-insensitive, '+' or '-' allowed) or raise ValueError."""
    key = name.lower().replace("+", "_").replace("-", "_") if isinstance(name, str) else name
    if key not in _DENSE:
        raise ValueError(f"unknown parameterization {name!r}; choose one of {', '.join(PARAMETERIZATIONS)}.")
    return key


def make_dense(name: str, in_features: int, out_features: int, **kwargs) -> nnx.Module:
    """Dense layer of parameterization ``name`` ("sp", "wn", "wn_mbn", "bn", "gmp", "gmp_imn").

    Keyword arguments (``activation``, ``rngs``, ...) go to the layer's constructor.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> make_dense("gmp", 3, 5, rngs=nnx.Rngs(0))(jnp.ones((4, 3))).shape
    (4, 5)
    """
    p = check_parameterization(name)
    _check_keywords(p, _DENSE_CLASS[p], kwargs, "make_dense")
    return _DENSE[p](in_features, out_features, **kwargs)


def make_conv(name: str, in_features: int, out_features: int, kernel_size, **kwargs) -> nnx.Module:
    """Convolution of parameterization ``name``; keyword arguments as in ``nnx.Conv`` (see ``docs/layers.md``).

    An int ``kernel_size`` is a 1-D kernel (as in ``nnx.Conv``); a tuple's length (1, 2 or 3) sets the rank.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> make_conv("gmp_imn", 3, 5, (3,), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 3))).shape
    (2, 8, 5)
    """
    p = check_parameterization(name)
    _check_keywords(p, _CONV_CLASS[p], kwargs, "make_conv")
    return _CONV[p](in_features, out_features, kernel_size, **kwargs)


def _check_keywords(p: str, cls: type, kwargs: dict, who: str) -> None:
    """Name a keyword the parameterization's layer does not take (e.g. ``init`` for ``sp``), before building it."""
    params = inspect.signature(cls).parameters
    if any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values()):
        return  # a wrapper that forwards its keywords (BN, WN+MBN): the inner layer checks them
    accepted = set(params)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"{who}({p!r}): {cls.__name__} takes no keyword {', '.join(map(repr, unknown))}; "
            f"its keywords are {sorted(accepted - {'in_features', 'out_features', 'kernel_size'})}."
        )
