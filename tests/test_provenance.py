"""``gmpjax.provenance``: the one reader of the machine, commit and command that results and benchmarks record."""

import os
import subprocess
import sys

import jax
import pytest

from gmpjax import provenance as pv

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
