"""Losses and metrics on arrays, and ``on_batch``, which turns one into an engine loss ``(model, batch) -> value``.

Every function reduces to a scalar mean over the rows (``(N, ...)`` arrays):

* regression: ``mse = mean((pred - target)^2)``, ``mae = mean(|pred - target|)``;
* binary classification with logits ``z`` and labels ``y`` in {0, 1}: ``bce`` (sigmoid
  cross-entropy, ``optax.sigmoid_binary_cross_entropy``) and ``accuracy`` (``z > 0``
  against ``y > 0.5``, when ``z`` and ``y`` have the same shape);
* multi-class with logits ``(N, C)`` and integer labels ``(N,)``: ``xent`` (softmax
  cross-entropy, ``optax.softmax_cross_entropy_with_integer_labels``), ``accuracy``
  (arg-max) and ``top_k_accuracy``.

>>> import jax.numpy as jnp
>>> float(mse(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))), float(mae(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0])))
(2.5, 1.5)
>>> logits = jnp.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
>>> float(accuracy(logits, jnp.array([0, 1]))), float(top_k_accuracy(logits, jnp.array([0, 1]), 2))
(0.5, 1.0)
>>> float(accuracy(jnp.array([0.3, -1.0]), jnp.array([1.0, 1.0])))
0.5
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Array = jax.Array
ArrayFn = Callable[[Array, Array], Array]

__all__ = ["mse", "mae", "bce", "xent", "accuracy", "top_k_accuracy", "top_k_hits", "on_batch"]


def mse(pred: Array, target: Array) -> Array:
    """Mean squared error ``mean((pred - target)^2)`` over every entry."""
    return jnp.mean((pred - target) ** 2)


def mae(pred: Array, target: Array) -> Array:
    """Mean absolute error ``mean(|pred - target|)`` over every entry."""
    return jnp.mean(jnp.abs(pred - target))


def bce(logits: Array, labels: Array) -> Array:
    """Binary cross-entropy of sigmoid ``logits`` against ``labels`` in [0, 1] (same shape), averaged."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def xent(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy of ``logits (N, C)`` against integer ``labels (N,)``, averaged."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: Array, labels: Array) -> Array:
    """Share of correct predictions.

    Binary when ``logits`` and ``labels`` have the same shape (``logits > 0`` vs ``labels > 0.5``,
    in the logits' dtype); otherwise arg-max of ``logits (N, C)`` vs integer ``labels (N,)``.
    """
    if jnp.shape(logits) == jnp.shape(labels):
        return jnp.mean((logits > 0) == (labels.astype(logits.dtype) > 0.5), dtype=logits.dtype)
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def top_k_hits(logits: Array, labels: Array, ks: tuple[int, ...] = (1, 5)) -> dict[str, Array]:
    """Per example, ``{"top<k>": 1.0 where the label is among the k largest logits}`` (float32, shape ``(N,)``).

    ``k`` above the number of classes ``C`` counts as ``C`` (every label is a hit).

    >>> hits = top_k_hits(jnp.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]]), jnp.array([2, 0]), (1, 2))
    >>> hits["top1"].tolist(), hits["top2"].tolist()
    ([0.0, 1.0], [1.0, 1.0])
    """
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"top_k_hits: ks must be ints >= 1 (got {ks!r}).")
    top = jax.lax.top_k(logits, min(max(ks), logits.shape[-1]))[1] == labels[..., None]
    return {f"top{k}": jnp.any(top[..., :k], axis=-1).astype(jnp.float32) for k in ks}


def top_k_accuracy(logits: Array, labels: Array, k: int = 5) -> Array:
    """Share of rows whose integer label is among the ``k`` largest of ``logits (N, C)``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k_accuracy: k must be an int >= 1 (got {k!r}).")
    top = jax.lax.top_k(logits, k)[1]
    return jnp.mean(jnp.any(top == labels[..., None], axis=-1))


def on_batch(fn: ArrayFn | dict[str, ArrayFn], *, squeeze: bool = False) -> Callable[[nnx.Module, Any], Any]:
    """``(model, (x, y)) -> fn(model(x), y)``: an array loss or metric as the engine's loss / eval function.

    Args:
      fn: an array function of this module (or any ``(pred, target) -> value``), or a dict of
        them (the result is then the dict of their values, e.g. ``{"acc": accuracy}``).
      squeeze: use the model's first output column, ``model(x)[:, 0]`` (a scalar regression
        or binary head against targets of shape ``(N,)``).

    >>> import jax.numpy as jnp
    >>> loss = on_batch(mse)
    >>> float(loss(lambda x: 2 * x, (jnp.ones((3, 1)), jnp.zeros((3, 1)))))
    4.0
    """

    def out(model: Any, x: Any) -> Array:
        y = model(x)
        return y[:, 0] if squeeze else y

    if isinstance(fn, dict):
        fns = dict(fn)
        return lambda model, batch: (lambda p: {k: f(p, batch[1]) for k, f in fns.items()})(out(model, batch[0]))
    return lambda model, batch: fn(out(model, batch[0]), batch[1])
