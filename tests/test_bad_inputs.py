"""The silent and inside-JAX cases of the drop-in trial (issue 19): each now gives a clear error, or works.

One test per reported case; the mask cases are in tests/test_optim.py, the explicit-mesh cases in
tests/test_tensor_parallel.py and tests/test_unit_kernel.py, the checkpoint cases in tests/test_checkpoint.py.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax import hyperspherical as hs
from gmpjax.layers import GmPDense, make_dense
from gmpjax.layers.parallel import column_parallel
from gmpjax.train.engine import init_train_state, make_train_step


def test_zero_vector_has_no_angles():
    with pytest.raises(ValueError, match="all-zero rows at \\[\\[1\\]\\].*no direction"):
        hs.unit_to_angles(jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    theta = hs.unit_to_angles(jnp.zeros((1, 3)), allow_zero=True)  # explicit: radius-0 units
    np.testing.assert_array_equal(theta, 0.0)


def test_to_linear_under_jit_refuses_to_guess_the_radius_sign():
    layer = GmPDense(3, 2, rngs=nnx.Rngs(0))
    layer.radius[...] = jnp.array([1.0, -1.0])
    with pytest.raises(ValueError, match="concrete radii.*outside jax.jit"):
        nnx.jit(lambda m: m.to_linear().kernel[...])(layer)
    with pytest.raises(ValueError, match="radius < 0"):
        layer.to_linear()
    linear = GmPDense(3, 2, activation=None, rngs=nnx.Rngs(0))
    assert nnx.jit(lambda m: m.to_linear().kernel[...])(linear).shape == (3, 2)  # no activation: any sign is exact


def test_a_precomputed_unit_must_be_unit_vectors():
    layer = GmPDense(4, 3, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="rows of norm 1"):
        layer(x, unit=jnp.ones((3, 4)))
    np.testing.assert_allclose(layer(x, unit=layer.unit()), layer(x), atol=1e-6)


def test_method_names_have_one_spelling_so_lrs_and_paper_numbers_match():
    sys.path.insert(0, ".")
    from experiments import cli

    cfg = cli.Common(methods=("GMP", "Sp", "gmp+imn"))
    assert cfg.methods == ("gmp", "sp", "gmp_imn")


def test_workdir_that_is_a_file_is_a_one_line_cli_error(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.uci", "--quick", "--workdir", str(f)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--workdir" in proc.stderr and "is a file" in proc.stderr


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"dtype": "bf16"}, TypeError, "dtype='bf16' is not a dtype"),
        ({"dtype": jnp.int32}, TypeError, "dtype must be a floating dtype"),
        ({"param_dtype": jnp.int32}, TypeError, "param_dtype must be a floating dtype"),
        ({"theta_metadata": {"sharding": ("model", None)}}, ValueError, "old key 'sharding'.*out_sharding"),
    ],
)
def test_constructor_arguments_are_checked_where_given(kwargs, err, match):
    with pytest.raises(err, match=match):
        GmPDense(4, 3, rngs=nnx.Rngs(0), **kwargs)


def test_sharding_names_the_mesh_does_not_have():
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="mesh axes \\['tensor'\\].*has axes \\('data',\\)"):
        GmPDense(4, 3, theta_metadata={"out_sharding": ("tensor", None)}, rngs=nnx.Rngs(0))


def test_partition_spec_without_a_mesh():
    layer = GmPDense(4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no mesh is set.*jax.set_mesh"):
        layer(jnp.ones((2, 4)), out_sharding=jax.P("data"))


def test_eager_annotations_need_a_mesh():
    with pytest.raises(ValueError, match="eager=True.*jax.set_mesh"):
        column_parallel("gmp", eager=True)


def test_prng_key_not_an_int():
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        hs.sample_uniform_angles(0, (5, 3))
    assert hs.sample_uniform_angles(jax.random.PRNGKey(0), (5, 3)).shape == (5, 3)  # raw uint32 keys still work


def test_make_dense_names_a_keyword_the_layer_does_not_take():
    with pytest.raises(TypeError, match="make_dense\\('sp'\\): SPDense takes no keyword 'init'"):
        make_dense("sp", 3, 4, init="official", rngs=nnx.Rngs(0))


def _state(tx):
    return init_train_state(GmPDense(4, 3, rngs=nnx.Rngs(0)), tx)


def test_per_example_loss_is_refused():
    graphdef, state = _state(optax.sgd(0.1))
    step = make_train_step(graphdef, optax.sgd(0.1), lambda m, x: jnp.sum(m(x) ** 2, axis=-1))
    with pytest.raises(ValueError, match="scalar loss.*\\(8,\\).*mean"):
        step(state, jnp.ones((8, 4)))


def test_state_of_another_optimizer_is_refused():
    graphdef, sgd_state = _state(optax.sgd(0.1))
    step = make_train_step(graphdef, optax.adam(1e-3), lambda m, x: jnp.mean(m(x) ** 2))
    with pytest.raises(ValueError, match="optimizer does not match state.opt_state"):
        step(sgd_state, jnp.ones((8, 4)))


def test_linearize_through_a_gmp_layer():
    layer = GmPDense(4, 3, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    x = jnp.ones((2, 4))
    _, f_jvp = jax.linearize(lambda p: nnx.merge(graphdef, p)(x), params)
    tangent = jax.tree.map(jnp.ones_like, params)
    assert f_jvp(tangent).shape == (2, 3)


def test_abstract_state_names_a_mesh_passed_as_sharding():
    from gmpjax.train.checkpoint import abstract_state

    _, state = _state(optax.sgd(0.1))
    with pytest.raises(TypeError, match="a Mesh: pass NamedSharding\\(mesh, P\\(\\)\\)"):
        abstract_state(state, jax.make_mesh((1,), ("data",), devices=jax.devices()[:1]))


def test_a_failed_background_save_is_named_at_wait(tmp_path, monkeypatch):
    """A read-only or full disk shows up when the async write finishes: CheckpointError with the directory."""
    from gmpjax.train.checkpoint import Checkpointer, CheckpointError

    ckpt = Checkpointer(tmp_path / "ck")

    def fail():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.manager, "wait_until_finished", fail)
    with pytest.raises(CheckpointError, match="ck failed \\(OSError.*No space left.*writable"):
        ckpt.wait()
