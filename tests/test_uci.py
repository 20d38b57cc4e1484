"""UCI benchmark: data loading, splits, standardisation, the vmapped trainer and the quick experiment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmpjax.data import DataError, uci
from gmpjax.train.plateau import plateau_init, plateau_update, set_learning_rate

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GMPJAX_DATA_DIR", REPO.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (SHARED / "uci" / "yacht" / "data.txt").exists(),
    reason="UCI data not found; set GMPJAX_DATA_DIR (e.g. ../shared/data)",
)


@pytest.fixture
def shared_data(monkeypatch):
    monkeypatch.setenv("GMPJAX_DATA_DIR", str(SHARED))
    monkeypatch.setenv("GMPJAX_NO_DOWNLOAD", "1")
    return SHARED


# ----------------------------------------------------------------------------- splits / standardisation


@pytest.mark.parametrize("n", [10, 308, 1030])
def test_split_disjoint_covering_and_80_20(n):
    train, test = uci.split_indices(n, seed=3)
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    assert len(test) == int(np.ceil(0.2 * n))


def test_split_reproducible_from_seed_and_differs_across_seeds():
    a, b = uci.split_indices(506, seed=7), uci.split_indices(506, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(uci.split_indices(506, seed=8)[1], a[1])


def test_train_val_test_disjoint_and_test_part_matches_plain_split():
    fit, val, test = uci.train_val_test_indices(506, seed=2, val_fraction=0.25)
    parts = np.concatenate([fit, val, test])
    assert len(np.unique(parts)) == 506 == len(parts)
    np.testing.assert_array_equal(test, uci.split_indices(506, seed=2)[1])
    assert abs(len(val) - 0.25 * (len(fit) + len(val))) <= 1


@pytest.mark.parametrize(
    "bad", [dict(n=1, seed=0), dict(n=10, seed=0, test_fraction=1.5), dict(n=10, seed=0, test_fraction=0.0)]
)
def test_split_bad_arguments(bad):
    with pytest.raises(ValueError, match="n must be|test_fraction"):
        uci.split_indices(**bad)


def test_standardisation_uses_train_rows_only():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (40, 3))
    y = rng.normal(-1.0, 5.0, 40)
    x[:, 2] = 7.0  # constant column, as naval's T1 / P1
    train, test = uci.split_indices(40, seed=0)
    sp = uci.make_split(x, y, train, test)
    # Statistics are those of the training rows, computed independently here.
    np.testing.assert_allclose(sp.x_mean, x[train].mean(0))
    np.testing.assert_allclose(sp.x_std[:2], x[train, :2].std(0))
    assert sp.x_std[2] == 1.0 and np.all(sp.x_train[:, 2] == 0.0) and np.all(np.isfinite(sp.x_test))
    np.testing.assert_allclose(sp.y_mean, y[train].mean())
    np.testing.assert_allclose(sp.x_train[:, :2].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(sp.y_train.std(), 1.0)
    # Changing the test rows changes nothing about the training part or the statistics.
    x2, y2 = x.copy(), y.copy()
    x2[test] += 1e3
    y2[test] *= -50.0
    sp2 = uci.make_split(x2, y2, train, test)
    np.testing.assert_array_equal(sp2.x_train, sp.x_train)
    np.testing.assert_array_equal(sp2.y_train, sp.y_train)
    assert sp2.y_std == sp.y_std
    # Test rows are mapped with the training statistics.
    np.testing.assert_allclose(sp.x_test[:, :2], (x[test, :2] - x[train, :2].mean(0)) / x[train, :2].std(0))


def test_validation_rows_do_not_influence_statistics():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 2)), rng.normal(size=50)
    fit, val, test = uci.train_val_test_indices(50, seed=1)
    sp = uci.make_split(x, y, fit, test, val_idx=val)
    np.testing.assert_allclose(sp.x_mean, x[fit].mean(0))
    np.testing.assert_allclose(sp.x_val, (x[val] - x[fit].mean(0)) / x[fit].std(0))
    with pytest.raises(ValueError, match="overlap"):
        uci.make_split(x, y, fit, test, val_idx=fit[:3])


def test_make_split_no_target_scaling_and_bad_shapes():
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10.0)
    sp = uci.make_split(x, y, np.arange(8), np.arange(8, 10), standardize_target=False)
    np.testing.assert_array_equal(sp.y_test, y[8:])
    with pytest.raises(ValueError, match="y \\(N,\\)"):
        uci.make_split(x, y[:5], np.arange(4), np.arange(4, 5))


# ----------------------------------------------------------------------------- loading


@needs_data
@pytest.mark.parametrize("name,shape", [("yacht", (308, 6)), ("boston", (506, 13)), ("energy", (768, 8))])
def test_load_shapes(shared_data, name, shape):
    x, y = uci.load_uci(name)
    assert x.shape == shape and y.shape == (shape[0],)
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))


@needs_data
def test_naval_constant_columns_are_finite_after_standardisation(shared_data):
    x, y = uci.load_uci("naval")
    assert (x.std(0) == 0).sum() == 2  # T1 and P1 (SOURCES.md)
    train, test = uci.split_indices(len(y), seed=0)
    sp = uci.make_split(x, y, train, test)
    assert np.all(np.isfinite(sp.x_train)) and np.all(np.isfinite(sp.x_test))


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown UCI dataset 'bostn'.*boston"):
        uci.load_uci("bostn")


def test_missing_dataset_gives_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GMPJAX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GMPJAX_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match="missing data file .*uci/yacht/data.txt.*GMPJAX_DATA_DIR"):
        uci.load_uci("yacht")


@needs_data
def test_corrupt_file_gives_data_error(tmp_path, monkeypatch):
    dest = tmp_path / "uci" / "yacht"
    shutil.copytree(SHARED / "uci" / "yacht", dest)
    for f in dest.iterdir():
        f.chmod(0o644)
    raw = (dest / "data.txt").read_bytes()
    (dest / "data.txt").write_bytes(raw.replace(b"0", b"1", 1))  # one changed digit
    monkeypatch.setenv("GMPJAX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GMPJAX_NO_DOWNLOAD", "1")
    with pytest.raises(DataError, match="corrupt.*sha256"):
        uci.load_uci("yacht")


# ----------------------------------------------------------------------------- plateau helper


def test_plateau_reduces_after_patience_and_resets_on_improvement():
    p = plateau_init()
    for v in [3.0, 2.0, 2.5, 2.5]:  # improvement, improvement, 2 waits
        p = plateau_update(p, jnp.asarray(v), patience=3, factor=0.5)
    assert float(p.scale) == 1.0 and int(p.wait) == 2
    p = plateau_update(p, jnp.asarray(2.1), patience=3, factor=0.5)  # third wait -> reduce
    assert float(p.scale) == 0.5 and int(p.wait) == 0
    p = plateau_update(p, jnp.asarray(1.0), patience=3, factor=0.5)
    assert float(p.best) == 1.0 and int(p.wait) == 0
    # min_delta: a tiny improvement does not count.
    q = plateau_update(plateau_update(plateau_init(), 1.0, patience=1, min_delta=0.1), 0.95, patience=1, min_delta=0.1)
    assert float(q.scale) == pytest.approx(0.1)


def test_plateau_bad_arguments_and_set_learning_rate():
    with pytest.raises(ValueError, match="patience"):
        plateau_update(plateau_init(), 1.0, patience=0)
    with pytest.raises(ValueError, match="factor"):
        plateau_update(plateau_init(), 1.0, patience=1, factor=1.5)
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    st = set_learning_rate(tx.init({"w": jnp.ones(2)}), 0.03)
    assert float(st.hyperparams["learning_rate"]) == pytest.approx(0.03)
    with pytest.raises(TypeError, match="inject_hyperparams"):
        set_learning_rate(optax.adam(0.1).init({"w": jnp.ones(2)}), 0.03)


# ----------------------------------------------------------------------------- trainer


def _yacht_data(protocol, splits=2):
    from experiments import uci as exp

    x, y = uci.load_uci("yacht")
    return exp.build_split_arrays(
        x, y, splits=splits, seed=0, protocol=protocol, val_fraction=0.2, standardize_target=protocol == "paper"
    )


@needs_data
# BN is left out on purpose: the bias before a batch norm has an exactly-zero gradient in exact arithmetic,
# so its float gradient is rounding noise that Adam's first steps turn into +-lr moves; vmapped and single
# runs then differ by float reassociation alone (measured: 0.3% after one step).
@pytest.mark.parametrize("method,protocol,batch_size", [("gmp", "paper", None), ("wn", "official", 64)])
def test_vmapped_sweep_equals_training_one_split_alone(shared_data, method, protocol, batch_size):
    from experiments import uci as exp

    data = _yacht_data(protocol)
    lrs = (0.01, 0.1)
    spec = exp.TrainerSpec(
        loss="mse" if protocol == "paper" else "mae",
        num_fit=data["x_fit"].shape[1],
        batch_size=batch_size,
        max_epochs=25,
        es_patience=8,
        plateau_patience=4,
        plateau_factor=0.1,
        plateau_min_delta=0.0,
    )
    swept = exp.run_sweep(method, data, lrs, spec, seed=5)
    assert swept["test_rmse"].shape == (2, 2)

    # Split 1, lr 0.1, trained alone: same init (fold_in(key(5), 1)), same shuffling key.
    key = jax.random.fold_in(jax.random.key(5), 1)
    graphdef, states = exp.init_states(method, "uniform", data["x_fit"].shape[2], 100, key[None])
    state = jax.tree.map(lambda a: a[0], states)
    one = {k: jnp.asarray(v[1]) for k, v in data.items()}
    alone = jax.jit(
        lambda st, d: exp.train_replica(
            graphdef, exp.make_tx(), spec, st, jnp.float32(0.1), jax.random.fold_in(key, 1), d
        )
    )(state, one)
    assert int(alone["epochs"]) == int(swept["epochs"][1, 1])
    for k in ("test_rmse", "val_mse"):
        np.testing.assert_allclose(float(alone[k]), swept[k][1, 1], rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(swept["test_rmse"]))


def test_select_by_validation_and_mean_se():
    from experiments import uci as exp

    val = np.array([[3.0, 1.0, np.nan], [np.inf, 2.0, 0.5]])
    np.testing.assert_array_equal(exp.select_by_validation(val), [1, 2])
    m, se = exp.mean_se(np.array([1.0, 3.0]))
    assert m == 2.0 and se == pytest.approx(np.std([1.0, 3.0], ddof=1) / np.sqrt(2))


def test_config_rejects_bad_names():
    from experiments import uci as exp

    with pytest.raises(ValueError, match="unknown UCI dataset"):
        exp.resolve_config(exp.UCIConfig(datasets=("bostn",)))
    with pytest.raises(ValueError, match="protocol"):
        exp.resolve_config(exp.UCIConfig(protocol="keras"))
    with pytest.raises(ValueError):
        exp.resolve_config(exp.UCIConfig(methods=("foo",)))
    with pytest.raises(ValueError, match="splits"):
        exp.resolve_config(exp.UCIConfig(splits=0))


@needs_data
def test_official_protocol_warns_and_uses_fixed_lr(shared_data, tmp_path):
    from experiments import uci as exp

    cfg = exp.UCIConfig(
        protocol="official",
        datasets=("yacht",),
        methods=("gmp",),
        splits=2,
        max_epochs=5,
        out=str(tmp_path),
        progress=False,
    )
    with pytest.warns(UserWarning, match="TEST split"):
        summary = exp.run(cfg)
    r = summary["results"]["yacht"]["gmp"]
    assert r["selected_lr"] == [0.1, 0.1] and np.all(np.isfinite(r["test_rmse"]))


@needs_data
def test_quick_experiment_cli_runs(tmp_path):
    env = {**os.environ, "GMPJAX_DATA_DIR": str(SHARED), "GMPJAX_NO_DOWNLOAD": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.uci", "--quick", "--no-progress", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "paper 3.057" in proc.stdout  # the paper's GmP Boston figure is printed beside ours
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["results"]) == {"boston", "yacht"}
    for by_method in res["results"].values():
        assert set(by_method) == {"sp", "wn", "bn", "gmp"}
        for r in by_method.values():
            assert len(r["test_rmse"]) == 2 and np.all(np.isfinite(r["test_rmse"]))
            assert all(lr in (0.01, 0.1) for lr in r["selected_lr"])
    assert (tmp_path / "uci_rmse.png").stat().st_size > 0 and (tmp_path / "table.md").exists()
