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
    groups = [data["unit"]["results"]] + [e["results"] for e in data["dense"] + data["conv"]]
    for res in groups:
        for name, r in res.items():
            for key in ("median_ms", "q1_ms", "q3_ms", "min_ms", "cpu_ms"):
                assert math.isfinite(r[key]) and r[key] >= 0, (name, key, r[key])
            assert r["q1_ms"] <= r["median_ms"] <= r["q3_ms"]
            assert r["memory"]["peak"] is None or r["memory"]["peak"] > 0
    assert {"floor", "auto", "cumprod"} <= set(data["unit"]["results"])
    assert {"dense", "wn", "gmp"} <= set(data["dense"][0]["results"])
    assert {"conv", "gmp"} <= set(data["conv"][0]["results"])
    # targets are listed; the shapes are not run in quick mode, so none of the timing ones is judged
    assert all(t["met"] is None for t in data["targets"] if not t["target"].startswith("memory"))
    out = capsys.readouterr().out
    assert "| floor |" in out and "Targets (issue 7)" in out


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
    [({"groups": ("unit", "gpu")}, "groups"), ({"unit_impls": ("nope",)}, "unit_impls"), ({"reps": 0}, "reps")],
)
def test_bad_config_raises(tmp_path, kwargs, match):
    import dataclasses

    cfg = dataclasses.replace(bl.BenchConfig.quick(), **kwargs)
    with pytest.raises(ValueError, match=match):
        bl.run(cfg, str(tmp_path))
