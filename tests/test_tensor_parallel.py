"""Tensor parallelism: a GmP model annotated column/row parallel trains on a 2-D mesh exactly as on one device.

The 8-device runs happen in a child process (``tests/scripts/tp_trainer.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: a Megatron MLP (GmP+IMN
column parallel, nnx.Linear row parallel) and a small GmP+IMN VGG-6 are trained
10 adamw steps on a (2, 4) and a (4, 2) ('data', 'model') mesh and compared with
the same run on one device; theta's sharding is read from the compiled step's
output shardings and from the arrays it returns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from gmpjax.layers import GmPDense
from gmpjax.train import sharding

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import childproc  # noqa: E402


@pytest.fixture(scope="module")
def tp_result() -> dict:
    cmd = [sys.executable, str(childproc.SCRIPTS / "tp_trainer.py"), "--meshes", "2x4", "4x2"]
    proc = childproc.run(cmd, num_devices=8, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


@pytest.mark.parametrize("model", ["mlp", "vgg"])
def test_tensor_parallel_matches_one_device(tp_result, model):
    res = tp_result[model]
    assert tp_result["devices"] == 8
    assert res["moved"] > 1e-3  # 10 steps changed the parameters, so equality is not trivial
    for mesh in ("2x4", "4x2"):
        assert res[mesh]["max_abs_diff"] <= 1e-5, (model, mesh, res[mesh]["max_abs_diff"])


@pytest.mark.parametrize("model", ["mlp", "vgg"])
def test_compiled_step_keeps_theta_sharded(tp_result, model):
    for mesh in ("2x4", "4x2"):
        model_size = int(mesh.split("x")[1])
        thetas = tp_result[model][mesh]["theta"]
        assert thetas, "no theta parameters found"
        for path, info in thetas.items():
            assert info["compiled"] == "P('model', None)", (path, info)
            assert info["compiled_mu"] == "P('model', None)", (path, info)  # adam moment follows its parameter
            assert info["actual"] == "P('model', None)", (path, info)
            assert info["shard_shape"] == [info["shape"][0] // model_size, info["shape"][1]], (path, info)


def test_indivisible_sharding_is_a_clear_error(tp_result):
    msg = tp_result["indivisible_error"]
    assert "size 6" in msg and "multiple of 4" in msg, msg


def test_annotations_and_mesh_validation():
    mesh = sharding.make_mesh((1, 1), devices=jax.devices()[:1])
    state = nnx.state(GmPDense(3, 4, rngs=nnx.Rngs(0), **sharding.column_parallel("gmp")))
    specs = {
        jax.tree_util.keystr(p): s.spec
        for p, s in jax.tree_util.tree_flatten_with_path(sharding.state_shardings(state, mesh))[0]
    }
    assert specs == {
        "['offset'].value": jax.P("model"),
        "['radius'].value": jax.P("model"),
        "['theta'].value": jax.P("model", None),
    }
    placed = sharding.shard_state(state, mesh)
    np.testing.assert_array_equal(np.asarray(placed["theta"][...]), np.asarray(state["theta"][...]))
    assert sharding.row_parallel(kernel_ndim=4)["kernel_metadata"]["out_sharding"] == (None, None, "model", None)
    with pytest.raises(ValueError, match="mesh axis 'tensor'"):
        sharding.state_shardings(
            nnx.state(GmPDense(3, 4, rngs=nnx.Rngs(0), **sharding.column_parallel("gmp", axis="tensor"))), mesh
        )
    with pytest.raises(ValueError, match="DATAxMODEL"):
        sharding.parse_mesh_shape("2by4")
    with pytest.raises(ValueError, match="needs 8 devices"):
        sharding.make_mesh("2x4", devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="unknown parameterization"):
        sharding.column_parallel("foo")


def test_both_mesh_axis_types_train_like_one_device():
    """jax.make_mesh's default Explicit axes and Auto axes: same parameters as one device, theta split, no gather."""
    proc = childproc.run([sys.executable, str(childproc.SCRIPTS / "tp_axis_types.py")], num_devices=8, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :])
    assert res["devices"] == 8
    for kind in ("auto", "explicit"):
        assert res[kind]["max_abs_diff"] <= 1e-5, (kind, res[kind])
        assert res[kind]["theta_spec"] == "P('model', None)" and res[kind]["theta_gathers"] == [], (kind, res[kind])
    msg = res["mesh_mismatch_error"]  # a state sharded for 2x4 stepped on 4x2: named, not an XLA error
    assert "placed on a mesh {'data': 2, 'model': 4}" in msg and "shard_state" in msg, msg
