"""Helpers for tests that run JAX in child processes (a fresh XLA device count, SIGKILL, several processes)."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent.parent
TRAINER = SCRIPTS / "tiny_trainer.py"
# Compiled programs are shared by the children of one test session (and later ones): the same
# train step is compiled once, not once per child. Results are unaffected (same executable).
CACHE_DIR = Path(tempfile.gettempdir()) / f"gmpjax-test-xla-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"


def child_env(num_devices: int) -> dict[str, str]:
    """Environment of a child JAX process with ``num_devices`` CPU devices and a shared compilation cache."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={num_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = str(CACHE_DIR)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(SCRIPTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("GMPJAX_COORDINATOR", None)
    env.pop("GMPJAX_NUM_PROCESSES", None)
    env.pop("GMPJAX_PROCESS_ID", None)
    return env


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, str(TRAINER), *map(str, args)]


def run(cmd: list[str], num_devices: int, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion (stdout+stderr captured as text); kills it on timeout."""
    return subprocess.run(
        cmd,
        env=child_env(num_devices),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def popen(cmd: list[str], num_devices: int, stdout=subprocess.PIPE, env_extra: dict | None = None) -> subprocess.Popen:
    env = child_env(num_devices)
    env.update(env_extra or {})
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=stdout, stderr=subprocess.STDOUT, text=True)


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float) -> list[str]:
    """Read ``proc.stdout`` until a line starting with ``prefix``; returns the lines read. Raises on timeout/exit."""
    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no line starting with {prefix!r} within {timeout}s; got:\n" + "".join(lines[-20:]))
            if not sel.select(left):
                continue
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(
                    f"process exited (rc={proc.wait()}) before {prefix!r}; output:\n" + "".join(lines[-20:])
                )
            lines.append(line)
            if line.startswith(prefix):
                return lines
    finally:
        sel.close()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` if it is still running and reap it."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    if proc.stdout is not None:
        proc.stdout.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_params(path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    if sorted(a) != sorted(b):
        raise AssertionError(f"different parameter sets: {sorted(set(a) ^ set(b))}")
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a)
