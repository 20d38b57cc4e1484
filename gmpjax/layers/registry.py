"""One row per parameterization: everything the library asks about a parameterization, in one place.

A ``Parameterization`` row declares its traits: its Dense and Conv layers, the tensor-parallel roles of its
parameters' metadata keywords, how to read the CAB of its dense layer, its learning rate for the paper's
cross-validated comparisons and the output layer networks of it use. Models (``gmpjax.models``), the
tensor-parallel annotations (``gmpjax.layers.parallel``), ``gmpjax.cab.cab_of_layer`` and the experiments
ask the registry; nothing else branches on a parameterization's name. ``register`` adds a row from any file:

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> row = get("gmp+imn")  # case-insensitive, '+' or '-' for '_'
>>> row.name, row.cv_lr, row.head.__name__
('gmp_imn', 0.1, 'SPDense')
>>> make_dense("gmp", 3, 5, rngs=nnx.Rngs(0))(jnp.ones((4, 3))).shape
(4, 5)

The built-in rows: ``sp`` (standard layer), ``wn`` (weight norm), ``wn_mbn`` (weight norm + mean-only batch
norm of the pre-activations), ``bn`` (batch norm after the layer), ``gmp`` (GmP) and ``gmp_imn`` (GmP+IMN,
paper Eq. 14: ``r * relu(u(theta) . (x - E[x]) + lambda)``, the mean of the layer's *input*; the keyword
``imn_position="output"`` gives the released ImageNet32 code's placement, IMN after the layer).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal, cast

import jax.numpy as jnp
from flax import nnx

from gmpjax import cab as C
from gmpjax.layers import baselines as B
from gmpjax.layers.gmp import GmPDense
from gmpjax.layers.gmp_conv import GmPConv
from gmpjax.layers.imn import GmPIMN

__all__ = [
    "Parameterization",
    "Role",
    "STANDARD_ROLES",
    "PARAMETERIZATIONS",
    "register",
    "unregister",
    "get",
    "names",
    "check_parameterization",
    "default_lr",
    "learning_rates",
    "make_dense",
    "make_conv",
    "row_of_layer",
]

Role = Literal["kernel", "rows", "units"]
"""Where a parameter's output axis is, for column-parallel annotations (``gmpjax.layers.parallel``).

``"kernel"``: a standard kernel ``(..., out)`` (the last axis); ``"rows"``: a per-unit matrix ``(out, k)``
(the first axis, as GmP's ``theta``); ``"units"``: a per-unit vector ``(out,)`` (bias, radius, gain, norm).
"""
_ROLES = ("kernel", "rows", "units")

STANDARD_ROLES: Mapping[str, Role] = MappingProxyType({"kernel_metadata": "kernel", "bias_metadata": "units"})
"""The metadata keywords of a standard layer (``nnx.Linear``, ``nnx.Conv``, ``SPDense``) and their roles."""


def _keywords(fn: Callable) -> tuple[set[str], bool]:
    """Named parameters of ``fn`` (a class: its constructor) and whether it takes ``**kwargs``."""
    if isinstance(fn, type) and getattr(fn, "__signature__", None) is None:
        # an nnx module class reports (*args, **kwargs): read its __init__ (self is not a keyword anyone passes)
        params = [p for p in inspect.signature(fn.__init__).parameters.values() if p.name != "self"]  # type: ignore[misc]
    else:
        params = list(inspect.signature(fn).parameters.values())
    return {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}, any(
        p.kind is p.VAR_KEYWORD for p in params
    )


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """The traits of one parameterization (a registry row).

    Attributes:
      name: its name, lower case letters, digits and ``_`` (``"gmp_imn"``); users may spell it with any case
        and ``+``/``-`` for ``_``.
      dense: ``dense(in_features, out_features, **kwargs)`` builds its dense layer (a class or a function).
      conv: ``conv(in_features, out_features, kernel_size, **kwargs)`` builds its convolution; None: no conv.
      dense_keywords: the layer class whose keywords ``dense`` takes, for the keyword check of ``make_dense``
        (default: ``dense`` itself when it is a class); a function ``dense``'s own named keywords count too.
      conv_keywords: the same for ``conv``.
      layer_type: the class of what ``dense`` builds (default: ``dense`` when a class); ``row_of_layer``
        finds the row of a layer by it.
      column_parallel: metadata keyword of its layers -> ``Role`` of the parameter it annotates; the
        column-parallel annotations (split over the outputs) are made from it.
      cab: ``cab(layer) -> gmpjax.cab.CAB`` of a dense layer built by ``dense`` (None: not supported).
      cv_lr: the learning rate of the paper's cross-validated comparisons (``--lr cv``).
      head: the output layer of networks of this parameterization (``SPDense`` or ``WNDense`` in the
        released code), called as ``head(in, out, activation=None, rngs=..., **kwargs)``.
      batch_statistics: it normalises its own pre-activations with batch statistics (BN, MBN); sequence
        models refuse it (the statistics would mix positions).
    """

    name: str
    dense: Callable[..., nnx.Module]
    conv: Callable[..., nnx.Module] | None = None
    dense_keywords: type | None = None
    conv_keywords: type | None = None
    layer_type: type | None = None
    column_parallel: Mapping[str, Role] = dataclasses.field(default_factory=lambda: STANDARD_ROLES)
    cab: Callable[[nnx.Module], C.CAB] | None = None
    cv_lr: float = 0.01
    head: Callable[..., nnx.Module] = B.SPDense
    batch_statistics: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(
                f"Parameterization: name must be lower case letters, digits and '_' starting with a letter "
                f"(got {self.name!r}), e.g. 'my_param'."
            )
        for arg in ("dense", "conv", "cab", "head"):
            fn = getattr(self, arg)
            if arg != "dense" and fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"Parameterization {self.name!r}: {arg} must be callable (got {fn!r}).")
        if isinstance(self.cv_lr, bool) or not isinstance(self.cv_lr, int | float) or not self.cv_lr > 0:
            raise ValueError(f"Parameterization {self.name!r}: cv_lr must be a positive number (got {self.cv_lr!r}).")
        if not math.isfinite(self.cv_lr):
            raise ValueError(f"Parameterization {self.name!r}: cv_lr must be finite (got {self.cv_lr!r}).")
        bad = {k: v for k, v in dict(self.column_parallel).items() if v not in _ROLES or not k.endswith("_metadata")}
        if bad:
            raise ValueError(
                f"Parameterization {self.name!r}: column_parallel maps '<param>_metadata' keywords to one of "
                f"{_ROLES}; got {bad}."
            )
        object.__setattr__(self, "column_parallel", MappingProxyType(dict(self.column_parallel)))
        for arg, src in (("dense_keywords", self.dense), ("conv_keywords", self.conv), ("layer_type", self.dense)):
            if getattr(self, arg) is None and isinstance(src, type):
                object.__setattr__(self, arg, src)
        if self.layer_type is None:
            raise TypeError(
                f"Parameterization {self.name!r}: dense is a function, so give layer_type (the class it builds)."
            )

    def accepts(self, keyword: str, *, conv: bool = False) -> bool:
        """Whether its dense (or conv) layer takes ``keyword`` (e.g. ``"init"``).

        >>> get("gmp").accepts("init"), get("sp").accepts("init")
        (True, False)
        """
        named, _ = self._accepted(conv)
        return keyword in named

    def _accepted(self, conv: bool) -> tuple[set[str], bool]:
        factory, cls = (self.conv, self.conv_keywords) if conv else (self.dense, self.dense_keywords)
        if factory is None:
            raise ValueError(f"parameterization {self.name!r} has no convolution (its row has conv=None).")
        named, var = _keywords(cls if cls is not None else factory)
        if cls is not None and not isinstance(factory, type):
            own, _ = _keywords(factory)  # a factory function's own keywords (e.g. imn_position)
            named |= own
        return named, var

    def _check_keywords(self, kwargs: Mapping[str, Any], conv: bool, who: str) -> None:
        """Name a keyword the layer does not take (e.g. ``init`` for ``sp``), before building it."""
        named, var = self._accepted(conv)
        unknown = sorted(set(kwargs) - named)
        if unknown and not var:  # a wrapper that forwards **kwargs (BN, WN+MBN): the inner layer checks them
            cls = (self.conv_keywords or self.conv) if conv else (self.dense_keywords or self.dense)
            raise TypeError(
                f"{who}({self.name!r}): {getattr(cls, '__name__', cls)} takes no keyword "
                f"{', '.join(map(repr, unknown))}; its keywords are "
                f"{sorted(named - {'in_features', 'out_features', 'kernel_size'})}."
            )

    def build_dense(self, in_features: int, out_features: int, **kwargs: Any) -> nnx.Module:
        """Its dense layer, after checking the keywords."""
        self._check_keywords(kwargs, False, "make_dense")
        return self.dense(in_features, out_features, **kwargs)

    def build_conv(self, in_features: int, out_features: int, kernel_size: Any, **kwargs: Any) -> nnx.Module:
        """Its convolution, after checking the keywords."""
        self._check_keywords(kwargs, True, "make_conv")
        assert self.conv is not None  # _check_keywords raised otherwise
        return self.conv(in_features, out_features, kernel_size, **kwargs)


# --------------------------------------------------------------------------- the registry

_ROWS: dict[str, Parameterization] = {}


def _key(name: Any) -> Any:
    return name.lower().replace("+", "_").replace("-", "_") if isinstance(name, str) else name


def register(row: Parameterization, *, replace: bool = False) -> Parameterization:
    """Add ``row`` to the registry (``replace=True`` overwrites a row of the same name); returns it.

    >>> row = register(dataclasses.replace(get("sp"), name="sp_copy"))
    >>> get("SP-copy") is row
    True
    >>> _ = unregister("sp_copy")
    """
    if not isinstance(row, Parameterization):
        raise TypeError(f"register: expected a Parameterization row (got {type(row).__name__}).")
    if row.name in _ROWS and not replace:
        raise ValueError(
            f"register: a parameterization named {row.name!r} is already registered; choose another name or "
            "pass replace=True."
        )
    if row.name in PARAMETERIZATIONS and replace:
        raise ValueError(f"register: the built-in parameterization {row.name!r} cannot be replaced.")
    _ROWS[row.name] = row
    return row


def unregister(name: str) -> Parameterization:
    """Remove a user-registered row and return it (the built-in rows stay)."""
    row = get(name)
    if row.name in PARAMETERIZATIONS:
        raise ValueError(f"unregister: {row.name!r} is built in and cannot be removed.")
    return _ROWS.pop(row.name)


def names() -> tuple[str, ...]:
    """The registered parameterization names, built-in first, in registration order."""
    return tuple(_ROWS)


def get(name: str) -> Parameterization:
    """The row of ``name`` (case-insensitive, ``+``/``-`` for ``_``), or a ValueError naming the choices."""
    row = _ROWS.get(_key(name))
    if row is None:
        raise ValueError(f"unknown parameterization {name!r}; choose one of {', '.join(_ROWS)} (or register one).")
    return row


def check_parameterization(name: str) -> str:
    """Normalise a parameterization name (case-insensitive, '+' or '-' allowed) or raise ValueError.

    >>> check_parameterization("GmP+IMN")
    'gmp_imn'
    """
    return get(name).name


def default_lr(name: str) -> float:
    """The learning rate of the paper's cross-validated comparisons: 0.1 for GmP, 0.01 for the others.

    >>> default_lr("gmp_imn"), default_lr("wn_mbn")
    (0.1, 0.01)
    """
    return get(name).cv_lr


def learning_rates(settings: Sequence[str | float], name: str | None = None) -> tuple[float, ...]:
    """The learning rates ``settings`` give parameterization ``name``, duplicates removed (order kept).

    Each setting is ``"cv"`` (``default_lr(name)``, the paper's cross-validated rate) or a positive number
    (a float or its text, as on a command line).

    >>> learning_rates(("cv", "0.3", 0.1), "gmp"), learning_rates(["1e-3"])
    ((0.1, 0.3), (0.001,))
    """
    out: list[float] = []
    for v in settings:
        if v == "cv":
            if name is None:
                raise ValueError("learning rate 'cv' needs a parameterization (its row's cv_lr); give numbers")
            x = default_lr(name)
        else:
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = math.nan
        if not 0 < x < math.inf:
            raise ValueError(f"values must be 'cv' or positive numbers (got {v!r})")
        if x not in out:
            out.append(x)
    return tuple(out)


def make_dense(name: str, in_features: int, out_features: int, **kwargs: Any) -> nnx.Module:
    """Dense layer of parameterization ``name`` (``names()``); keywords go to the layer's constructor.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> make_dense("gmp", 3, 5, rngs=nnx.Rngs(0))(jnp.ones((4, 3))).shape
    (4, 5)
    """
    return get(name).build_dense(in_features, out_features, **kwargs)


def make_conv(name: str, in_features: int, out_features: int, kernel_size: Any, **kwargs: Any) -> nnx.Module:
    """Convolution of parameterization ``name``; keyword arguments as in ``nnx.Conv`` (see ``docs/layers.md``).

    An int ``kernel_size`` is a 1-D kernel (as in ``nnx.Conv``); a tuple's length (1, 2 or 3) sets the rank.

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> make_conv("gmp_imn", 3, 5, (3,), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 3))).shape
    (2, 8, 5)
    """
    return get(name).build_conv(in_features, out_features, kernel_size, **kwargs)


def row_of_layer(layer: nnx.Module, *, who: str = "row_of_layer") -> Parameterization:
    """The row whose dense layer ``layer`` is (the most derived ``layer_type`` that matches), or a TypeError.

    >>> from flax import nnx
    >>> row_of_layer(make_dense("wn", 2, 3, rngs=nnx.Rngs(0))).name
    'wn'
    """
    rows = [r for r in _ROWS.values() if isinstance(layer, r.layer_type)]  # type: ignore[arg-type]
    if not rows:
        known = ", ".join(f"{r.layer_type.__name__} ({r.name})" for r in _ROWS.values())  # type: ignore[union-attr]
        raise TypeError(
            f"{who}: unsupported layer type {type(layer).__name__}; pass a dense layer of a registered "
            f"parameterization: {known}, e.g. model.hidden[0]."
        )
    return max(rows, key=lambda r: len(r.layer_type.__mro__))  # type: ignore[union-attr]


# --------------------------------------------------------------------------- CAB readers of the built-in rows


def _cab_sp(layer: Any) -> C.CAB:
    w = layer.kernel[...].T
    return C.CAB(C.sp_direction(w), C.sp_location(w, layer.bias[...]))


def _cab_wn(layer: Any) -> C.CAB:
    w = layer.kernel.T
    return C.CAB(C.sp_direction(w), C.sp_location(w, layer.bias[...]))


def _cab_bn(layer: Any) -> C.CAB:
    """Moving statistics (as the released code); the normal is ``sign(gamma) w/||w||``."""
    inner, n = layer.layer, layer.norm
    w = inner.kernel[...].T
    gamma = n.scale[...]
    b_eff = C.bn_effective_bias(inner.bias[...], gamma, n.bias[...], n.mean[...], n.var[...], n.epsilon)
    sign = jnp.where(gamma < 0, -1.0, 1.0).astype(w.dtype)
    return C.CAB(sign[:, None] * C.sp_direction(w), C.sp_location(w, b_eff))


def _cab_wn_mbn(layer: Any) -> C.CAB:
    w = layer.layer.kernel.T
    b_eff = layer.layer.bias[...] - layer.norm.mean[...]
    return C.CAB(C.sp_direction(w), C.sp_location(w, b_eff))


def _cab_gmp(layer: Any) -> C.CAB:
    u = layer.unit()
    return C.CAB(u, C.gmp_location(u, layer.offset[...]))


def _cab_gmp_imn(layer: Any) -> C.CAB:
    """IMN of the input with moving mean ``mu`` shifts the offset to ``lambda - u . mu``; IMN after: no shift."""
    inner = layer.layer
    if not isinstance(inner, GmPDense):
        raise TypeError(f"cab_of_layer: a GmP+IMN layer over {type(inner).__name__}; pass a dense one.")
    if layer.position == "output":
        return _cab_gmp(inner)
    u = inner.unit()
    mu = layer.imn.mean[...].astype(u.dtype)
    return C.CAB(u, C.gmp_location(u, cast(nnx.Param, inner.offset)[...] - u @ mu))


# --------------------------------------------------------------------------- GmP+IMN and the built-in rows


def _imn_unit(layer_cls: type) -> Callable[..., GmPIMN]:
    """GmP+IMN over ``layer_cls``: ``imn_position="input"`` (paper Eq. 14) or ``"output"`` (released VGG code)."""

    def build(*sizes: Any, imn_position: str = "input", **kwargs: Any) -> GmPIMN:
        if imn_position not in ("input", "output"):
            raise ValueError(
                f"gmp_imn: imn_position must be 'input' (IMN of the layer's input, paper Eq. 14) or 'output' "
                f"(IMN after the layer, the released VGG code); got {imn_position!r}."
            )
        layer = layer_cls(*sizes, **kwargs)
        return GmPIMN(layer, position=imn_position, param_dtype=kwargs.get("param_dtype", jnp.float32))

    build.__name__ = build.__qualname__ = f"gmp_imn_{layer_cls.__name__}"
    return build


_GMP_ROLES: Mapping[str, Role] = {"theta_metadata": "rows", "radius_metadata": "units", "offset_metadata": "units"}
_BUILT_IN: Sequence[Parameterization] = (
    Parameterization("sp", B.SPDense, B.SPConv, cab=_cab_sp),
    Parameterization(
        "wn",
        B.WNDense,
        B.WNConv,
        column_parallel={**STANDARD_ROLES, "g_metadata": "units"},
        cab=_cab_wn,
        head=B.WNDense,
    ),
    Parameterization(
        "wn_mbn",
        B.WNMBNDense,
        B.WNMBNConv,
        column_parallel={**STANDARD_ROLES, "g_metadata": "units", "norm_metadata": "units"},
        cab=_cab_wn_mbn,
        head=B.WNDense,
        batch_statistics=True,
    ),
    Parameterization(
        "bn",
        B.BNDense,
        B.BNConv,
        column_parallel={**STANDARD_ROLES, "norm_metadata": "units"},
        cab=_cab_bn,
        batch_statistics=True,
    ),
    Parameterization("gmp", GmPDense, GmPConv, column_parallel=_GMP_ROLES, cab=_cab_gmp, cv_lr=0.1),
    Parameterization(
        "gmp_imn",
        _imn_unit(GmPDense),
        _imn_unit(GmPConv),
        dense_keywords=GmPDense,
        conv_keywords=GmPConv,
        layer_type=GmPIMN,
        column_parallel=_GMP_ROLES,
        cab=_cab_gmp_imn,
        cv_lr=0.1,
    ),
)
PARAMETERIZATIONS: tuple[str, ...] = tuple(r.name for r in _BUILT_IN)
"""The built-in parameterizations (``names()`` also lists the registered ones)."""
for _row in _BUILT_IN:
    register(_row)
