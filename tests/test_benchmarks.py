"""The layer benchmark runs in --quick mode and writes a valid report (timings are never asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

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


# ----------------------------------------------------------------------------------------------
# --out is a folder in every benchmark script (as in experiments/): fixed file names inside it.


def _mains():
    from benchmarks import input_pipeline, released_uci_compare, sweep

    return {
        "layers": (bl.main, []),
        "input_pipeline": (input_pipeline.main, ["--quick"]),
        "sweep": (sweep.main, []),
        "released_uci_compare ours": (released_uci_compare.main, ["ours"]),
        "released_uci_compare keras": (released_uci_compare.main, ["keras", "--released", "."]),
    }


@pytest.mark.parametrize("script", list(_mains()))
@pytest.mark.parametrize("kind", ["existing file", "json name"])
def test_out_that_is_a_file_is_a_clear_argparse_error(script, kind, tmp_path, capsys):
    main, argv = _mains()[script]
    path = tmp_path / ("old.txt" if kind == "existing file" else "new.json")
    if kind == "existing file":
        path.write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"--out is the folder the script writes its fixed file names into (e.g. --out {tmp_path})")
    assert "error: argument --out" in err[-1]
    assert not path.is_dir() and (kind == "json name" or path.read_text() == "keep me")


def test_out_folder_as_a_script_in_a_subprocess(tmp_path):
    """Run as a file path (how docs/uci_official.md runs it): the argparse error line, status 2, no traceback."""
    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "ours.json"
    path.write_text("{}")
    res = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "released_uci_compare.py"), "ours", "--out", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "is a file; --out is the folder" in res.stderr.splitlines()[-1]


def test_uci_compare_writes_fixed_names_and_tables_folders(tmp_path, capsys):
    from benchmarks import released_uci_compare as ruc

    for folder, name, rmse in (("a", "keras.json", 0.5), ("a", "ours.json", 0.6), ("b", "ours.json", 0.7)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_text(json.dumps({"test_rmse": {"sp": {"0": rmse, "1": rmse + 1}}}))
    ruc.main(["table", str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "| split | keras | a/ours | b/ours |" in out and "| 1 | 1.500 | 1.600 | 1.700 |" in out
    with pytest.raises(SystemExit, match="holds neither keras.json nor ours.json"):
        ruc.main(["table", str(tmp_path)])


def test_uci_compare_writes_a_diverged_run_as_null_and_tables_it_as_nan(tmp_path, capsys, monkeypatch):
    """``main`` writes through ``gmpjax.records.write_json`` (NaN -> null); ``table`` reads null and old NaN files."""
    from benchmarks import released_uci_compare as ruc

    monkeypatch.setattr(ruc, "run_ours", lambda a: {"source": "test", "test_rmse": {"sp": {"0": float("nan")}}})
    ruc.main(["ours", "--out", str(tmp_path / "new")])
    assert json.loads((tmp_path / "new" / "ours.json").read_text())["test_rmse"] == {"sp": {"0": None}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keras.json").write_text('{"test_rmse": {"sp": {"0": NaN, "1": 2.0}}}')  # json.dumps wrote NaN
    ruc.main(["table", str(tmp_path / "old"), str(tmp_path / "new")])
    out = capsys.readouterr().out
    assert "| split | keras | ours |" in out and "| 0 | nan | nan |" in out and "| 1 | 2.000 |  |" in out
