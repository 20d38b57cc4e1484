"""Test configuration: point data loaders at ../shared/data (as CI does) and never download."""

import os
from pathlib import Path

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "GMPJAX_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["GMPJAX_DATA_DIR"] = str(_SHARED)
os.environ.setdefault("GMPJAX_NO_DOWNLOAD", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
