"""Data parallelism: sharded step == single-device step, two processes == one process, clear batch errors.

The multi-device checks run in child processes (``tests/scripts/tiny_trainer.py``)
because the CPU device count is fixed when JAX starts: the children get
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (or 4 + 4 for the
two-process run over gloo on 127.0.0.1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import childproc  # noqa: E402
import tiny_trainer as tt  # noqa: E402

from gmpjax.train import sharding  # noqa: E402

STEPS = 12

DRIVER = r"""
import json, sys
import jax, numpy as np
import tiny_trainer as tt
from gmpjax.train import sharding

out = sys.argv[1]
common = ["--steps", "{steps}", "--batch-size", "16"]
tt.main(common + ["--devices", "1", "--out", out + "/one.npz"])
tt.main(common + ["--out", out + "/eight.npz"])
tt.main(["--steps", "0", "--out", out + "/init.npz"])

mesh = sharding.make_data_mesh()
b = sharding.shard_batch((np.arange(48.0).reshape(16, 3), np.arange(16)), mesh)
r = sharding.replicate({{"w": np.ones((3, 2))}}, mesh)
info = {{
    "device_count": jax.device_count(), "mesh_size": mesh.size,
    "batch_shard_shapes": sorted({{s.data.shape for s in b[0].addressable_shards}}),
    "batch_spec": str(b[0].sharding.spec),
    "batch_roundtrip": np.array_equal(np.asarray(b[0]), np.arange(48.0).reshape(16, 3)),
    "replicated": bool(r["w"].is_fully_replicated), "replicated_devices": len(r["w"].sharding.device_set),
}}
try:
    tt.main(["--steps", "2", "--batch-size", "12"])
    info["error"] = None
except ValueError as e:
    info["error"] = str(e)
try:
    sharding.shard_batch(np.zeros((12, 3)), mesh)
    info["shard_error"] = None
except ValueError as e:
    info["shard_error"] = str(e)
print("RESULT " + json.dumps(info))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding")
    proc = childproc.run([sys.executable, "-c", DRIVER.format(steps=STEPS), str(out)], num_devices=8, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    info = json.loads(line[len("RESULT ") :])
    params = {k: childproc.load_params(out / f"{k}.npz") for k in ("one", "eight", "init")}
    return info, params


def test_child_has_eight_devices_and_placements(runs):
    info, _ = runs
    assert info["device_count"] == 8 and info["mesh_size"] == 8
    assert info["batch_shard_shapes"] == [[2, 3]]  # 16 rows over 8 devices
    assert "data" in info["batch_spec"] and info["batch_roundtrip"]
    assert info["replicated"] and info["replicated_devices"] == 8


def test_sharded_step_matches_single_device(runs):
    """GmP+IMN conv, BN conv, GmP+IMN dense, SGD+momentum: 8-way data parallel == 1 device (1e-5)."""
    _, p = runs
    assert childproc.max_abs_diff(p["one"], p["init"]) > 1e-2, "training did not move the parameters"
    diff = childproc.max_abs_diff(p["one"], p["eight"])
    assert diff <= 1e-5, f"8-device and 1-device params differ by {diff}"
    # the batch statistics paths (IMN means, BN) are inside the model, so they were exercised
    assert any("theta" in k for k in p["one"]) and any("scale" in k for k in p["one"])


def test_batch_not_divisible_by_devices_raises_in_child(runs):
    info, _ = runs
    for msg in (info["error"], info["shard_error"]):
        assert msg is not None, "a batch of 12 on 8 devices was accepted"
        assert "12" in msg and "8" in msg and "divisible" in msg


def test_two_processes_match_one_process(runs, tmp_path):
    """Two processes x 4 CPU devices over gloo, each feeding half of every batch == one process x 8 devices."""
    _, p = runs
    port = childproc.free_port()
    procs, logs = [], []
    try:
        for pid in range(2):
            log = open(tmp_path / f"proc{pid}.log", "w")
            logs.append(log)
            cmd = childproc.trainer_cmd(
                "--steps",
                STEPS,
                "--batch-size",
                16,
                "--workdir",
                tmp_path / "ckpt",
                "--save-every",
                5,
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                2,
                "--process-id",
                pid,
                "--out",
                tmp_path / f"p{pid}.npz",
            )
            procs.append(childproc.popen(cmd, num_devices=4, stdout=log))
        for proc in procs:
            proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the two-process run did not finish within 240 s")
    finally:
        for proc in procs:
            childproc.kill(proc)
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"proc{i}.log").read_text() for i in range(2)]
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"process {i} failed:\n{outputs[i][-3000:]}"
        assert f'"process": {i}, "devices": 8' in outputs[i]
    for i in range(2):
        diff = childproc.max_abs_diff(childproc.load_params(tmp_path / f"p{i}.npz"), p["eight"])
        assert diff <= 1e-5, f"process {i} params differ from the one-process run by {diff}"
    # the two processes read disjoint slices of every global batch; their union, in process order, is the
    # global batch one process reads (example ids of the grain pipeline, printed as "batch e:s sha ids=...")
    lines = [[ln.split() for ln in out.splitlines() if ln.startswith("batch ")] for out in outputs]
    ids = [{ln[1]: ln[3].removeprefix("ids=").split(",") for ln in lns} for lns in lines]
    digests = [{ln[1]: ln[2] for ln in lns} for lns in lines]
    one = tt.make_loader(0, 16, workers=0)
    assert sorted(ids[0]) == sorted(ids[1]) and len(ids[0]) == STEPS
    for pos, a in ids[0].items():
        b, full = ids[1][pos], one.get_batch(*map(int, pos.split(":")))
        assert len(a) == len(b) == 8 and not set(a) & set(b) and a + b == [str(i) for i in full["index"]], pos
        for i, rows in enumerate((slice(0, 8), slice(8, 16))):  # the same pixels (flips included) as well
            assert digests[i][pos] == tt.batch_digest({k: v[rows] for k, v in full.items()}), (pos, i)
    # the multi-host checkpoint was committed once, by both processes together
    assert sorted(int(d.name) for d in (tmp_path / "ckpt").iterdir() if d.name.isdigit()) == [5, 10, STEPS]


# ------------------------------------------------------------------- in-process checks (1 device)
def test_check_batch_size_message():
    assert sharding.check_batch_size(16, 8) == 2
    with pytest.raises(ValueError, match=r"12 is not divisible by the 8 devices.*multiple of 8"):
        sharding.check_batch_size(12, 8)
    with pytest.raises(ValueError, match="positive int"):
        sharding.check_batch_size(0, 8)


def test_shard_batch_rejects_bad_batches():
    mesh = sharding.make_data_mesh()
    with pytest.raises(ValueError, match="different leading sizes"):
        sharding.shard_batch((np.zeros((4, 2)), np.zeros((5,))), mesh)
    with pytest.raises(ValueError, match="leading batch axis"):
        sharding.shard_batch((np.zeros((4, 2)), np.float32(1.0)), mesh)
    with pytest.raises(ValueError, match="no array leaves"):
        sharding.shard_batch({}, mesh)
    with pytest.raises(ValueError, match="empty"):
        sharding.make_data_mesh([])


def test_single_process_placement_and_slices():
    mesh = sharding.make_data_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    x = np.arange(2.0 * 4 * jax.device_count()).reshape(-1, 2)
    b = sharding.shard_batch(x, mesh)
    np.testing.assert_array_equal(sharding.to_host(b), x)
    assert sharding.local_batch_slice(x.shape[0]) == slice(0, x.shape[0])
    assert sharding.replicate(np.ones(3), mesh).is_fully_replicated
    assert sharding.is_primary()


def test_initialize_distributed_validates_arguments(monkeypatch):
    for var in ("GMPJAX_COORDINATOR", "GMPJAX_NUM_PROCESSES", "GMPJAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert sharding.initialize_distributed() is False
    assert sharding.initialize_distributed(num_processes=1) is False
    with pytest.raises(ValueError, match="coordinator_address"):
        sharding.initialize_distributed(num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 2\)"):
        sharding.initialize_distributed("127.0.0.1:1", num_processes=2, process_id=2)
    monkeypatch.setenv("GMPJAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="coordinator_address"):
        sharding.initialize_distributed(process_id=0)
