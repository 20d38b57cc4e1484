"""The 2-D banana classification data (Raetsch et al. 2001; KEEL), as used in the GmP paper (Sec. 4.1.2).

File: ``<data dir>/banana/2d_banana.csv`` (header ``At1,At2,Class``, 5300 rows,
labels in {-1, 1}).  When it is missing it is downloaded (unless
``$GMPJAX_NO_DOWNLOAD`` is set) from the GmP authors' public repository,
pinned to a commit and checked against its sha256.

Protocol of the released notebook (``split_like_official``): a random subset of
1000 points (``numpy`` seed 0, without replacement), an 80/20 train/test split
(``sklearn.model_selection.train_test_split``, ``random_state=0``) and features
standardised with the training mean and (population) standard deviation.  The
notebook early-stops on the test set; here a validation part is carved from the
training part instead (``val_fraction``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gmpjax._optional import require
from gmpjax.data.paths import DataError, require_file

__all__ = ["BANANA_RELPATH", "BANANA_URL", "BANANA_SHA256", "load_banana", "BananaSplits", "banana_splits"]

BANANA_RELPATH = "banana/2d_banana.csv"
"""Path of the banana CSV under the data directory."""
BANANA_URL = (
    "https://raw.githubusercontent.com/Wenlin-Chen/geometric-parameterization/"
    "0c48483a1089c16183308216a990f4235219a0ca/2d_banana/2d_banana.csv"
)
"""Where the CSV is downloaded from when it is missing: the released GmP code, at a fixed commit."""
BANANA_SHA256 = "c76502bdf63e4f74e0290bd98da2c425aab247c919cee6dfbfe856694c484e55"
"""sha256 of the CSV; a file with another checksum is rejected."""


def load_banana(*, allow_download: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 5300 banana points.

    Returns:
      ``(x, y)``: ``x`` float64 of shape ``(5300, 2)``, ``y`` int32 of shape ``(5300,)`` in {0, 1}
      (the file's label -1 maps to 0).

    Raises:
      DataError: the file is missing and cannot be downloaded, or is corrupt; the message says how to fix it.
    """
    try:
        path = require_file(BANANA_RELPATH, url=BANANA_URL, sha256=BANANA_SHA256, allow_download=allow_download)
    except DataError as e:
        raise DataError(
            f"banana data unavailable: {e} (source: {BANANA_URL}, sha256 {BANANA_SHA256}; "
            "in this repository's CI the data directory is ../shared/data)"
        ) from None
    data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 3:
        raise DataError(
            f"{path} should have 3 columns At1,At2,Class; got shape {data.shape}. Delete it and re-download."
        )
    return data[:, :2], (data[:, 2] > 0).astype(np.int32)


@dataclass(frozen=True)
class BananaSplits:
    """Standardised splits (float64 features ``(N, 2)``, int32 labels ``(N,)``) and the standardisation used."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def banana_splits(
    *,
    subset: int = 1000,
    test_size: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
    allow_download: bool | None = None,
) -> BananaSplits:
    """The released notebook's subset and train/test split, plus a validation part carved from training.

    Args:
      subset: size of the random subset (numpy seed ``seed``, without replacement); 1000 as the paper.
      test_size: test fraction of the subset (0.2 -> 800/200).
      val_fraction: fraction of the *training* part held out for validation
        (0.2 -> 640/160); 0 reproduces the notebook, whose validation set is the test set.
      seed: seed of the subset and ``random_state`` of both splits.

    Standardisation uses the mean and population std of the fitting part only.
    """
    require("sklearn", "data", "the banana split")
    from sklearn.model_selection import train_test_split

    x, y = load_banana(allow_download=allow_download)
    if not (isinstance(subset, int) and 2 <= subset <= len(x)):
        raise ValueError(f"subset must be an int in [2, {len(x)}] (got {subset!r}).")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1) (got {test_size!r}).")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1) (got {val_fraction!r}); use 0 for the notebook's protocol.")
    rng = np.random.RandomState(seed)
    idx = rng.choice(len(x), subset, replace=False)
    x, y = x[idx], y[idx]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed)
    if val_fraction > 0:
        x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=val_fraction, random_state=seed)
    else:
        x_va, y_va = x_te, y_te
    mean, std = x_tr.mean(0), x_tr.std(0)
    f = lambda a: (a - mean) / std  # noqa: E731
    return BananaSplits(f(x_tr), y_tr, f(x_va), y_va, f(x_te), y_te, mean, std)
