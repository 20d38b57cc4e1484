"""The illustrative experiments (perturbation demo, 1-D Levy, 2-D banana) in their quick modes, and their flags."""

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
def test_perturbation_demo(tmp_path, results_tables, capsys):
    from experiments import perturbation_2d as P

    res = P.main(["--quick", "--out", str(tmp_path)])  # --out: the alias of --workdir
    assert results_tables(P, tmp_path, ["angles"])["angles"] in capsys.readouterr().out  # printed = README's table
    for f in ("results.json", "perturbation_panels.png", "worst_case_180.png"):
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
def test_levy_quick(tmp_path, results_tables, capsys):
    from experiments import levy_1d as L

    out = L.main(["--quick", "--workdir", str(tmp_path), "--no-progress"])
    for f in ("results.json", "levy_max_dphi.png", "levy_fit_spectrum_lr_cv.png"):
        assert (tmp_path / f).exists(), f
    rmse = results_tables(L, tmp_path, ["rmse"])["rmse"]
    assert rmse in capsys.readouterr().out and "| cv | GMP | 0.1 |" in rmse and "0.496" in rmse  # notebook's RMSE
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = saved["runs"]["cv"]
    assert list(runs) == list(L.get_config().methods)
    for s in runs.values():
        assert _finite(s["rmse_per_seed"]) and len(s["rmse_per_seed"]) == out["config"]["seeds"] == 2
        assert _finite([s["max_dphi_max"]]) and s["steps_run"] == [200, 200]
    # the paper's claim (Fig. 2c): GmP's characteristic points move by < 1 per step
    assert runs["gmp"]["dphi_below_1_every_step_every_seed"]
    assert sorted(os.listdir(tmp_path / "jobs")) == [
        "_config.json",
        "bn_lr0.01.json",
        "gmp_lr0.1.json",
        "sp_lr0.01.json",
        "wn_lr0.01.json",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "gmp", "batchnorm"], "unknown parameterization"),
        (["--lr", "fast"], "--lr"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--init", "glorot"], "--init"),
    ],
)
def test_levy_rejects_bad_values_in_one_line(argv, message, capsys):
    from experiments import levy_1d as L

    with pytest.raises(SystemExit) as e:
        L.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_quick_keeps_explicit_flags_and_protocols_are_configs():
    from experiments import banana_2d as B
    from experiments import cli
    from experiments import levy_1d as L

    def parse(mod, argv):
        return cli.parse(mod, argv)

    cfg = parse(L, ["--quick", "--steps", "7", "--lr", "cv", "0.1"])
    assert (cfg.steps, cfg.lr, cfg.seeds, cfg.rules.patience) == (7, ("cv", "0.1"), 2, 100)
    assert parse(L, []).init == "uniform" and parse(L, ["--protocol", "official"]).init == "official"
    cfg = parse(B, ["--quick", "--seeds", "3", "--epochs", "4"])
    assert (cfg.seeds, cfg.epochs, cfg.grid) == (3, 4, 40)
    official = parse(B, ["--protocol", "official"])
    assert (official.init, official.val_fraction) == ("official", 0.0) and parse(B, []).val_fraction == 0.2


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


def test_banana_quick(tmp_path, banana_data_dir, results_tables, capsys):
    from experiments import banana_2d as B

    out = B.main(["--quick", "--workdir", str(tmp_path), "--no-progress"])
    for f in ("results.json", "banana_trajectories.png", "banana_max_dtheta.png", "banana_boundaries.png"):
        assert (tmp_path / f).exists(), f
    acc = results_tables(B, tmp_path, ["accuracy"])["accuracy"]
    assert acc in capsys.readouterr().out and "| GMP | 0.1 |" in acc and "0.885" in acc  # notebook's accuracy
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["methods"]) == list(B.get_config().methods)
    for s in saved["methods"].values():
        acc = np.asarray(s["test_acc_per_seed"])
        assert _finite(acc) and np.all((acc >= 0) & (acc <= 1))
        assert 0 <= s["max_dtheta_deg_max"] <= 180 + 1e-9
        assert s["epochs_run"] == [10, 10]
    assert out["sizes"] == {"train": 640, "val": 160, "test": 200}
    assert saved["steps_per_epoch"] == 5  # ceil(640 / 128); the last batch wraps around the permutation
    assert math.isfinite(saved["wall_s"])
