"""Where datasets live: ``$GMPJAX_DATA_DIR``, else a per-user cache.

Layout under the data directory (the same as ``../shared/data`` in this repository's CI)::

    uci/<name>/data.txt, index_features.txt, index_target.txt
    banana/2d_banana.csv

Loaders call ``require_file``; when a file is missing they may ``download`` it
from the original public source into the data directory, verifying a sha256,
and otherwise raise ``DataError`` saying what is missing and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

__all__ = ["DataError", "data_dir", "require_file", "sha256_of", "download"]

ENV_VAR = "GMPJAX_DATA_DIR"


class DataError(RuntimeError):
    """A dataset is missing, corrupt or cannot be downloaded; the message says how to fix it."""


def data_dir() -> Path:
    """The data directory: ``$GMPJAX_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/gmpjax`` (``~/.cache/gmpjax``)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "gmpjax"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 digest of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file + rename), checking ``sha256`` if given."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if sha256 is not None and (got := sha256_of(tmp)) != sha256:
            raise DataError(
                f"downloaded {url} but its sha256 is {got}, expected {sha256}; the source changed "
                f"or the download is corrupt. Place a verified copy at {dest} instead."
            )
        os.replace(tmp, dest)
    except OSError as e:  # URLError is an OSError
        raise DataError(
            f"could not download {url} ({e}). If this machine is offline, copy the file to {dest} "
            f"or point ${ENV_VAR} at a directory that has it."
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def require_file(
    relpath: str | os.PathLike, *, url: str | None = None, sha256: str | None = None, allow_download: bool | None = None
) -> Path:
    """Path of ``relpath`` under ``data_dir()``; download it from ``url`` if missing and allowed.

    Downloads are allowed unless ``allow_download=False`` or ``$GMPJAX_NO_DOWNLOAD`` is set
    (tests and CI set it). A present file whose sha256 differs from ``sha256`` raises ``DataError``.
    """
    path = data_dir() / relpath
    if allow_download is None:
        allow_download = not os.environ.get("GMPJAX_NO_DOWNLOAD")
    if not path.exists():
        if url is None or not allow_download:
            raise DataError(
                f"missing data file {path}. Set ${ENV_VAR} to the directory that holds '{relpath}' "
                f"(in this repository: ../shared/data)" + (f", or allow a download from {url}." if url else ".")
            )
        download(url, path, sha256=sha256)
    if sha256 is not None and (got := sha256_of(path)) != sha256:
        raise DataError(
            f"{path} is corrupt: sha256 {got}, expected {sha256}. Delete it and run again "
            "to re-download, or replace it with a verified copy."
        )
    return path
