"""The quickstart job and every notebook under notebooks/ execute end to end."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_quickstart_runs_and_writes_metrics(tmp_path):
    out = tmp_path / "qs"
    res = subprocess.run(
        [sys.executable, "-m", "experiments.quickstart", "--quick", "--workdir", str(out), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "results.json").read_text())
    from experiments import quickstart as Q

    rmse = Q.tables(metrics)["rmse"]
    assert rmse in res.stdout and rmse.count("\n| ") == 2  # the sp and gmp rows, as printed
    assert set(metrics["results"]) == {"sp", "gmp"}
    for r in metrics["results"].values():
        assert len(r["rmse"]) == 2 and all(0 < v < 10 for v in r["rmse"])
    assert (out / "fits.png").stat().st_size > 0
    assert "sp" in res.stdout and "gmp" in res.stdout
    assert metrics["config"]["steps"] == 500 and metrics["config"]["lr"] == ["cv"]
    assert [r["lr"] for r in metrics["results"].values()] == [0.01, 0.1]


def test_quickstart_rejects_unknown_method(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "experiments.quickstart", "--methods", "sp", "foo", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "unknown parameterization 'foo'" in res.stderr and "Traceback" not in res.stderr


def test_quickstart_quick_never_overrides_explicit_flags():
    from experiments import cli
    from experiments import quickstart as Q

    def parse(argv):
        return cli.parse(Q, argv)

    assert (parse([]).steps, parse([]).seeds, parse([]).methods) == (10_000, 5, ("sp", "gmp"))
    assert (parse(["--quick"]).steps, parse(["--quick"]).seeds) == (500, 2)
    cfg = parse(["--quick", "--steps", "30", "--seeds", "3", "--methods", "gmp", "wn"])
    assert (cfg.steps, cfg.seeds, cfg.methods, cfg.quick) == (30, 3, ("gmp", "wn"), True)


IMPORTS_EXPERIMENTS = re.compile(r"^\s*(from|import)\s+experiments\b", re.M)


def _code(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _src(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _images(cells: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_characteristic_activation.ipynb", "02_triangular_waves.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_opens_for_a_newcomer(path):
    """As committed: an install cell first, only gmpjax (no `experiments`), and the outputs of
    `python scripts/build_notebooks.py` kept, figures included, so a reader sees them without running it."""
    nb = json.loads(path.read_text())
    first = nb["cells"][0]
    assert first["cell_type"] == "code" and not first.get("outputs"), "the first cell must be the install cell"
    install = _src(first)
    assert 'importlib.util.find_spec("gmpjax") is None' in install and '%pip install "gmpjax[' in install
    assert not [_src(c) for c in _code(nb) if IMPORTS_EXPERIMENTS.search(_src(c))], "import gmpjax, not experiments"
    assert all(c.get("outputs") for c in _code(nb)[1:] if "plt.show()" in _src(c)), "rebuild the outputs"
    assert _images(_code(nb)) >= 2, "no figures kept: run python scripts/build_notebooks.py"
    assert path.stat().st_size < 1_000_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    """Each notebook runs top to bottom in its quick settings, draws its figures and installs nothing."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
    env_backup = dict(os.environ)
    os.environ["GMPJAX_QUICK"] = "1"
    os.environ["GMPJAX_RESULTS_DIR"] = str(tmp_path)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures as outputs (not Agg)
    os.environ["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    try:
        client = nbclient.NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
        )
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors
    assert nb.cells[0].outputs == [], "the install cell ran pip although gmpjax is importable"
    assert _images([dict(c) for c in nb.cells if c.cell_type == "code"]) >= 2
