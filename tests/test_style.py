"""Lint, format and type checks run with the tests, so CI runs them (configuration in pyproject.toml).

Each test runs one tool as a subprocess of this interpreter (``python -m ruff`` / ``python -m mypy``) from the
repository root and fails with the tool's report. Fix what they report with
``ruff check --fix . && ruff format .`` (see CONTRIBUTING.md); mypy findings are fixed by hand.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_MAX_REPORT = 20_000  # characters of the tool's output kept in the failure message


def _run_tool(module: str, *args: str, timeout: float) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (it is in the `test` extra: pip install -e '.[test]').")
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        report = (proc.stdout + proc.stderr).strip()
        if len(report) > _MAX_REPORT:
            report = "...\n" + report[-_MAX_REPORT:]
        pytest.fail(f"`{module} {' '.join(args)}` failed (exit {proc.returncode}):\n{report}", pytrace=False)


def test_ruff_check():
    _run_tool("ruff", "check", "--no-fix", "--output-format=concise", ".", timeout=120)


def test_ruff_format():
    _run_tool("ruff", "format", "--check", "--diff", ".", timeout=120)


def test_mypy():
    # ``files`` and every option come from [tool.mypy]; the cache (.mypy_cache, git-ignored) makes reruns fast.
    _run_tool("mypy", "--no-error-summary", timeout=300)
