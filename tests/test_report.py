"""The results builder (``scripts/results_tables.py``): README/docs tables come from ``results/<name>.json``
through each experiment's ``tables``; ``experiments.report.write_results`` records where a result comes from."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

from experiments import report
from gmpjax.records import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "results_tables.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("results_tables", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rt = _load_script()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake experiment module ``experiments._fake`` and a root folder with ``results/fake.json``."""
    mod = types.ModuleType("experiments._fake")
    mod.tables = lambda r: {"t": report.markdown_table(["method", "x"], [[k, v] for k, v in r["x"].items()])}
    monkeypatch.setitem(sys.modules, "experiments._fake", mod)
    work = tmp_path / "work"
    report.write_results(str(work), {"x": {"gmp": 1.5, "sp": 2.5}})
    rt.collect(str(work), "fake", root=str(tmp_path))
    return tmp_path


def test_write_results_records_where_a_result_comes_from(fake):
    prov = json.loads((fake / "results" / "fake.json").read_text())["provenance"]
    assert prov["commit"] and prov["date"].endswith("UTC")
    assert prov["machine"]["cores"] == os.cpu_count() and prov["machine"]["backend"] == "cpu"


def test_rebuild_replaces_only_the_blocks_and_is_idempotent(fake):
    text = "intro\n<!-- results _fake:t fake -->\n| stale |\n<!-- /results -->\noutro\n"
    new = rt.rebuild(text, str(fake))
    assert new.startswith("intro\n<!-- results _fake:t fake -->\n| method | x |")
    assert "| gmp | 1.5 |" in new and "| stale |" not in new and new.endswith("<!-- /results -->\noutro\n")
    assert "`results/fake.json`" in new and "cores" in new
    assert rt.rebuild(new, str(fake)) == new


def test_bad_blocks_name_the_fix(fake):
    with pytest.raises(FileNotFoundError, match="--collect"):
        rt.rebuild("<!-- results _fake:t missing -->\n<!-- /results -->", str(fake))
    with pytest.raises(KeyError, match="not 'u'"):
        rt.rebuild("<!-- results _fake:u fake -->\n<!-- /results -->", str(fake))
    bare = fake / "bare"
    write_json(bare / report.RESULTS_FILE, {"x": {}})
    with pytest.raises(ValueError, match="provenance"):
        rt.collect(str(bare), "bare", root=str(fake))


def test_main_rewrites_then_check_passes(fake, capsys):
    (fake / "README.md").write_text("<!-- results _fake:t fake -->\nold\n<!-- /results -->\n")
    assert rt.main(["--check", "--root", str(fake)]) == 1
    assert rt.main(["--root", str(fake)]) == 0
    assert rt.main(["--check", "--root", str(fake)]) == 0
    assert "| sp | 2.5 |" in (fake / "README.md").read_text()


def test_collect_can_leave_out_per_step_curves(fake):
    work = fake / "curves"
    report.write_results(str(work), {"a": {"curve": list(range(5)), "mse": 0.5}})
    path = rt.collect(str(work), "curves", root=str(fake), drop=["curve"])
    saved = json.loads(open(path).read())
    assert saved["a"] == {"mse": 0.5} and saved["provenance"]["dropped"] == ["curve"]


def test_bad_arguments_are_one_line_errors(fake, capsys):
    for argv, match in ((["--drop", "curve"], "--drop only applies with --collect"),
                        (["--collect", str(fake / "nowhere"), "x"], "nowhere")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            rt.main([*argv, "--root", str(fake)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and err[-1].startswith(f"{rt.COMMAND}: error: ") and match in err[-1]


def test_the_repository_tables_match_the_committed_results(tmp_path):
    """README and docs tables equal what ``tables()`` gives for ``results/*.json`` (edit the JSON, not the table).

    Run as the docs say, as a script, from another folder and without ``PYTHONPATH``: it finds its checkout itself.
    """
    with open(os.path.join(ROOT, "README.md")) as f:
        assert f.read().count("<!-- results ") >= 6
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, SCRIPT, "--check"], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert res.returncode == 0 and res.stdout.strip() == "0 file(s) out of date", res.stdout + res.stderr
