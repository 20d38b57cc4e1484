"""Test configuration: point data loaders at ../shared/data (as CI does) and never download."""

import os
from pathlib import Path

import pytest

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "GMPJAX_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["GMPJAX_DATA_DIR"] = str(_SHARED)
os.environ.setdefault("GMPJAX_NO_DOWNLOAD", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


def _results_tables(module, workdir, names):
    """``module.tables`` of ``<workdir>/results.json``, as the README builder reads it: ``names``, markdown rows."""
    import json

    results = json.loads((Path(workdir) / "results.json").read_text())
    assert set(results["provenance"]) >= {"commit", "machine", "date", "command"}
    tables = module.tables(results)
    assert list(tables) == list(names), list(tables)
    for name, text in tables.items():
        rows = [ln for ln in text.splitlines() if ln.startswith("|")]
        assert len(rows) >= 3 and rows[1].startswith("|---"), (name, text)
    return tables


@pytest.fixture
def results_tables():
    """``results_tables(module, workdir, names)``: check and return ``module.tables`` of the run's results.json."""
    return _results_tables
