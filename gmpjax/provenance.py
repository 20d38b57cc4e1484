"""Where a result comes from: the machine, the commit, the command and the load, read in one place.

Experiments record ``provenance()`` in their ``results.json`` and benchmarks record ``machine()`` and
``load_average()`` in their reports, so a number in the README or a benchmark table names the CPU, cores,
jax version and backend, git commit and command that produced it.

>>> sorted(machine())
['backend', 'cores', 'cpu', 'devices', 'jax', 'memory_gib', 'os', 'python']
>>> sorted(provenance(["bench.py"]))
['command', 'commit', 'date', 'load_average', 'machine']
>>> command_line([__file__, "--quick"])
'python -m gmpjax.provenance --quick'
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import jax

__all__ = ["command_line", "cpu_model", "load_average", "machine", "provenance"]


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
