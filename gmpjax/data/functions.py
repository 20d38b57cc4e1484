"""The 1-D target functions of the triangular-wave paper (Milkert, Hyde & Laine, ICML 2025) and their samples.

Each target is a function on ``[0, 1]`` with the ``sign`` its ``gmpjax.layers.TriangleNet`` needs (-1: convex,
``x - G_d``; +1: concave, ``x + G_d``, with a trainable output gain and offset). Dense fits use an equispaced
grid; the sparse table draws a few uniform training and test points per run (one key per target,
``jax.random.fold_in(key, stable_tag(name))``, so adding a target does not move the others' draws).

>>> TARGETS["x3"].label, TARGETS["sin"].sign, TARGETS["sin"].output_affine
('x^3', 1, True)
>>> x, y = dense_samples(TARGETS["x3"].fn, 5)
>>> x.shape, y[:, 0].tolist()
((5, 1), [0.0, 0.015625, 0.125, 0.421875, 1.0])
>>> (xtr, ytr), (xte, yte) = sparse_samples(TARGETS["x11"].fn, jax.random.key(0), runs=3, n_train=10, n_test=4)
>>> xtr.shape, xte.shape, bool(jnp.all((0 <= xtr) & (xtr < 1)))
((3, 10, 1), (3, 4, 1), True)
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

__all__ = ["TARGETS", "Target", "dense_samples", "sparse_samples", "stable_tag"]


@dataclasses.dataclass(frozen=True)
class Target:
    """A target ``fn`` on ``[0, 1]``, its TriangleNet ``sign``, whether it needs ``output_affine``, a ``label``."""

    fn: Callable[[Array], Array]
    sign: int
    output_affine: bool
    label: str


TARGETS: dict[str, Target] = {
    "x3": Target(lambda x: x**3, -1, False, "x^3"),
    "x11": Target(lambda x: x**11, -1, False, "x^11"),
    "sin": Target(jnp.sin, +1, True, "sin x"),
    "tanh3": Target(lambda x: jnp.tanh(3 * x), +1, True, "tanh 3x"),
}
"""The paper's targets: convex ``x^3``, ``x^11`` and concave ``sin x``, ``tanh 3x``."""


def stable_tag(name: str) -> int:
    """A 31-bit integer for ``name``, the same in every process (Python's ``hash`` is salted per process).

    >>> stable_tag("x3") == stable_tag("x3") != stable_tag("x11")
    True
    """
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def dense_samples(fn: Callable[[Array], Array], n: int, dtype: jnp.dtype = jnp.float32) -> tuple[Array, Array]:
    """``(x, fn(x))`` on ``n`` equispaced points of ``[0, 1]``, both ``(n, 1)``."""
    if n < 1:
        raise ValueError(f"dense_samples: n must be >= 1 (got {n}).")
    x = jnp.linspace(0.0, 1.0, n, dtype=dtype)[:, None]
    return x, fn(x)


def sparse_samples(
    fn: Callable[[Array], Array], key: Array, *, runs: int, n_train: int, n_test: int, dtype: jnp.dtype = jnp.float32
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    """Per run, ``n_train`` training and ``n_test`` test points ``x ~ U[0, 1)`` with ``fn(x)``: ``(runs, n, 1)`` each.

    The training draws use the first half of ``jax.random.split(key)``, the test draws the second.
    """
    if min(runs, n_train, n_test) < 1:
        raise ValueError(f"sparse_samples: runs, n_train and n_test must be >= 1 (got {runs}, {n_train}, {n_test}).")
    k1, k2 = jax.random.split(key)
    xtr = jax.random.uniform(k1, (runs, n_train, 1), dtype)
    xte = jax.random.uniform(k2, (runs, n_test, 1), dtype)
    return (xtr, fn(xtr)), (xte, fn(xte))
