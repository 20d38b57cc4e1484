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
    assert float(p.scale) == 1.0 and int(p.plateau_count) == 2
    p = plateau_update(p, jnp.asarray(2.1), patience=3, factor=0.5)  # third wait -> reduce
    assert float(p.scale) == 0.5 and int(p.plateau_count) == 0
    p = plateau_update(p, jnp.asarray(1.0), patience=3, factor=0.5)
    assert float(p.best_value) == 1.0 and int(p.plateau_count) == 0
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

_ADAM = "optax.adam's bias correction mixes a Python float with the int32 step count"


def _yacht_data(monitor, splits=2):
    x, y = uci.load_uci("yacht")
    return uci.stacked_splits(
        x, y, splits=splits, seed=0, monitor=monitor, val_fraction=0.2, standardize_target=monitor == "val"
    )


def _loop(max_epochs=25, batch_size=None, patience=8, plateau=4, restore="always"):
    from gmpjax.train.loop import LoopConfig
    from gmpjax.train.rules import PlateauConfig, Rules

    rules = Rules(monitor="mse", patience=patience, restore=restore, plateau=PlateauConfig(plateau))
    return LoopConfig(max_epochs, "full" if batch_size is None else "even", batch_size, rules=rules)


@needs_data
@pytest.mark.standard_dtype_promotion(_ADAM)
# BN is left out on purpose: the bias before a batch norm has an exactly-zero gradient in exact arithmetic,
# so its float gradient is rounding noise that Adam's first steps turn into +-lr moves; vmapped and single
# runs then differ by float reassociation alone (measured: 0.3% after one step).
# chunk 3 of R = 4 replicas: two compiled sweeps, the second padded with a copy of the last replica.
@pytest.mark.parametrize("method,monitor,batch_size,chunk", [("gmp", "val", None, None), ("wn", "test", 64, 3)])
def test_replica_trainer_equals_training_one_split_alone(shared_data, method, monitor, batch_size, chunk):
    """``train_replicas`` over splits x lrs (``replica_grid``, ``data_index``) == ``loop.fit`` of one replica."""
    import optax
    from flax import nnx

    from gmpjax.models import MLP
    from gmpjax.train.engine import init_replicas, make_eval_step, make_train_step
    from gmpjax.train.loop import fit
    from gmpjax.train.losses import mae, mse, on_batch
    from gmpjax.train.replicas import replica_grid, train_replicas

    data = _yacht_data(monitor)
    loss = on_batch(mse if monitor == "val" else mae, squeeze=True)
    metrics = on_batch({"mse": mse}, squeeze=True)
    loop = _loop(batch_size=batch_size, restore="always" if monitor == "val" else "if_stopped")
    adam = lambda lr: optax.inject_hyperparams(optax.adam)(learning_rate=lr, eps=1e-7)  # noqa: E731
    make = lambda k: MLP(data["x_fit"].shape[2], (100,), 1, parameterization=method, rngs=nnx.Rngs(k))  # noqa: E731
    split_of, lr_of = replica_grid(2, (0.01, 0.1))
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(5), s))(jnp.asarray(split_of))
    split = {k: (jnp.asarray(data[f"x_{k}"]), jnp.asarray(data[f"y_{k}"])) for k in ("fit", "val")}
    swept = train_replicas(
        make, adam, loss, {"train": split["fit"], "val": split["val"]}, loop, keys=keys, lrs=lr_of, metrics=metrics,
        shuffle_keys=jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), data_axis=0, data_index=split_of, chunk=chunk,
    ).result  # fmt: skip
    assert swept.epochs.shape == (4,) and np.all(np.isfinite(np.asarray(swept.best_value)))

    # Replica 3 = split 1, lr 0.1, trained alone with loop.fit: same init (fold_in(key(5), 1)), same shuffling key.
    graphdef, states = init_replicas(make, keys[3:], adam(0.1))
    one = {k: jnp.asarray(v[1]) for k, v in data.items()}
    alone_split = {"train": (one["x_fit"], one["y_fit"]), "val": (one["x_val"], one["y_val"])}
    step, ev = make_train_step(graphdef, adam(0.1), loss), make_eval_step(graphdef, metrics)
    run_one = lambda st: fit(step, ev, st, alone_split, loop, key=jax.random.fold_in(keys[3], 1), lr=0.1)  # noqa: E731
    alone = jax.jit(run_one)(jax.tree.map(lambda a: a[0], states))
    assert int(alone.epochs) == int(swept.epochs[3])
    np.testing.assert_allclose(float(alone.best_value), float(swept.best_value[3]), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(alone.state.params), jax.tree.leaves(swept.state.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b[3]), rtol=1e-4, atol=1e-6)


def _parse(argv):
    from experiments import cli
    from experiments import uci as exp

    return cli.parse(exp, argv)


def test_protocols_resolve_to_paper_and_released_settings():
    paper = _parse([])
    assert (paper.max_epochs, paper.large_max_epochs, paper.init, paper.monitor, paper.rules.restore) == (
        1000, 300, "uniform", "val", "always"
    )  # fmt: skip
    assert paper.lr == ("0.001", "0.003", "0.01", "0.03", "0.1", "0.3") and paper.seeds == 10
    off = _parse(["--protocol", "official"])
    assert (off.max_epochs, off.large_max_epochs, off.init, off.batch_size) == (5000, 5000, "official", 1024)
    assert off.split == "released" and _parse([]).split == "gmpjax"
    assert (off.loss, off.standardize_target, off.monitor, off.rules.restore, off.rules.plateau.min_delta) == (
        "mae", False, "test", "if_stopped", 1e-4
    )  # fmt: skip
    assert off.lr == ("cv",)
    # --quick shortens the run but keeps every flag given; the official protocol keeps its fixed lrs.
    q = _parse(["--protocol", "official", "--quick", "--max-epochs", "7", "--init", "uniform"])
    assert (q.max_epochs, q.init, q.seeds, q.datasets, q.lr) == (7, "uniform", 2, ("boston", "yacht"), ("cv",))
    assert _parse(["--quick"]).lr == ("0.01", "0.1")
    q = _parse(["--quick", "--rules.patience", "7", "--rules.plateau.factor", "0.5"])
    assert (q.rules.patience, q.rules.plateau.factor, q.rules.plateau.patience) == (7, 0.5, 10)


def test_config_rejects_bad_values(capsys):
    from experiments import uci as exp

    with pytest.raises(ValueError, match="unknown UCI dataset"):
        exp.Config(datasets=("bostn",))
    with pytest.raises(ValueError, match="--methods"):
        exp.Config(methods=("foo",))
    with pytest.raises(ValueError, match="--seeds"):
        exp.Config(seeds=0)
    for argv, msg in [(["--datasets", "bostn"], "unknown UCI dataset"), (["--max-epochs", "0"], "--max-epochs")]:
        with pytest.raises(SystemExit) as e:
            exp.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


@needs_data
@pytest.mark.standard_dtype_promotion(_ADAM)
def test_official_protocol_warns_and_uses_fixed_lr(shared_data, tmp_path):
    import dataclasses

    from experiments import uci as exp

    cfg = dataclasses.replace(
        exp.get_official_config(),
        datasets=("yacht",),
        methods=("gmp",),
        seeds=2,
        max_epochs=5,
        workdir=str(tmp_path),
        progress=False,
    )
    with pytest.warns(UserWarning, match="TEST split"):
        summary = exp.run(cfg)
    r = summary["results"]["yacht"]["gmp"]
    assert r["selected_lr"] == [0.1, 0.1] and np.all(np.isfinite(r["test_rmse"])) and r["max_epochs"] == 5
    assert (tmp_path / "jobs" / "yacht_gmp.json").exists()
    # --resume reuses the finished job instead of training again.
    with pytest.warns(UserWarning, match="TEST split"):
        again = exp.run(dataclasses.replace(cfg, resume=True))
    assert again["results"]["yacht"]["gmp"]["test_rmse"] == pytest.approx(list(r["test_rmse"]))
    assert again["results"]["yacht"]["gmp"]["wall_s"] == pytest.approx(r["wall_s"])


@needs_data
def test_quick_experiment_cli_runs(tmp_path):
    env = {**os.environ, "GMPJAX_DATA_DIR": str(SHARED), "GMPJAX_NO_DOWNLOAD": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.uci", "--quick", "--no-progress", "--workdir", str(tmp_path)],
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
    assert (tmp_path / "uci_rmse.png").stat().st_size > 0 and (tmp_path / "tables.md").exists()
    from experiments import uci as exp

    tables = exp.tables(res)
    assert list(tables) == ["rmse", "summary"] and all(t in proc.stdout for t in tables.values())
    assert "paper 3.057" in tables["rmse"] and "| boston |" in tables["summary"] and "provenance" in res


@pytest.mark.parametrize("n", [308, 506, 768, 9568])
def test_released_split_rule_is_sklearns_train_test_split(n):
    from sklearn.model_selection import train_test_split

    for seed in range(5):
        tr, te = train_test_split(np.arange(n), test_size=0.2, random_state=seed)
        a, b = uci.split_indices(n, seed, 0.2, rule="released")
        np.testing.assert_array_equal(a, np.sort(tr))
        np.testing.assert_array_equal(b, np.sort(te))
    ours, released = uci.split_indices(n, 0), uci.split_indices(n, 0, rule="released")
    assert not np.array_equal(ours[1], released[1])  # two different generators
    with pytest.raises(ValueError, match="rule"):
        uci.split_indices(n, 0, rule="sklearn")
