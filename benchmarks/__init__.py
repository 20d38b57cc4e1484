"""Benchmarks of gmpjax (``python -m benchmarks.NAME``); every script's ``--out`` is a folder (see README.md)."""

from __future__ import annotations

import argparse
import os


def out_folder(text: str) -> str:
    """argparse ``type`` of ``--out``: the folder the script writes its fixed file names into (made if missing).

    ``--out`` means a folder in every script of ``benchmarks/`` and ``experiments/``. A path that is an
    existing file, or that ends in ``.json``, is refused with the fix (argparse then prints one error line
    and exits with status 2).

    >>> out_folder("benchmarks/results")
    'benchmarks/results'
    """
    parent = os.path.dirname(text.rstrip(os.sep)) or "."
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a file; --out is the folder the script writes its fixed file names into (e.g. --out {parent})"
        )
    if text.endswith(".json"):
        raise argparse.ArgumentTypeError(
            f"{text!r} looks like a file name; --out is the folder the script writes its fixed file names into "
            f"(e.g. --out {parent})"
        )
    return text
