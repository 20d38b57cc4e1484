"""Settings and summaries shared by the experiment scripts (Levy, banana, quickstart, UCI, transformer LM)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

COLORS = {"sp": "tab:red", "wn": "tab:green", "bn": "tab:purple", "gmp": "tab:blue"}


def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` (0 for n = 1).

    >>> mean_se([1.0, 3.0])
    (2.0, 1.0)
    """
    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), se
