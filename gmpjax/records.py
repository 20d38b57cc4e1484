"""Results records: JSON values of arrays and dataclasses, atomic JSON files, and where a result comes from.

Every results file of the project goes through here: experiments write ``<workdir>/results.json`` with
``experiments.report.write_results`` (``to_json`` of the results plus ``provenance()``), and the benchmarks write
their reports with ``write_json``, recording ``machine()`` and ``load_average()``, so a number in the README or a
benchmark table names the CPU, cores, jax version and backend, git commit and command that produced it.

``to_json`` turns arrays into lists, dataclasses into dicts and non-finite floats into ``None`` (strict JSON has no
NaN); ``write_json`` writes it atomically (a temp file renamed over the target), so an interrupted run leaves the
old file or the new one, never half of one. The JSON half needs only numpy: ``benchmarks/released_uci_compare.py``
writes with it under a TensorFlow venv that has no jax (``machine()`` imports jax when called).

>>> to_json({"x": np.arange(2), "y": float("nan"), "z": (1.5, np.float32(2))})
{'x': [0, 1], 'y': None, 'z': [1.5, 2.0]}
>>> sorted(machine())
['backend', 'cores', 'cpu', 'devices', 'jax', 'memory_gib', 'os', 'python']
>>> sorted(provenance(["bench.py"]))
['command', 'commit', 'date', 'load_average', 'machine']
>>> command_line([__file__, "--quick"])
'python -m gmpjax.records --quick'
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "command_line",
    "cpu_model",
    "load_average",
    "machine",
    "provenance",
    "to_json",
    "without_keys",
    "write_json",
]


def _git(*args: str, cwd: str) -> str:
    """``git args`` run in ``cwd``: its stripped output, or ``""`` when git is missing or fails."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def cpu_model() -> str:
    """The CPU's model name.

    Returns:
      The ``model name`` of ``/proc/cpuinfo`` (Linux, e.g. ``"AMD EPYC 7B13"``); elsewhere ``platform``'s
      processor, or the architecture (e.g. ``"arm64"``) when that is empty.
    """
    fallback = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), fallback)
    except OSError:
        return fallback


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (runnable processes), rounded to 2 decimals; None where unknown.

    A 1-minute load above the number of cores means other work competed for them while something was timed.
    """
    if not hasattr(os, "getloadavg"):
        return None
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    """This machine in words.

    Returns:
      ``cpu`` (``cpu_model()``), ``cores`` (``os.cpu_count()``), ``memory_gib`` (physical memory, None where
      unknown), ``os``, ``python`` and ``jax`` versions, jax's default ``backend`` (``"cpu"``, ``"gpu"``,
      ``"tpu"``) and its ``devices`` as ``"count x kind"`` (e.g. ``"8 x TPU v4"``).
    """
    import jax  # here, not at the top: the JSON half of this module works without jax

    mem_gib = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    devices = jax.devices()
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": mem_gib, "os": platform.platform(terse=True),
        "python": platform.python_version(), "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
    }  # fmt: skip


def command_line(argv: Sequence[str]) -> str:
    """The command that reruns a process, from its ``sys.argv``.

    A script inside a package (folders with ``__init__.py``) is written as ``python -m package.module``, as the
    experiments and benchmarks are run; another script as ``python path``.

    Args:
      argv: ``sys.argv`` of the process: the script's path, then its arguments.

    Returns:
      ``"python -m experiments.uci --quick"`` for ``["/repo/experiments/uci.py", "--quick"]``; ``""`` for ``[]``.
    """
    if not argv:
        return ""
    path = os.path.abspath(argv[0])
    folder, name = os.path.split(path)
    parts = [name.removesuffix(".py")] if name.endswith(".py") else []
    while parts and os.path.exists(os.path.join(folder, "__init__.py")):
        folder, package = os.path.split(folder)
        parts.insert(0, package)
    if len(parts) > 1:
        module = ".".join(parts[:-1] if parts[-1] == "__main__" else parts)
        return " ".join(["python -m " + module, *argv[1:]])
    return " ".join(["python", argv[0], *argv[1:]])


def provenance(argv: Sequence[str] | None = None, repo: str | None = None) -> dict[str, Any]:
    """Where a result comes from, to be saved next to it.

    Args:
      argv: the command line (default ``sys.argv``).
      repo: a folder inside the git checkout whose commit is recorded (default: the one holding ``gmpjax``).

    Returns:
      ``commit`` (10 hex digits, ``+dirty`` with uncommitted changes to tracked files, ``"unknown"`` outside git),
      ``machine`` (``machine()``), ``date`` (UTC, to the minute), ``command`` (``command_line(argv)``) and
      ``load_average`` (the 1-minute load at the call, None where unknown).
    """
    cwd = repo or os.path.dirname(os.path.abspath(__file__))
    commit = _git("rev-parse", "--short=10", "HEAD", cwd=cwd) or "unknown"
    if commit != "unknown" and _git("status", "--porcelain", "--untracked-files=no", cwd=cwd):
        commit += "+dirty"
    load = load_average()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = command_line(list(sys.argv if argv is None else argv))
    return {
        "commit": commit,
        "machine": machine(),
        "date": date,
        "command": command,
        "load_average": load[0] if load else None,
    }


# --------------------------------------------------------------------------- JSON values and files


def to_json(obj: Any) -> Any:
    """``obj`` as JSON values.

    Mappings become dicts with ``str`` keys, lists and tuples lists, dataclass instances dicts of their fields,
    arrays and numpy scalars (anything with ``tolist``) Python lists and numbers, and non-finite floats (NaN,
    +-inf) ``None``; everything else is returned as it is (``json`` raises on what it cannot write).

    >>> import dataclasses
    >>> @dataclasses.dataclass
    ... class Run:
    ...     lr: float
    ...     rmse: np.ndarray
    >>> to_json({1: Run(0.1, np.array([0.5, np.inf]))})
    {'1': {'lr': 0.1, 'rmse': [0.5, None]}}
    """
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_json(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):
        return to_json(np.asarray(obj).tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def without_keys(obj: Any, drop: Callable[[str], bool]) -> Any:
    """``obj`` without the mapping entries whose key ``k`` has ``drop(str(k))``, at every depth (mappings, lists).

    >>> without_keys({"a": [{"_x": 1, "y": 2}], "_b": 3}, lambda k: k.startswith("_"))
    {'a': [{'y': 2}]}
    """
    if isinstance(obj, Mapping):
        return {k: without_keys(v, drop) for k, v in obj.items() if not drop(str(k))}
    return [without_keys(v, drop) for v in obj] if isinstance(obj, list) else obj


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``to_json(obj)`` to ``path`` atomically, creating its folders.

    The JSON (indent 1) goes to a new temp file ``.tmp_<name>.<random>`` beside ``path``, is flushed to disk, then
    renamed over ``path`` (``os.replace``): readers and an interrupted run see the old file or the new one, never
    half of one. On any error (e.g. a value ``json`` cannot write) the temp file is removed, the old file is left
    as it was and the error is raised. The file gets the permissions of ``open(path, "w")`` (the umask's).

    Args:
      path: the file to write.
      obj: anything ``to_json`` turns into JSON values.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp_{name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() does
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_json(obj), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
