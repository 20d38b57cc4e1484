"""The quickstart job and every notebook under notebooks/ execute end to end."""

import json
import os
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
    metrics = json.loads((out / "metrics.json").read_text())
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
        return cli.parse(cli.build_parser(Q.Config, prog="q"), Q.Config, Q.CONFIGS, argv, quick=Q.quick)

    assert (parse([]).steps, parse([]).seeds, parse([]).methods) == (10_000, 5, ("sp", "gmp"))
    assert (parse(["--quick"]).steps, parse(["--quick"]).seeds) == (500, 2)
    cfg = parse(["--quick", "--steps", "30", "--seeds", "3", "--methods", "gmp", "wn"])
    assert (cfg.steps, cfg.seeds, cfg.methods, cfg.quick) == (30, 3, ("gmp", "wn"), True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    env_backup = dict(os.environ)
    os.environ["GMPJAX_QUICK"] = "1"
    os.environ["GMPJAX_RESULTS_DIR"] = str(tmp_path)
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
