"""The layer benchmark runs in --quick mode and writes a valid report (timings are never asserted)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import layers as bl


def test_quick_run_writes_valid_json(tmp_path, capsys):
    report = bl.main(["--quick", "--out", str(tmp_path)])
    files = list(tmp_path.glob("*.json"))
    assert [f.name for f in files] == [bl.device_file_name(report["device"]["device_kind"]) + ".json"]
    data = json.loads(files[0].read_text())
    assert data["device"]["backend"] and data["config"]["reps"] >= 1
    # every timed case has finite, positive statistics and a memory analysis
    groups = [data["unit"]["results"], data["accum"]["results"]] + [e["results"] for e in data["dense"] + data["conv"]]
    for res in groups:
        for name, r in res.items():
            for key in ("median_ms", "q1_ms", "q3_ms", "min_ms", "cpu_ms"):
                assert math.isfinite(r[key]) and r[key] >= 0, (name, key, r[key])
            assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
            assert r["memory"]["peak"] is None or r["memory"]["peak"] > 0
    assert {"floor", "native_floor", "auto", "auto_fwd", "cumprod", "native"} <= set(data["unit"]["results"])
    assert {"dense", "wn", "gmp"} <= set(data["dense"][0]["results"])
    assert {"conv", "gmp"} <= set(data["conv"][0]["results"])
    assert {"dense", "gmp"} == set(data["accum"]["results"]) and data["accum"]["k"] >= 2
    assert data["device"]["loaded"] in (True, False) and len(data["device"]["load_avg_end"]) == 3
    # targets are listed; the shapes are not run in quick mode, so none of the timing ones is judged
    assert all(t["met"] is None for t in data["targets"] if not t["target"].startswith("memory"))
    out = capsys.readouterr().out
    assert "| floor |" in out and "| native_floor |" in out and "Targets (issue 18)" in out
    assert "gradient accumulation" in out
    # the table generator reproduces the printed tables from the saved JSON alone
    bl.main(["--tables-from", str(files[0])])
    again = capsys.readouterr().out
    assert again.strip() == out.strip().rsplit("\nwrote ", 1)[0].strip()


def test_machine_loaded_and_pick_impl():
    assert bl.machine_loaded({"cpu_count": 2, "load_avg_start": [0.3, 0, 0], "load_avg_end": [0.9, 0, 0]}) is False
    assert bl.machine_loaded({"cpu_count": 2, "load_avg_start": [0.3, 0, 0], "load_avg_end": [4.0, 0, 0]}) is True
    assert bl.machine_loaded({"cpu_count": 2}) is None
    unit = {"floor": {"median_ms": 0.1}, "cumprod": {"median_ms": 3.0}, "tiled": {"median_ms": 2.0}}
    assert bl.pick_impl({"unit": {"results": unit}}) == "tiled"
    assert bl.pick_impl({}) is None


def test_dense_shapes_argument():
    assert bl._shapes("1024x4096x4096,256x1024x1024") == ((1024, 4096, 4096), (256, 1024, 1024))
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="dense-shapes"):
        bl._shapes("1024x4096")


def test_device_file_name():
    assert bl.device_file_name("cpu") == "cpu"
    assert bl.device_file_name("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_memory_stats_of_a_compiled_function():
    import jax
    import jax.numpy as jnp

    x = jnp.ones((64, 64))
    compiled = jax.jit(lambda a: jnp.sin(a) @ a).lower(x).compile()
    stats = bl.memory_stats(compiled)
    assert stats["peak"] >= stats["argument"] + stats["output"] - stats["alias"] >= 2 * x.nbytes


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups": ("unit", "gpu")}, "groups"),
        ({"unit_impls": ("nope",)}, "unit_impls"),
        ({"reps": 0}, "reps"),
        ({"dtypes": ("int8",)}, "dtypes"),
    ],
)
def test_bad_config_raises(tmp_path, kwargs, match):
    import dataclasses

    cfg = dataclasses.replace(bl.BenchConfig.quick(), **kwargs)
    with pytest.raises(ValueError, match=match):
        bl.run(cfg, str(tmp_path))
