"""Every Python block of README.md and docs/*.md runs as written (or after its declared setup block)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import childproc  # noqa: E402
from run_doc_blocks import blocks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WITH_CODE = [p for p in PAGES if blocks(p.read_text())]


def test_the_pages_with_code_are_found():
    names = {p.name for p in WITH_CODE}
    assert {"README.md", "layers.md", "scaling.md", "training.md"} <= names, names


@pytest.mark.parametrize("page", WITH_CODE, ids=lambda p: p.name)
def test_every_python_block_runs(page):
    n = len(blocks(page.read_text()))
    cmd = [sys.executable, str(childproc.SCRIPTS / "run_doc_blocks.py"), str(page)]
    proc = childproc.run(cmd, num_devices=8, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert proc.stdout.count(" ok") == n, proc.stdout[-2000:]
