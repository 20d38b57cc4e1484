"""The 1-D Levy regression task of the GmP paper (Sec. 4.1.1, Fig. 2): generated, no download.

As in the authors' released notebook: ``num_train`` training points
``x ~ U(-10, 10)`` with ``y = levy(x) + N(0, noise^2)``, both drawn from one
``numpy.random.RandomState(seed)`` (first the ``x``, then the noise), and a
noiseless test grid ``x = -10, -9.9, ..., 10`` (201 points).

>>> d = levy_data()
>>> d["x"].shape, d["y"].shape, d["x_test"].shape, d["y_test"].shape
((50, 1), (50, 1), (201, 1), (201, 1))
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["levy", "levy_data"]


def levy(x: ArrayLike) -> np.ndarray:
    """The 1-D Levy function, elementwise (any shape, float64).

    ``w = 1 + (x - 1) / 4``, ``f(x) = sin^2(pi w) + (w - 1)^2 (1 + sin^2(2 pi w))``
    (the middle sum of the d-dimensional Levy function is empty for d = 1).
    Its global minimum is ``f(1) = 0`` (up to rounding of ``sin(pi)``).

    >>> round(float(levy(1.0)), 12), round(float(levy(0.0)), 6)
    (0.0, 0.625)
    """
    w = 1.0 + (np.asarray(x, np.float64) - 1.0) / 4.0
    return np.sin(np.pi * w) ** 2 + (w - 1.0) ** 2 * (1.0 + np.sin(2.0 * np.pi * w) ** 2)


def levy_data(num_train: int = 50, noise: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """Training points and the test grid of the Levy task, float64 arrays of shape ``(N, 1)``.

    Args:
      num_train: training points (>= 1).
      noise: standard deviation of the Gaussian label noise (>= 0).
      seed: ``numpy`` seed of the draw (the released notebook uses 0).

    Returns:
      ``{"x": (num_train, 1), "y": (num_train, 1), "x_test": (201, 1), "y_test": (201, 1)}``;
      ``y_test = levy(x_test)`` has no noise.
    """
    if isinstance(num_train, bool) or not isinstance(num_train, int | np.integer) or num_train < 1:
        raise ValueError(f"levy_data: num_train must be an int >= 1 (got {num_train!r}).")
    if not noise >= 0:
        raise ValueError(f"levy_data: noise must be >= 0 (got {noise!r}).")
    rng = np.random.RandomState(seed)
    x = rng.uniform(-10.0, 10.0, size=(num_train, 1))
    y = levy(x) + rng.normal(0.0, noise, size=(num_train, 1))
    x_test = np.arange(-10.0, 10.1, 0.1).reshape(-1, 1)
    return {"x": x, "y": y, "x_test": x_test, "y_test": levy(x_test)}
