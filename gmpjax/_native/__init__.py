"""Build, load and register the native CPU kernels of u(theta) (``unit_kernels.cc``) with JAX's FFI.

The kernels are compiled on first use, not at install time, for two reasons:

* an FFI handler must be compiled against the headers of the jaxlib that loads it (a handler built
  for a newer FFI API refuses to load on an older jaxlib), and the jaxlib that loads it is only
  known at run time; a wheel or a build-isolated ``pip install`` would compile against whatever
  jaxlib its build environment happened to get;
* the install line stays ``pip install -e .``, with no build backend beyond setuptools.

The shared library goes into a cache directory (``$GMPJAX_CACHE_DIR``, else
``$XDG_CACHE_HOME/gmpjax``, else ``~/.cache/gmpjax``) under a name keyed by the source, the
jaxlib version, the compiler and the machine architecture, so it is built once per machine and
jaxlib. It is never compiled with ``-march=native``: the hot loops carry one clone per x86-64
level (v4 = AVX-512, v3 = AVX2 + FMA, baseline), chosen by the loader on the CPU that runs it.

If there is no C++ compiler, the build fails or ``$GMPJAX_NATIVE=0`` is set, ``available()``
is False, one ``logging`` warning says why, and the map runs on the XLA implementations.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

__all__ = ["available", "status", "TARGETS", "SOURCE", "cache_dir"]

log = logging.getLogger("gmpjax")

SOURCE = Path(__file__).with_name("unit_kernels.cc")
#: FFI target name -> exported handler symbol, for (computation, dtype).
TARGETS: dict[tuple[str, str], tuple[str, str]] = {
    (comp, dt): (f"gmpjax_unit_{comp}_{dt}", f"GmpUnit{sym}{dt.upper()}")
    for comp, sym in (("fwd", "Forward"), ("bwd", "Backward"), ("tangent", "Tangent"))
    for dt in ("f32", "f64")
}
_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-fno-math-errno", "-w")
_ENV_DISABLE = "GMPJAX_NATIVE"
_status: dict[str, str] = {}
_FALLBACK_MESSAGE = "gmpjax: u(theta) runs the XLA implementation on CPU: the native kernels are %s."


def cache_dir() -> Path:
    """Where built kernels are kept: ``$GMPJAX_CACHE_DIR``, ``$XDG_CACHE_HOME/gmpjax`` or ``~/.cache/gmpjax``."""
    if os.environ.get("GMPJAX_CACHE_DIR"):
        return Path(os.environ["GMPJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gmpjax"


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def _library_path(cxx: str) -> Path:
    import jaxlib

    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), jaxlib.__version__.encode(), str(version).encode(), platform.machine().encode()):
        key.update(part)
        key.update(b"\0")
    key.update(" ".join(_FLAGS).encode())
    return cache_dir() / f"unit_kernels-jaxlib{jaxlib.__version__}-{key.hexdigest()[:16]}.so"


def _build(cxx: str, target: Path) -> None:
    """Compile ``SOURCE`` into ``target`` atomically (a temporary file in the same folder, then a rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"{cxx} exited with {res.returncode} compiling {SOURCE.name}: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def available() -> bool:
    """Build (once per machine and jaxlib), load and register the kernels; False, with one warning, if impossible.

    ``status()`` says which implementation runs on CPU and why.
    """
    if os.environ.get(_ENV_DISABLE, "1") == "0":
        _status["reason"] = f"disabled by ${_ENV_DISABLE}=0"
        log.warning(_FALLBACK_MESSAGE, _status["reason"])
        return False
    try:
        cxx = _compiler()
        if cxx is None:
            raise RuntimeError(f"no C++ compiler found (looked for ${{CXX}} or g++: {os.environ.get('CXX', 'g++')!r})")
        lib_path = _library_path(cxx)
        if not lib_path.exists():
            log.info("gmpjax: building the native u(theta) kernels into %s", lib_path)
            _build(cxx, lib_path)
        lib = ctypes.cdll.LoadLibrary(str(lib_path))
        for name, symbol in TARGETS.values():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except Exception as e:  # any failure: fall back, say so once
        _status["reason"] = f"unavailable ({type(e).__name__}: {e})"
        log.warning(_FALLBACK_MESSAGE, _status["reason"])
        return False
    _status["reason"] = f"loaded from {lib_path}"
    log.info("gmpjax: native u(theta) kernels %s", _status["reason"])
    return True


def status() -> str:
    """One line: whether the native kernels run on CPU, and why (builds them if not yet tried)."""
    ok = available()
    return ("native: " if ok else "xla fallback: ") + _status.get("reason", "")
