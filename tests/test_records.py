"""``gmpjax.records``: JSON values of results, atomic JSON files, and the one reader of the machine, commit and
command that results and benchmarks record."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gmpjax import records as pv
from gmpjax.records import to_json, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_command_line_reruns_packages_as_modules_and_scripts_as_paths():
    assert (
        pv.command_line([os.path.join(ROOT, "experiments", "uci.py"), "--quick"]) == "python -m experiments.uci --quick"
    )
    assert pv.command_line([os.path.join(ROOT, "benchmarks", "sweep.py")]) == "python -m benchmarks.sweep"
    assert pv.command_line([os.path.join(ROOT, "gmpjax", "train", "loop.py")]) == "python -m gmpjax.train.loop"
    main = os.path.join(os.path.dirname(pytest.__file__), "__main__.py")  # python -m pytest
    assert pv.command_line([main, "-q"]) == "python -m pytest -q"
    assert pv.command_line(["scripts/results_tables.py", "--check"]) == "python scripts/results_tables.py --check"
    assert pv.command_line([]) == ""


def test_provenance_reads_this_checkout_and_machine(tmp_path):
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    prov = pv.provenance(["x.py"])
    if head.returncode == 0:
        assert prov["commit"].removesuffix("+dirty") == head.stdout.strip()
    assert pv.provenance(["x.py"], repo=str(tmp_path))["commit"] == "unknown"  # not a git checkout
    assert prov["date"].endswith(" UTC") and prov["command"] == "python x.py"
    m = prov["machine"]
    assert m["cores"] == os.cpu_count() and m["backend"] == jax.default_backend() and m["jax"] == jax.__version__
    assert m["devices"] == f"{len(jax.devices())} x {jax.devices()[0].device_kind}" and m["cpu"] == pv.cpu_model()
    assert m["python"] == ".".join(map(str, sys.version_info[:3]))


def test_load_average_is_three_rounded_loads_or_none():
    load = pv.load_average()
    if hasattr(os, "getloadavg"):
        assert load is not None and len(load) == 3 and all(v >= 0 and round(v, 2) == v for v in load)
    else:
        assert load is None


@dataclasses.dataclass
class _Run:
    lr: float
    curve: np.ndarray
    tags: tuple[str, ...]


def test_to_json_round_trips_through_json_with_non_finite_floats_as_none():
    obj = {
        "run": _Run(0.1, np.array([[0.5, np.nan], [np.inf, -np.inf]], np.float32), ("a", "b")),
        3: np.int64(7),
        "x": [np.float64(2.5), float("nan"), (1, np.bool_(True))],
        "arr": jax.numpy.arange(3),
    }
    out = to_json(obj)
    want = {
        "run": {"lr": 0.1, "curve": [[0.5, None], [None, None]], "tags": ["a", "b"]},
        "3": 7,
        "x": [2.5, None, [1, True]],
        "arr": [0, 1, 2],
    }
    assert out == want
    text = json.dumps(out, allow_nan=False)  # strict JSON: nothing non-finite is left
    assert json.loads(text) == out and to_json(out) == out  # JSON values are their own JSON
    assert type(out["3"]) is int and type(out["x"][0]) is float and type(out["x"][2][1]) is bool


def test_write_json_creates_folders_and_writes_to_json_values(tmp_path):
    path = tmp_path / "a" / "b" / "r.json"
    write_json(path, {"y": np.array([1.0, np.nan]), "run": _Run(0.5, np.zeros(1), ())})
    assert json.loads(path.read_text()) == {"y": [1.0, None], "run": {"lr": 0.5, "curve": [0.0], "tags": []}}
    write_json(str(path), {"y": 2})  # a str path too; replaces the old file
    assert json.loads(path.read_text()) == {"y": 2} and os.listdir(path.parent) == ["r.json"]
    plain = tmp_path / "plain.json"
    with open(plain, "w") as f:  # the umask's permissions, as open() gives
        f.write("{}")
    assert (path.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"old": [1, 2]})
    before = path.read_text()
    with pytest.raises(TypeError, match="not JSON serializable"):  # fails halfway through writing the temp file
        write_json(path, {"a": list(range(1000)), "z": object()})
    assert path.read_text() == before and os.listdir(tmp_path) == ["r.json"]
    with pytest.raises(TypeError):  # no old file: none is left behind either
        write_json(tmp_path / "new.json", {"z": object()})
    assert os.listdir(tmp_path) == ["r.json"]


def test_to_json_keeps_finite_floats_exactly():
    vals = [0.1, 1e-300, 1.7976931348623157e308, -0.0, 2.0**-1074]
    back = json.loads(json.dumps(to_json(np.array(vals))))
    assert all(a == b and math.copysign(1, a) == math.copysign(1, b) for a, b in zip(back, vals, strict=True))


def test_json_half_imports_and_writes_without_jax(tmp_path):
    """``benchmarks/released_uci_compare.py keras`` writes its report under a TensorFlow venv without jax."""
    code = (
        "import sys; sys.modules['jax'] = None\n"  # any `import jax` now fails
        "from gmpjax.records import write_json, load_average\n"
        f"write_json({str(tmp_path / 'k.json')!r}, {{'rmse': float('nan'), 'load': load_average()}})\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((tmp_path / "k.json").read_text())["rmse"] is None
