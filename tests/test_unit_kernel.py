"""The u(theta) primitive and its native CPU kernels: edges, transforms, fallback, export and sharding.

The value and gradient checks shared with the XLA implementations (float64 closed form, product-rule
Jacobian, exact zeros and pi, ``check_grads`` to order 2) run on ``native`` through the ``IMPLS``
parametrisation of ``tests/test_unit_impls.py``; this file covers what is particular to the kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_unit_impls import closed_form, jacobian_product_rule

from gmpjax import _native
from gmpjax import _unit_impls as U
from gmpjax import _unit_kernel as K
from gmpjax import hyperspherical as hs
from gmpjax.layers import GmPDense

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import childproc  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"native kernels: {_native.status()}")


def _renorm(u: np.ndarray) -> np.ndarray:
    return u / np.linalg.norm(u, axis=-1, keepdims=True)


def _ref_derivatives(theta: np.ndarray, t: np.ndarray, g: np.ndarray, renormalize: bool):
    """float64 ``S J t`` and ``J^T S g`` row by row from the product-rule Jacobian."""
    scale = 1.0 / np.linalg.norm(closed_form(theta), axis=-1) if renormalize else np.ones(theta.shape[0])
    jacs = [jacobian_product_rule(row) for row in theta]
    du = np.stack([s * (j @ ti) for s, j, ti in zip(scale, jacs, t, strict=True)])
    dth = np.stack([j.T @ (s * gi) for s, j, gi in zip(scale, jacs, g, strict=True)])
    return du, dth


# rows: below, at and across the 8-row blocks; angles: 1, 2 and odd lengths
@pytest.mark.parametrize("m, k", [(1, 1), (7, 2), (8, 5), (9, 33), (17, 64)])
@pytest.mark.parametrize("renormalize", [False, True])
def test_kernels_float64_at_block_edges(m, k, renormalize):
    with jax.enable_x64(True):
        rng = np.random.default_rng(m * 100 + k)
        theta = rng.normal(size=(m, k)) * 2.0
        theta[0, : min(k, 2)] = 0.0  # exact zeros
        theta[-1, -1] = np.pi
        t, g = rng.normal(size=(m, k)), rng.normal(size=(m, k + 1))
        th = jnp.asarray(theta)
        u_ref = closed_form(theta)
        u_ref = _renorm(u_ref) if renormalize else u_ref
        np.testing.assert_allclose(K.unit(th, renormalize=renormalize), u_ref, atol=1e-13)
        du_ref, dth_ref = _ref_derivatives(theta, t, g, renormalize)
        np.testing.assert_allclose(K.unit_tangent(th, jnp.asarray(t), renormalize=renormalize), du_ref, atol=1e-12)
        np.testing.assert_allclose(K.unit_bwd(th, jnp.asarray(g), renormalize=renormalize), dth_ref, atol=1e-12)
        assert "gmpjax_unit_fwd_f64" in jax.jit(lambda x: K.unit(x)).lower(th).as_text()


def test_float32_across_threads_and_large_angles():
    """Enough rows for several tasks; one row of huge angles and one with a NaN take the exact path."""
    theta = np.array(hs.sample_uniform_angles(jax.random.key(0), (301, 600)))
    theta[5] *= 1e5  # |theta| far beyond the float32 reduction's range
    theta[6, 3] = np.nan
    u = np.asarray(K.unit(jnp.asarray(theta), renormalize=False))
    ref = closed_form(theta)
    ok = np.arange(301) != 6
    np.testing.assert_allclose(u[ok], ref[ok], atol=2e-6)
    assert np.all(np.isnan(u[6, 3:])) and np.all(np.isfinite(u[6, :3]))
    g = np.asarray(jax.random.normal(jax.random.key(1), (301, 601)))
    grad = jax.grad(lambda x: jnp.sum(jnp.asarray(g[:40]) * K.unit(x, renormalize=False)))(jnp.asarray(theta[:40]))
    expect = np.stack([jacobian_product_rule(r).T @ gi for r, gi in zip(theta[:40], g[:40], strict=True)])
    scale = np.abs(expect).max()
    np.testing.assert_allclose(np.asarray(grad) / scale, expect / scale, atol=2e-5)


def test_every_transform_on_the_default():
    """jvp, jacfwd, jacrev, hessian, linearize and vmap of angles_to_unit with impl='auto'."""
    with jax.enable_x64(True):
        theta = jax.random.normal(jax.random.key(2), (5,), jnp.float64)
        jac = jacobian_product_rule(np.asarray(theta))
        u = hs.angles_to_unit(theta)
        assert jax.jvp(hs.angles_to_unit, (theta,), (theta,))[1].shape == u.shape
        np.testing.assert_allclose(jax.jacfwd(hs.angles_to_unit)(theta), jac, atol=1e-12)
        np.testing.assert_allclose(jax.jacrev(hs.angles_to_unit)(theta), jac, atol=1e-12)
        np.testing.assert_allclose(jax.linearize(hs.angles_to_unit, theta)[1](theta), jac @ np.asarray(theta))
        f = lambda t: jnp.sum(jnp.sin(3.0 * hs.angles_to_unit(t)))  # noqa: E731
        ref = lambda t: jnp.sum(jnp.sin(3.0 * U.unit_cumprod(t)))  # noqa: E731
        np.testing.assert_allclose(jax.hessian(f)(theta), jax.hessian(ref)(theta), atol=1e-10)
        batch = jax.random.normal(jax.random.key(3), (4, 3, 5), jnp.float64)
        on_last = jax.vmap(hs.angles_to_unit, in_axes=2, out_axes=2)(batch.swapaxes(1, 2))  # batch axis last
        np.testing.assert_allclose(on_last, hs.angles_to_unit(batch).swapaxes(1, 2), atol=1e-12)
        per = jax.vmap(jax.grad(f))(batch.reshape(12, 5))
        np.testing.assert_allclose(per, jax.vmap(jax.grad(ref))(batch.reshape(12, 5)), atol=1e-12)


def test_every_transform_through_a_gmp_layer():
    layer = GmPDense(4, 3, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer, nnx.Param)
    x = jax.random.normal(jax.random.key(4), (3, 4))

    def loss(theta):
        p = jax.tree.map(lambda v: v, params)
        p["theta"] = nnx.Param(theta)
        return jnp.sum(nnx.merge(graphdef, p)(x) ** 2)

    theta = params["theta"][...]
    ref_layer = GmPDense(4, 3, impl="cumprod", rngs=nnx.Rngs(0))
    ref_graphdef, _ = nnx.split(ref_layer, nnx.Param)

    def ref_loss(theta):
        p = jax.tree.map(lambda v: v, params)
        p["theta"] = nnx.Param(theta)
        return jnp.sum(nnx.merge(ref_graphdef, p)(x) ** 2)

    for transform, tol in ((jax.grad, 1e-5), (jax.jacfwd, 1e-5), (jax.hessian, 1e-3)):
        np.testing.assert_allclose(transform(loss)(theta), transform(ref_loss)(theta), atol=tol, rtol=1e-4)


def test_low_precision_angles_lower_to_xla_on_cpu():
    theta = jax.random.normal(jax.random.key(5), (3, 7)).astype(jnp.bfloat16)
    text = jax.jit(lambda t: K.unit(t)).lower(theta).as_text()
    assert "gmpjax_unit" not in text
    assert K.lowered_kernel("fwd", "cpu", dtype=jnp.bfloat16) == "xla"
    u = K.unit(theta)
    assert u.dtype == jnp.bfloat16
    ref = _renorm(closed_form(np.asarray(theta, np.float64)))
    np.testing.assert_allclose(np.asarray(u, np.float32), ref, atol=2e-2)


def test_primitive_errors_name_the_operand():
    with pytest.raises(ValueError, match="cotangent of u"):
        K.unit_bwd(jnp.ones((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="tangent of theta"):
        K.unit_tangent(jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="kernel must be one of"):
        K.unit(jnp.ones((2, 3)), kernel="fastest")


# ---------------------------------------------------------------------------------------------
# Portable dispatch: what an export for each platform carries
# ---------------------------------------------------------------------------------------------


def _export_text(platforms: list[str]) -> str:
    model = GmPDense(32, 16, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x)

    checks = [jax.export.DisabledSafetyCheck.custom_call(name) for name, _ in _native.TARGETS.values()]
    exp = jax.export.export(
        jax.jit(jax.value_and_grad(lambda s, x: jnp.sum(forward(s, x)))), platforms=platforms, disabled_checks=checks
    )(state, jax.ShapeDtypeStruct((8, 32), jnp.float32))
    return exp.mlir_module()


def test_export_carries_each_platforms_kernel():
    cpu, cuda, tpu = (_export_text([p]) for p in ("cpu", "cuda", "tpu"))
    assert "gmpjax_unit_fwd_f32" in cpu and "gmpjax_unit_bwd_f32" in cpu
    for text in (cuda, tpu):  # the device default (DEVICE_KERNELS): XLA's parallel prefix, no CPU kernel
        assert "gmpjax_unit" not in text and "stablehlo.sine" in text
    both = _export_text(["cpu", "cuda"])
    assert "gmpjax_unit_fwd_f32" in both and "stablehlo.case" in both  # one branch per platform


def test_exported_cpu_program_runs_and_matches():
    model = GmPDense(32, 16, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(6), (8, 32))
    checks = [jax.export.DisabledSafetyCheck.custom_call(name) for name, _ in _native.TARGETS.values()]
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    exp = jax.export.export(f, platforms=["cpu"], disabled_checks=checks)(state, x)
    np.testing.assert_allclose(exp.call(state, x), f(state, x), atol=1e-6)


def test_pallas_kernels_lower_through_the_primitive():
    theta = jax.ShapeDtypeStruct((64, 127), jnp.float32)

    def f(t):
        return jax.value_and_grad(lambda t: jnp.sum(hs.angles_to_unit(t, impl="pallas") ** 3))(t)

    # Triton calls carry no export compatibility guarantee, so jax.export needs them allowed explicitly
    checks = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    for platform, marker in (("cuda", "triton"), ("tpu", "tpu_custom_call")):
        text = jax.export.export(jax.jit(f), platforms=[platform], disabled_checks=checks)(theta).mlir_module()
        assert marker in text and "gmpjax_unit" not in text, platform


# ---------------------------------------------------------------------------------------------
# Fallback, sharding (child processes)
# ---------------------------------------------------------------------------------------------

_FALLBACK = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="LOG %(message)s")
import jax, jax.numpy as jnp, numpy as np
from gmpjax import _native, hyperspherical as hs, _unit_impls as U
theta = hs.sample_uniform_angles(jax.random.key(0), (9, 40))
g = jax.random.normal(jax.random.key(1), (9, 41))
text = jax.jit(jax.grad(lambda t: jnp.sum(g * hs.angles_to_unit(t)))).lower(theta).as_text()
u, grad = hs.angles_to_unit(theta), jax.grad(lambda t: jnp.sum(g * hs.angles_to_unit(t)))(theta)
u2 = hs.angles_to_unit(theta)  # a second use does not warn again
ref = jax.grad(lambda t: jnp.sum(g * hs.angles_to_unit(t, impl="cumprod")))(theta)
du = jax.jvp(hs.angles_to_unit, (theta,), (g[:, :40],))[1]
du_ref = jax.jvp(lambda t: hs.angles_to_unit(t, impl="cumprod"), (theta,), (g[:, :40],))[1]
print("RESULT", "gmpjax_unit" in text, float(jnp.abs(u - hs.angles_to_unit(theta, impl="cumprod")).max()),
      float(jnp.abs(grad - ref).max()), _native.available(), float(jnp.abs(du - du_ref).max()))
"""


def _run_fallback(env_extra: dict[str, str]) -> tuple[list[str], list[str]]:
    env = childproc.child_env(1)
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", _FALLBACK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    return [ln for ln in lines if ln.startswith("LOG ")], next(ln for ln in lines if ln.startswith("RESULT")).split()


@pytest.mark.parametrize(
    "env_extra, why",
    [({"GMPJAX_NATIVE": "0"}, "disabled by $GMPJAX_NATIVE=0"), ({"CXX": "false"}, "unavailable (RuntimeError")],
)
def test_fallback_without_the_native_kernel(tmp_path, env_extra, why):
    """No kernel (disabled, or a compiler that fails): XLA runs the map, same numbers, one warning naming why."""
    logs, result = _run_fallback({**env_extra, "GMPJAX_CACHE_DIR": str(tmp_path / "cache")})
    assert len(logs) == 1 and why in logs[0] and "XLA implementation" in logs[0], logs
    has_call, u_err, g_err, available = result[1], float(result[2]), float(result[3]), result[4]
    assert has_call == "False" and available == "False"
    assert u_err < 1e-6 and g_err < 1e-5 and float(result[5]) < 1e-5  # forward, reverse and forward mode


def test_build_cache_is_keyed_and_reused(tmp_path):
    """A fresh cache builds one library, named by the jaxlib version; a second process reuses it."""
    logs, result = _run_fallback({"GMPJAX_CACHE_DIR": str(tmp_path)})
    assert result[1] == "True" and result[4] == "True" and not logs
    built = sorted(p.name for p in tmp_path.iterdir())
    import jaxlib

    assert len(built) == 1 and built[0].startswith(f"unit_kernels-jaxlib{jaxlib.__version__}-"), built
    mtime = (tmp_path / built[0]).stat().st_mtime_ns
    _run_fallback({"GMPJAX_CACHE_DIR": str(tmp_path)})
    assert (tmp_path / built[0]).stat().st_mtime_ns == mtime


def test_row_sharded_theta_runs_the_kernel_per_device():
    """8 host devices, Auto and Explicit axes: no all-gather of theta, same result as one device."""
    proc = childproc.run([sys.executable, str(childproc.SCRIPTS / "unit_sharding.py")], num_devices=8, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :])
    assert res["devices"] == 8 and res["moved"] > 1e-2
    for kind in ("auto", "explicit"):
        r = res[kind]
        assert r["theta_gathers"] == [], (kind, r["theta_gathers"])
        assert r["native_calls"] >= 2 and r["shard_shape"] == [16, 31], (kind, r)
        assert r["max_abs_diff"] <= 1e-5, (kind, r["max_abs_diff"])
