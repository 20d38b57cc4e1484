"""The Pallas kernels of u(theta) (gmpjax/_pallas_unit.py): values, derivatives and lowering for GPU and TPU.

Values and derivatives run both kernel variants (Mosaic through the public functions, which pick it on CPU, and
Triton through its private wrappers) in the Pallas interpreter on CPU, against float64 references. Lowering runs
``jax.export`` for ``cuda`` and ``tpu`` on this host, which needs no device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from gmpjax import _pallas_unit as pu

Array = jax.Array

#: variant -> (fwd, tangent, bwd), each ``f(*arrays, renormalize)`` in interpret mode
VARIANTS: dict[str, tuple[Callable[..., Array], ...]] = {
    "mosaic": (
        lambda th, rn: pu.unit_fwd(th, renormalize=rn, interpret=True),
        lambda th, t, rn: pu.unit_tangent(th, t, renormalize=rn, interpret=True),
        lambda th, g, rn: pu.unit_bwd(th, g, renormalize=rn, interpret=True),
    ),
    "triton": tuple(
        jax.jit(functools.partial(f, interpret=True), static_argnames="renormalize")
        for f in (pu._triton_fwd, pu._triton_tangent, pu._triton_bwd)
    ),
}
#: (shape, renormalize) for the values: (13, 300) spans three 128-angle TPU tiles, (1100, 2) two 1024-row TPU
#: blocks and nine 128-row Triton programs; every shape has M and K off the block sizes.
FWD_CASES = [((1, 1), False), ((3, 5), True), ((13, 300), False), ((13, 300), True), ((1100, 2), True)]
DERIV_SHAPE = (13, 300)
#: the edge angles; rows 0 and 1 of the derivative inputs carry them at the start and across the first tile boundary
EDGE = np.array([0.0, 1.0, np.pi, 0.5, 0.0, 0.0, -0.3, 2.0])
EDGE_AT = {0: 0, 1: 124}


def closed_form(theta: np.ndarray) -> np.ndarray:
    """``u_i = cos(theta_i) prod_{k<i} sin(theta_k)`` (``cos(theta_K) := 1``), float64 numpy, ``(M, K+1)``."""
    theta = np.asarray(theta, np.float64)
    prefix = np.cumprod(np.concatenate([np.ones((theta.shape[0], 1)), np.sin(theta)], axis=1), axis=1)
    return prefix * np.concatenate([np.cos(theta), np.ones((theta.shape[0], 1))], axis=1)


def reference(theta: Array) -> Array:
    """u(theta) in the ``jnp.cumprod`` form (differentiable, no division), ``(M, K) -> (M, K+1)``."""
    p = jnp.cumprod(jnp.sin(theta), axis=1)
    ones = jnp.ones_like(theta[:, :1])
    return jnp.concatenate([ones, p], axis=1) * jnp.concatenate([jnp.cos(theta), ones], axis=1)


@jax.jit
def _reference_jvp_vjp(theta: Array, t: Array, g: Array) -> tuple[Array, Array, Array]:
    """``(u, J t, J^T g)`` of ``reference`` by jax.jvp / jax.vjp."""
    u, jt = jax.jvp(reference, (theta,), (t,))
    (jtg,) = jax.vjp(reference, theta)[1](g)
    return u, jt, jtg


def inputs(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 ``theta`` uniform in [-4, 4] (edge angles in rows 0, 1), ``t (M, K)`` and ``g (M, K+1)`` N(0, 1)."""
    rng = np.random.default_rng(seed)
    m, k = shape
    theta = rng.uniform(-4.0, 4.0, shape)
    for row, at in EDGE_AT.items():
        if row < m and at + EDGE.size <= k:
            theta[row, at : at + EDGE.size] = EDGE
    return theta.astype(np.float32), *(rng.standard_normal(s).astype(np.float32) for s in (shape, (m, k + 1)))


@functools.cache
def reference_derivatives(renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(J t, J^T g)`` at the float32 ``inputs(DERIV_SHAPE)``, times the constant row scale if asked."""
    with jax.enable_x64(True):
        u, jt, jtg = (
            np.asarray(x) for x in _reference_jvp_vjp(*(jnp.asarray(x, jnp.float64) for x in inputs(DERIV_SHAPE)))
        )
    scale = 1.0 / np.linalg.norm(u, axis=1, keepdims=True) if renormalize else 1.0
    return jt * scale, jtg * scale


@functools.cache
def kernel_derivatives(variant: str, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' float32 ``(J t, J^T g)`` at ``inputs(DERIV_SHAPE)`` (cached: interpreting compiles slowly)."""
    _, tangent, bwd = VARIANTS[variant]
    theta, t, g = (jnp.asarray(x) for x in inputs(DERIV_SHAPE))
    return np.asarray(tangent(theta, t, renormalize)), np.asarray(bwd(theta, g, renormalize))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("shape", "renormalize"), FWD_CASES)
def test_fwd_matches_closed_form_float32(variant: str, shape: tuple[int, int], renormalize: bool) -> None:
    theta, _, _ = inputs(shape)
    u = np.asarray(VARIANTS[variant][0](jnp.asarray(theta), renormalize))
    assert u.shape == (shape[0], shape[1] + 1) and u.dtype == np.float32
    np.testing.assert_allclose(u, closed_form(theta), rtol=0, atol=1e-6)
    if renormalize:
        np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, rtol=0, atol=3e-7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fwd_matches_closed_form_float64(variant: str) -> None:
    theta, _, _ = inputs(DERIV_SHAPE, seed=1)
    with jax.enable_x64(True):
        u = np.asarray(VARIANTS[variant][0](jnp.asarray(theta, jnp.float64), True))
    assert u.dtype == np.float64
    np.testing.assert_allclose(u, closed_form(theta), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("renormalize", [False, True])
def test_derivatives_match_jvp_vjp(variant: str, renormalize: bool) -> None:
    jt, jtg = kernel_derivatives(variant, renormalize)
    want_jt, want_jtg = reference_derivatives(renormalize)
    assert jt.shape == want_jt.shape and jtg.shape == want_jtg.shape
    np.testing.assert_allclose(jt, want_jt, rtol=0, atol=2e-6)
    np.testing.assert_allclose(jtg, want_jtg, rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_at_zero_and_pi(variant: str) -> None:
    """Rows with angles 0 and pi (sin = 0): finite, and as exact as the float64 reference at the same angles."""
    jt, jtg = kernel_derivatives(variant, True)
    want_jt, want_jtg = reference_derivatives(True)
    rows = list(EDGE_AT)
    theta = inputs(DERIV_SHAPE)[0][rows]
    assert np.all(theta[0, : EDGE.size] == EDGE.astype(np.float32))
    u = np.asarray(VARIANTS[variant][0](jnp.asarray(theta), True))
    for got in (u, jt[rows], jtg[rows]):
        assert np.isfinite(got).all()
    np.testing.assert_allclose(u, closed_form(theta), rtol=0, atol=1e-6)
    np.testing.assert_allclose(jt[rows], want_jt[rows], rtol=0, atol=1e-6)
    np.testing.assert_allclose(jtg[rows], want_jtg[rows], rtol=0, atol=1e-6)
    assert np.all(u[0, 1:] == 0.0) and np.all(jtg[0, 1:] == 0.0)  # theta_0 = 0: exactly e_0, and no gradient after


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("renormalize", [False, True])
def test_bwd_is_transpose_of_tangent(variant: str, renormalize: bool) -> None:
    """``<g, J t> == <J^T g, t>`` row by row (float32 sums of 300 terms: relative to the sum of magnitudes)."""
    jt, jtg = kernel_derivatives(variant, renormalize)
    _, t, g = (x.astype(np.float64) for x in inputs(DERIV_SHAPE))
    lhs, rhs = np.sum(g * jt, axis=1), np.sum(jtg * t, axis=1)
    size = np.sum(np.abs(g * jt), axis=1) + np.sum(np.abs(jtg * t), axis=1)
    np.testing.assert_array_less(np.abs(lhs - rhs), 1e-6 * size)


# ---------------------------------------------------------------------------
# lowering without a device
# ---------------------------------------------------------------------------

M, K = 256, 4095
THETA = jax.ShapeDtypeStruct((M, K), jnp.float32)
FUNCTIONS: dict[str, tuple[Callable[..., Array], tuple[jax.ShapeDtypeStruct, ...]]] = {
    "fwd": (lambda th: pu.unit_fwd(th, renormalize=True), (THETA,)),
    "tangent": (lambda th, t: pu.unit_tangent(th, t, renormalize=True), (THETA, THETA)),
    "bwd": (lambda th, g: pu.unit_bwd(th, g, renormalize=True), (THETA, jax.ShapeDtypeStruct((M, K + 1), jnp.float32))),
}
#: the custom call that carries each platform's kernel in the exported module
KERNEL_CALL = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


@pytest.mark.parametrize("platform", KERNEL_CALL)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_lowers_for_platform(platform: str, name: str) -> None:
    fn, args = FUNCTIONS[name]
    # jax.export refuses custom calls without a compatibility guarantee; the Triton call has none (Mosaic's has),
    # so its check is switched off: the point here is that the kernel lowers, not that the artifact is stable.
    disabled = [export.DisabledSafetyCheck.custom_call(KERNEL_CALL["cuda"])] if platform == "cuda" else []
    exp = export.export(jax.jit(fn), platforms=[platform], disabled_checks=disabled)(*args)
    text = exp.mlir_module()
    assert KERNEL_CALL[platform] in text
    other = next(p for p in KERNEL_CALL if p != platform)
    assert KERNEL_CALL[other] not in text  # only this platform's branch of lax.platform_dependent is lowered
    assert exp.out_avals[0].shape == (M, K if name == "bwd" else K + 1)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="2-D"):
        pu.unit_fwd(jnp.zeros((3,)), renormalize=False, interpret=True)
    with pytest.raises(ValueError, match="g must have shape"):
        pu.unit_bwd(jnp.zeros((2, 3)), jnp.zeros((2, 3)), renormalize=False, interpret=True)
