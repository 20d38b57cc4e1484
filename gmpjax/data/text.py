"""An embedded character-level text corpus: the source of Python standard-library modules.

Every Python installation ships these files, so the corpus exists on every
machine without a download. The text is read as UTF-8 bytes (vocabulary of 256
symbols); the listed modules are ASCII except for a handful of characters, so
bits per byte equal bits per character up to well under 0.1 %. The file lists
are fixed (``TRAIN_FILES`` / ``VALID_FILES``, paths relative to
``sysconfig.get_paths()["stdlib"]``), and the split is by file, so validation
text is never seen in training. The files are those of the running interpreter:
numbers are comparable between machines with the same Python minor version
(``corpus_info`` records it).

>>> corpus = load_stdlib_corpus()
>>> corpus.train.dtype, corpus.vocab_size
(dtype('uint8'), 256)
>>> len(corpus.valid) > 100_000
True
>>> decode(corpus.valid[3:9])  # bisect.py opens with its docstring
'Bisect'
"""

from __future__ import annotations

import dataclasses
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from gmpjax.data.paths import DataError

__all__ = [
    "TRAIN_FILES",
    "VALID_FILES",
    "TextCorpus",
    "load_stdlib_corpus",
    "stdlib_dir",
    "decode",
    "sample_windows",
    "window_batches",
    "eval_windows",
]

TRAIN_FILES: tuple[str, ...] = (
    "argparse.py",
    "calendar.py",
    "collections/__init__.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "fractions.py",
    "functools.py",
    "gettext.py",
    "heapq.py",
    "inspect.py",
    "json/decoder.py",
    "json/encoder.py",
    "locale.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "shutil.py",
    "statistics.py",
    "textwrap.py",
    "threading.py",
    "tokenize.py",
    "typing.py",
)
"""Training modules (about 1.1 MB of source on CPython 3.11), relative to the stdlib directory."""

VALID_FILES: tuple[str, ...] = ("bisect.py", "contextlib.py", "copy.py", "enum.py", "fnmatch.py", "glob.py")
"""Validation modules (about 0.13 MB on CPython 3.11), disjoint from ``TRAIN_FILES``."""

SEPARATOR = b"\n\n"
"""Put between concatenated files."""


@dataclasses.dataclass(frozen=True)
class TextCorpus:
    """Byte-level train/validation text.

    Attributes:
      train: training bytes, shape ``(n_train,)`` uint8.
      valid: validation bytes, shape ``(n_valid,)`` uint8.
      vocab_size: 256 (bytes).
      info: where the text came from (stdlib directory, Python version, files, sizes).
    """

    train: np.ndarray
    valid: np.ndarray
    vocab_size: int
    info: dict


def stdlib_dir() -> Path:
    """The standard-library source directory of the running interpreter (``sysconfig``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _read(root: Path, files: Sequence[str], which: str) -> np.ndarray:
    parts = []
    for name in files:
        path = root / name
        if not path.is_file():
            raise DataError(
                f"the {which} file {name!r} of the embedded text corpus is missing: {path} does not exist. "
                "This Python installation lacks part of its standard-library source (some minimal or "
                "'stripped' distributions ship only .pyc files); install the full standard library "
                "(e.g. the distribution's python3 'full'/'stdlib' package) or pass another stdlib directory."
            )
        parts.append(path.read_bytes())
    return np.frombuffer(SEPARATOR.join(parts), dtype=np.uint8).copy()


def load_stdlib_corpus(
    root: str | os.PathLike | None = None,
    *,
    train_files: Sequence[str] = TRAIN_FILES,
    valid_files: Sequence[str] = VALID_FILES,
) -> TextCorpus:
    """Read the fixed train/validation module lists as byte arrays.

    Args:
      root: directory the file names are relative to (default ``stdlib_dir()``).
      train_files, valid_files: the file lists (defaults: ``TRAIN_FILES``, ``VALID_FILES``).

    Raises:
      DataError: a listed file is missing (the message names it and the fix).
      ValueError: the lists overlap or one is empty.
    """
    overlap = sorted(set(train_files) & set(valid_files))
    if overlap:
        raise ValueError(f"train_files and valid_files overlap: {overlap}; the split is by file.")
    if not train_files or not valid_files:
        raise ValueError("train_files and valid_files must both be non-empty.")
    root = stdlib_dir() if root is None else Path(root)
    train, valid = _read(root, train_files, "training"), _read(root, valid_files, "validation")
    info = {
        "stdlib_dir": str(root),
        "python": sys.version.split()[0],
        "train_files": list(train_files),
        "valid_files": list(valid_files),
        "train_bytes": int(train.size),
        "valid_bytes": int(valid.size),
    }
    return TextCorpus(train, valid, 256, info)


def decode(tokens: np.ndarray) -> str:
    """Bytes back to text (invalid UTF-8 replaced)."""
    return np.asarray(tokens, np.uint8).tobytes().decode("utf-8", errors="replace")


def sample_windows(text: np.ndarray, batch_size: int, length: int, seed: int, step: int) -> np.ndarray:
    """``batch_size`` random windows of ``length + 1`` bytes (inputs and next-byte targets), shape ``(B, L+1)``.

    A pure function of ``(seed, step)``, so a resumed run draws the batches a
    fresh run draws at the same step; int32 for the embedding lookup.
    """
    if text.size < length + 2:
        raise ValueError(f"text of {text.size} bytes is too short for windows of length {length}.")
    rng = np.random.default_rng([seed, step])
    start = rng.integers(0, text.size - length - 1, size=batch_size)
    return text[start[:, None] + np.arange(length + 1)].astype(np.int32)


def window_batches(text: np.ndarray, batch_size: int, length: int, seed: int, start: int = 0) -> Iterator[np.ndarray]:
    """Endless training batches: ``sample_windows(text, batch_size, length, seed, step)`` for ``step >= start``.

    Each batch has shape ``(batch_size, length + 1)``; a run resumed at step
    ``start`` sees the batches a fresh run sees from that step on.

    >>> t = np.arange(100, dtype=np.uint8)
    >>> it = window_batches(t, 2, 8, seed=0, start=5)
    >>> np.array_equal(next(it), sample_windows(t, 2, 8, 0, 5)), next(it).shape
    (True, (2, 9))
    """
    step = start
    while True:
        yield sample_windows(text, batch_size, length, seed, step)
        step += 1


def eval_windows(text: np.ndarray, length: int, max_windows: int | None = None, *, multiple_of: int = 1) -> np.ndarray:
    """Consecutive non-overlapping windows of ``length + 1`` bytes (each predicts ``length`` bytes), ``(N, L+1)``.

    Window ``i`` covers bytes ``[i * length, (i + 1) * length]``, so every byte
    after the first is predicted exactly once (with at most ``length - 1`` bytes of context).
    ``N = min((len(text) - 1) // length, max_windows)``, rounded down to a multiple of
    ``multiple_of`` (e.g. the number of data shards, so the windows split evenly over devices).

    >>> eval_windows(np.arange(100, dtype=np.uint8), 10, multiple_of=4).shape
    (8, 11)
    """
    n = (text.size - 1) // length
    if max_windows is not None:
        n = min(n, max_windows)
    n = (n // multiple_of) * multiple_of
    if n < 1:
        raise ValueError(
            f"text of {text.size} bytes gives no window of length {length}"
            + (f" (max_windows={max_windows}, in multiples of {multiple_of})." if multiple_of > 1 else ".")
        )
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)
    return text[idx].astype(np.int32)
