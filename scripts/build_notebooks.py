"""Execute the notebooks and write their outputs (text and PNG figures) back into the ``.ipynb`` files.

The notebooks are committed with their outputs so that a reader sees the figures without running them;
this one command rebuilds them after a change (full settings, about a minute on a laptop CPU)::

    python scripts/build_notebooks.py                      # every notebook under notebooks/
    python scripts/build_notebooks.py notebooks/02_triangular_waves.ipynb

The kernel imports ``gmpjax`` from this checkout (the repository root goes first on ``PYTHONPATH``), so
the install cell at the top of each notebook is skipped. ``GMPJAX_QUICK`` is removed from the kernel's
environment: the committed outputs are those of the full settings (the test suite runs the quick ones,
``tests/test_notebooks_and_quickstart.py``). Execution timings and counts of outputs that cannot be
reproduced (``metadata.execution``) are not written, so a rebuild only changes what the cells print and draw.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: warnings of the numerical libraries that say nothing about the notebook
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def build(path: Path, timeout: int = 1200) -> dict[str, int]:
    """Run ``path`` top to bottom in a fresh ``python3`` kernel and save it with its outputs.

    Returns:
      ``{"cells": code cells, "images": PNG outputs, "bytes": file size}`` of the written notebook.

    Raises:
      nbclient.exceptions.CellExecutionError: a cell failed (the file is left unchanged).
    """
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "GMPJAX_QUICK"}
    env.update(QUIET)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = nbclient.NotebookClient(
            nb, timeout=timeout, kernel_name="python3", record_timing=False, resources={"metadata": {"path": str(ROOT)}}
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        c.metadata.pop("execution", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    return {"cells": len(code), "images": images, "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    p.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = p.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    missing = [str(q) for q in paths if not q.is_file()]
    if missing:
        p.error(f"no such notebook: {', '.join(missing)}")
    for path in paths:
        t0 = time.perf_counter()
        info = build(path, args.timeout)
        print(
            f"{path}: {info['cells']} code cells, {info['images']} figures, {info['bytes'] / 1024:.0f} KiB "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
