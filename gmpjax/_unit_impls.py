"""Implementations of the angle -> unit-vector map u(theta).

All implementations compute the same function (Eq. (11) of the GmP paper) on
``theta`` of shape ``(..., n-1)`` and return ``(..., n)``; they differ only in how
the cumulative product of sines and its backward pass are evaluated. None
divides by ``sin(theta_k)``, so values and gradients are finite at
``theta_k in {0, pi}``. ``IMPLS`` maps a name to the function and
``default_for_backend`` picks the one ``impl="auto"`` uses.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _pad_sin_cos(theta: Array) -> tuple[Array, Array]:
    """(1, sin theta_1, ..., sin theta_{n-1}) and (cos theta_1, ..., cos theta_{n-1}, 1)."""
    one = jnp.ones(theta.shape[:-1] + (1,), theta.dtype)
    return (
        jnp.concatenate([one, jnp.sin(theta)], axis=-1),
        jnp.concatenate([jnp.cos(theta), one], axis=-1),
    )


def unit_cumprod(theta: Array) -> Array:
    """Reference: ``cumprod(1, sin theta) * (cos theta, 1)`` with plain autodiff.

    JAX differentiates ``jnp.cumprod`` through an associative scan without
    division, so exact zeros of ``sin`` are harmless.
    """
    s, c = _pad_sin_cos(theta)
    return jnp.cumprod(s, axis=-1) * c


IMPLS: dict[str, Callable[[Array], Array]] = {
    "cumprod": unit_cumprod,
}

_DEFAULTS = {"cpu": "cumprod", "gpu": "cumprod", "tpu": "cumprod"}


def default_for_backend(backend: str) -> str:
    """Name of the implementation used by ``impl="auto"`` on ``backend``."""
    return _DEFAULTS.get(backend, "cumprod")
