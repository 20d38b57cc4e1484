"""Imports of the optional dependencies, with an ImportError that names the extra to install.

The core of gmpjax (``layers``, ``hyperspherical``, ``models``, the training engine and loops) needs
only jax, flax, optax and numpy. Checkpoints, progress bars, the image pipeline and the plots import
their packages when first used, through ``require``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["require", "available", "progress_bar"]


def require(module: str, extra: str, user: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says which extra of gmpjax provides it.

    Args:
      module: the module to import (e.g. ``"orbax.checkpoint"``).
      extra: the gmpjax extra that installs it (``"train"``, ``"data"``, ``"experiments"``).
      user: what needs it, for the message (e.g. ``"gmpjax.train.checkpoint.Checkpointer"``).

    Returns:
      The imported module.

    Raises:
      ImportError: ``module`` is not installed; the message gives the ``pip install`` command.

    >>> require("math", "train", "a doctest").sqrt(4.0)
    2.0
    >>> require("no_such_module_xyz", "train", "a doctest")
    Traceback (most recent call last):
    ...
    ImportError: a doctest needs no_such_module_xyz, which is not installed: pip install "gmpjax[train]"
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f'{user} needs {module}, which is not installed: pip install "gmpjax[{extra}]"') from e


def available(module: str) -> bool:
    """Whether ``module`` can be imported (imports it).

    >>> available("math"), available("no_such_module_xyz")
    (True, False)
    """
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


class _NoBar:
    """The part of tqdm's interface the loops use, showing nothing (``n`` counts the steps as tqdm's does)."""

    def __init__(self, initial: int = 0):
        self.n = initial

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps."""
        self.n += n

    def set_postfix(self, values: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Ignore the values."""

    def close(self) -> None:
        """Nothing to close."""


def progress_bar(total: int, *, desc: str, enabled: bool | None = None, initial: int = 0) -> Any:
    """A tqdm bar, or a stand-in that shows nothing.

    Args:
      total: the bar's length in steps.
      desc: its label.
      enabled: ``True``: a bar (needs tqdm, from the ``train`` extra); ``False``: none;
        ``None``: a bar when tqdm is installed.
      initial: the step the bar starts at (a resumed run).

    >>> bar = progress_bar(10, desc="x", enabled=False, initial=2)
    >>> bar.update(3); bar.set_postfix({"loss": "1"}); bar.set_postfix(phase="a"); bar.close()
    >>> bar.n
    5
    """
    if enabled is False or (enabled is None and not available("tqdm")):
        return _NoBar(initial)
    tqdm = require("tqdm.auto", "train", "progress=True").tqdm
    return tqdm(total=total, initial=initial, desc=desc, leave=False)
