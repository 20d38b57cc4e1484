"""Losses and metrics on arrays, and ``on_batch``, which turns one into an engine loss ``(model, batch) -> value``.

Every function reduces to a scalar mean over the rows (``(N, ...)`` arrays):

* regression: ``mse = mean((pred - target)^2)``, ``mae = mean(|pred - target|)``;
* binary classification with logits ``z`` and labels ``y`` in {0, 1}: ``bce`` (sigmoid
  cross-entropy, ``optax.sigmoid_binary_cross_entropy``) and ``accuracy`` (``z > 0``
  against ``y > 0.5``, when ``z`` and ``y`` have the same shape);
* multi-class with logits ``(N, C)`` and integer labels ``(N,)``: ``xent`` (softmax
  cross-entropy, ``optax.softmax_cross_entropy_with_integer_labels``), ``accuracy``
  (arg-max) and ``top_k_accuracy``; ``xent_top_k`` gives the mean cross-entropy with the
  top-k shares as a train loss with metrics.

``xent_sums`` instead gives sums over the (masked) rows with their ``count``: an ``eval_fn``
of ``gmpjax.train.trainer.HostTrainer``, whose totals over the evaluation batches give exact
means over a split that padded batches cover.

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

__all__ = [
    "mse",
    "mae",
    "bce",
    "xent",
    "xent_top_k",
    "xent_sums",
    "accuracy",
    "top_k_accuracy",
    "top_k_hits",
    "on_batch",
]


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
    """Softmax cross-entropy of ``logits (..., C)`` against integer ``labels (...)``, averaged over every label."""
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


def xent_top_k(logits: Array, labels: Array, ks: tuple[int, ...] = (1, 5)) -> tuple[Array, dict[str, Array]]:
    """A train loss with metrics: ``(xent(logits, labels), {"top<k>": share of top-k hits})``.

    Args:
      logits: ``(N, C)`` (or ``(..., C)``).
      labels: integer class labels, ``(N,)`` (or ``(...)``).
      ks: the ``k`` of each top-k share (``top_k_hits``).

    Returns:
      ``(mean_i ce_i, {"top<k>": mean_i hit_i})``, ``ce_i = -log softmax(logits_i)[labels_i]``.

    >>> loss, tops = xent_top_k(jnp.array([[0.0, 0.0], [0.0, 1.0]]), jnp.array([0, 0]), (1,))
    >>> round(float(loss), 4), float(tops["top1"])
    (1.0032, 0.5)
    """
    return xent(logits, labels), {k: v.mean() for k, v in top_k_hits(logits, labels, ks).items()}


def xent_sums(logits: Array, labels: Array, mask: Array | None = None, ks: tuple[int, ...] = ()) -> dict[str, Array]:
    """Sums over the kept rows of one batch: cross-entropy, top-k hits and their number.

    With ``ce_i = -log softmax(logits_i)[labels_i]``, ``hit_i^k = [labels_i among the k
    largest of logits_i]`` and ``m_i`` the mask (1 everywhere when ``None``)::

        {"loss": sum_i m_i ce_i, "top<k>": sum_i m_i hit_i^k, ..., "count": sum_i m_i}

    Summed over the batches of a split, ``loss / count`` is the exact mean cross-entropy and
    ``top<k> / count`` the top-k accuracy of its real rows (padding rows carry ``m_i = 0``):
    the ``eval_fn`` of ``gmpjax.train.trainer.HostTrainer``, whose default ``mean_metrics``
    divides by ``count``.

    Args:
      logits: ``(N, C)`` (or ``(..., C)``: every leading entry is a row).
      labels: integer class labels, ``(N,)`` (or ``(...)``).
      mask: ``None`` or weights of the rows, the shape of ``labels`` (1 keeps a row, 0 drops it).
      ks: the ``k`` of each top-k count (``top_k_hits``); none by default.

    Returns:
      ``{"loss", "top<k>" for k in ks, "count"}``, scalars (``count`` float32 without a mask,
      else in the mask's dtype).

    Raises:
      ValueError: ``mask`` does not have the shape of ``labels``.

    >>> logits, labels = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]]), jnp.array([0, 0, 1])
    >>> s = xent_sums(logits, labels, mask=jnp.array([1.0, 1.0, 0.0]), ks=(1,))
    >>> round(float(s["loss"]), 4), float(s["top1"]), float(s["count"])
    (2.2539, 1.0, 2.0)
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hits = top_k_hits(logits, labels, ks) if ks else {}
    if mask is None:
        return {"loss": jnp.sum(ce), **{k: jnp.sum(v) for k, v in hits.items()}, "count": jnp.float32(ce.size)}
    if jnp.shape(mask) != jnp.shape(labels):
        raise ValueError(
            f"xent_sums: mask must have the shape of labels {jnp.shape(labels)} (got {jnp.shape(mask)}); "
            "pass one weight per row, 1 to keep it and 0 for a padding row."
        )
    return {"loss": jnp.sum(ce * mask), **{k: jnp.sum(v * mask) for k, v in hits.items()}, "count": jnp.sum(mask)}


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
