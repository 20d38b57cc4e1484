"""Exact linear-region counting by breakpoint propagation (gmpjax.regions)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmpjax import regions as rg
from gmpjax import triangular as tri
from gmpjax.layers import ReLUMLP, TriangleNet


def _np_net(layers, x):
    h = np.asarray(x, np.float64)[:, None]
    for k, (W, b) in enumerate(layers):
        h = h @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def test_hand_made_networks():
    relu = [(np.array([[1.0]]), np.array([0.0])), (np.array([[1.0]]), np.array([0.0]))]
    assert rg.count_linear_regions(relu, (-1, 1)) == 2
    assert rg.count_linear_regions(relu, (0.5, 1)) == 1
    # |x| = relu(x) + relu(-x): one kink at 0
    absx = [(np.array([[1.0, -1.0]]), np.zeros(2)), (np.array([[1.0], [1.0]]), np.zeros(1))]
    assert rg.count_linear_regions(absx, (-2, 3)) == 2
    # relu(x) - relu(x): identically zero -> the kinks cancel, one piece
    zero = [(np.array([[1.0, 1.0]]), np.zeros(2)), (np.array([[1.0], [-1.0]]), np.zeros(1))]
    assert rg.count_linear_regions(zero, (-1, 1)) == 1
    assert rg.count_activation_regions(zero, (-1, 1)) == 2  # the pattern still changes at 0
    p = rg.linear_pieces(absx, (-2, 3))
    np.testing.assert_allclose(p.knots, [-2, 0, 3])
    np.testing.assert_allclose(p.slopes[:, 0], [-1, 1])


@pytest.mark.parametrize("seed", range(6))
def test_random_mlps_pieces_are_linear_and_distinct(seed):
    """Every reported piece is linear (checked at random interior points) and neighbours differ in slope."""
    rng = np.random.default_rng(seed)
    sizes = (1, 8, 8, 6, 1)
    layers = [(rng.normal(size=(a, b)) * 1.5, rng.normal(size=b)) for a, b in itertools.pairwise(sizes)]
    p = rg.linear_pieces(layers, (-3, 3))
    assert p.count >= 2
    for j in range(p.count):
        lo, hi = p.knots[j], p.knots[j + 1]
        t = rng.uniform(lo, hi, 7)
        interp = p.values[j, 0] + p.slopes[j, 0] * (t - lo)
        np.testing.assert_allclose(_np_net(layers, t)[:, 0], interp, atol=1e-9, rtol=1e-9)
        # the slope from the knot values agrees with the Jacobian slope
        if hi - lo > 1e-6:
            assert (p.values[j + 1, 0] - p.values[j, 0]) / (hi - lo) == pytest.approx(
                p.slopes[j, 0], rel=1e-6, abs=1e-8
            )
    assert np.all(np.abs(np.diff(p.slopes[:, 0])) > 1e-9)
    # an independent, grid-based lower bound: slope changes seen on a fine grid
    x = np.linspace(-3, 3, 200001)
    y = _np_net(layers, x)[:, 0]
    s = np.diff(y) / np.diff(x)
    grid_kinks = np.sum(np.abs(np.diff(s)) > 1e-6)
    # each true kink shows up as 1 (knot on a grid point) or 2 grid slope changes
    assert p.count - 1 <= grid_kinks <= 2 * (p.count - 1)


@pytest.mark.parametrize("sign", [-1, 1])
def test_triangle_nets_have_exactly_2_to_the_d_regions(sign):
    rng = np.random.default_rng(10 + sign)
    with jax.enable_x64(True):
        for d in range(1, 11):
            for _ in range(3):
                a = jnp.asarray(rng.uniform(0.2, 0.8, d + 1))
                layers = tri.peaks_to_weights(a, tri.theorem31_scales(a, tri.normalised_s0(a)), sign)
                assert rg.count_linear_regions(layers) == 2**d, (d, sign)
                assert rg.count_activation_regions(layers) == 2**d


def test_float32_artefacts_are_absorbed_by_min_width():
    net = TriangleNet(5, mode="raw", rngs=nnx.Rngs(1))  # float32 weights: valleys miss 0 by ~1e-8
    exact = rg.count_linear_regions(net)
    assert exact >= 32
    assert rg.count_linear_regions(net, min_width=1e-6) == 32


def test_batched_counts_equal_individual_counts():
    nets = [ReLUMLP((1, 4, 4, 4, 1), rngs=nnx.Rngs(s)) for s in range(4)]
    stacked = [
        (np.stack([n.layer_arrays()[k][0] for n in nets]), np.stack([n.layer_arrays()[k][1] for n in nets]))
        for k in range(4)
    ]
    np.testing.assert_array_equal(
        rg.count_linear_regions_batched(stacked, (-1, 1)), [rg.count_linear_regions(n, (-1, 1)) for n in nets]
    )


def test_relu_mlp_matches_module():
    net = ReLUMLP((1, 5, 3, 2), rngs=nnx.Rngs(0))
    x = jnp.linspace(-1, 1, 11)[:, None]
    np.testing.assert_allclose(rg.relu_mlp(net.layer_arrays(), x), net(x), atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    two_in = [(np.ones((2, 3)), np.zeros(3)), (np.ones((3, 1)), np.zeros(1))]
    with pytest.raises(ValueError, match="1-input"):
        rg.count_linear_regions(two_in)
    with pytest.raises(ValueError, match="previous layer"):
        rg.count_linear_regions([(np.ones((1, 3)), np.zeros(3)), (np.ones((2, 1)), np.zeros(1))])
    with pytest.raises(ValueError, match=r"b \(out,\)"):
        rg.count_linear_regions([(np.ones((1, 3)), np.zeros(2))])
    with pytest.raises(TypeError, match="list of \\(W, b\\)"):
        rg.count_linear_regions(np.ones((3, 3)))
    with pytest.raises(ValueError, match="lo < hi"):
        rg.count_linear_regions([(np.ones((1, 1)), np.zeros(1))], (1, 0))
    with pytest.raises(ValueError, match="pair"):
        rg.count_linear_regions([(np.ones((1, 1)), np.zeros(1))], 3.0)


def test_plot_helper(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    net = TriangleNet(3, rngs=nnx.Rngs(0))
    ax = rg.plot_linear_regions(net, target=lambda x: x**3)
    assert "8 linear regions" in ax.get_title()
    ax.figure.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0
