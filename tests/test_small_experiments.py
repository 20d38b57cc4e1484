"""The illustrative experiments (perturbation demo, 1-D Levy, 2-D banana) in their quick modes."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from gmpjax.data.paths import DataError

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture
def banana_data_dir(monkeypatch):
    d = os.environ.get("GMPJAX_DATA_DIR") or SHARED
    if not os.path.exists(os.path.join(d, "banana", "2d_banana.csv")):
        pytest.skip("banana data not available (set GMPJAX_DATA_DIR to ../shared/data)")
    monkeypatch.setenv("GMPJAX_DATA_DIR", d)
    monkeypatch.setenv("GMPJAX_NO_DOWNLOAD", "1")
    return d


def _finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, dtype=float))))


# ----------------------------------------------------------------------------- perturbation demo
def test_perturbation_demo(tmp_path):
    from experiments import perturbation_2d as P

    res = P.main(["--quick", "--out", str(tmp_path)])
    for f in ("metrics.json", "perturbation_panels.png", "worst_case_180.png"):
        assert (tmp_path / f).exists(), f
    wc = res["worst_case"]
    assert wc["sp_angle_deg"] == pytest.approx(180.0, abs=1e-6)
    assert wc["wn_angle_deg"] == pytest.approx(180.0, abs=1e-6)
    assert wc["gmp_angle_deg_same_size"] <= wc["gmp_bound_deg"] * (1 + 1e-9)
    for row in res["per_delta"].values():
        assert _finite([v["angle_deg"] for v in row.values()] + [v["location_shift"] for v in row.values()])
        # Fig. 1: the same perturbation moves GmP's boundary least
        assert row["gmp"]["angle_deg"] < min(row[m]["angle_deg"] for m in ("sp", "wn", "bn"))


# ----------------------------------------------------------------------------- 1-D Levy
def test_levy_data_matches_the_function():
    from experiments.levy_1d import Config, levy, make_data

    d = make_data(Config())
    assert d["x"].shape == (50, 1) and d["x_test"].shape == (201, 1)
    assert np.all(np.abs(d["x"]) <= 10)
    # Levy has its global minimum 0 at x = 1 and the noise has std 0.1
    assert levy(np.array([1.0]))[0] == pytest.approx(0.0, abs=1e-12)
    assert 0.05 < np.std(d["y"] - levy(d["x"])) < 0.2


def test_levy_quick(tmp_path):
    from experiments import levy_1d as L

    out = L.main(["--quick", "--out", str(tmp_path)])
    for f in ("metrics.json", "levy_max_dphi.png", "levy_fit_spectrum_lr_cv.png"):
        assert (tmp_path / f).exists(), f
    saved = json.loads((tmp_path / "metrics.json").read_text())
    runs = saved["runs"]["cv"]
    assert set(runs) == set(L.METHODS)
    for s in runs.values():
        assert _finite(s["rmse_per_seed"]) and len(s["rmse_per_seed"]) == out["config"]["seeds"]
        assert _finite([s["max_dphi_max"]])
    # the paper's claim (Fig. 2c): GmP's characteristic points move by < 1 per step
    assert runs["gmp"]["dphi_below_1_every_step_every_seed"]


def test_levy_rejects_bad_method_and_lr(capsys):
    from experiments import levy_1d as L

    with pytest.raises(SystemExit):
        L.main(["--methods", "gmp", "batchnorm", "--steps", "2"])
    assert "unknown parameterization" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--lr"):
        L.lr_for("gmp", "fast")


# ----------------------------------------------------------------------------- 2-D banana
def test_banana_splits(banana_data_dir):
    from gmpjax.data.banana import banana_splits, load_banana

    x, y = load_banana()
    assert x.shape == (5300, 2) and set(np.unique(y)) == {0, 1}
    assert int((y == 0).sum()) == 2924  # class -1 count of the KEEL file
    s = banana_splits()
    assert (len(s.x_train), len(s.x_val), len(s.x_test)) == (640, 160, 200)
    np.testing.assert_allclose(s.x_train.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(s.x_train.std(0), 1.0, atol=1e-12)
    s0 = banana_splits(val_fraction=0.0)
    assert len(s0.x_train) == 800 and np.array_equal(s0.x_val, s0.x_test)
    with pytest.raises(ValueError, match="val_fraction"):
        banana_splits(val_fraction=1.5)


def test_banana_missing_file_says_how_to_fix(tmp_path, monkeypatch):
    from gmpjax.data.banana import load_banana

    monkeypatch.setenv("GMPJAX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GMPJAX_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match="GMPJAX_DATA_DIR") as e:
        load_banana()
    assert "2d_banana.csv" in str(e.value)


def test_banana_quick(tmp_path, banana_data_dir):
    from experiments import banana_2d as B

    out = B.main(["--quick", "--out", str(tmp_path)])
    for f in ("metrics.json", "banana_trajectories.png", "banana_max_dtheta.png", "banana_boundaries.png"):
        assert (tmp_path / f).exists(), f
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["methods"]) == set(B.METHODS)
    for s in saved["methods"].values():
        acc = np.asarray(s["test_acc_per_seed"])
        assert _finite(acc) and np.all((acc >= 0) & (acc <= 1))
        assert 0 <= s["max_dtheta_deg_max"] <= 180 + 1e-9
    assert out["sizes"] == {"train": 640, "val": 160, "test": 200}
    assert math.isfinite(saved["wall_s"])


def test_banana_batches_cover_every_point():
    import jax

    from experiments.banana_2d import batch_indices

    idx = np.asarray(batch_indices(jax.random.key(0), 800, 128))
    assert idx.shape == (7, 128)
    assert set(idx.ravel().tolist()) == set(range(800))
