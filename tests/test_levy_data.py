"""The 1-D Levy task's generator (gmpjax.data.levy): the function, the released notebook's draw, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest

from gmpjax.data import levy, levy_data


def test_levy_function_known_values():
    # global minimum f(1) = 0; at x = 0: w = 3/4, sin^2(3 pi/4) + (1/16)(1 + sin^2(3 pi/2)) = 1/2 + 1/8
    assert levy(1.0) == pytest.approx(0.0, abs=1e-12)
    assert levy(0.0) == pytest.approx(0.625, abs=1e-12)
    x = np.linspace(-10, 10, 7).reshape(7, 1)
    assert levy(x).shape == (7, 1) and np.all(levy(x) >= 0)


def test_levy_data_shapes_grid_and_noise():
    d = levy_data()
    assert {k: v.shape for k, v in d.items()} == {"x": (50, 1), "y": (50, 1), "x_test": (201, 1), "y_test": (201, 1)}
    assert all(v.dtype == np.float64 for v in d.values())
    assert np.all(np.abs(d["x"]) <= 10)
    np.testing.assert_allclose(d["x_test"][[0, 100, -1], 0], [-10.0, 0.0, 10.0], atol=1e-9)
    np.testing.assert_array_equal(d["y_test"], levy(d["x_test"]))  # the test grid is noiseless
    assert 0.05 < np.std(d["y"] - levy(d["x"])) < 0.2  # noise std 0.1


def test_levy_data_is_the_released_notebooks_draw():
    # numpy RandomState(0): first the 50 x ~ U(-10, 10), then the noise (values of the earlier experiments.levy_1d)
    d = levy_data()
    np.testing.assert_allclose(d["x"][:3, 0], [0.9762700785464951, 4.30378732744839, 2.055267521432878], rtol=1e-15)
    np.testing.assert_allclose(d["y"][:2, 0], [-0.170244462030977, 1.6859108518688481], rtol=1e-14)
    e = levy_data(num_train=7, noise=0.0, seed=3)
    assert e["x"].shape == (7, 1)
    np.testing.assert_array_equal(e["y"], levy(e["x"]))
    np.testing.assert_array_equal(levy_data(seed=3)["x"][:7], e["x"])


@pytest.mark.parametrize(("kwargs", "match"), [({"num_train": 0}, "num_train"), ({"noise": -1.0}, "noise")])
def test_levy_data_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        levy_data(**kwargs)
