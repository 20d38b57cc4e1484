"""Smoke tests of experiments.triangular_1d and experiments.triangular_head (tiny configs, direct calls)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import triangular_1d as t1d
from experiments import triangular_head as th
from gmpjax.data.paths import DataError


def test_triangular_1d_small_run_writes_tables_json_and_figures(tmp_path, capsys):
    cfg = t1d.Config.quick(
        out=str(tmp_path),
        dense_targets=("x3",),
        methods=("kaiming", "thm31"),
        sparse_targets=("sin",),
        sparse_methods=("kaiming", "thm31"),
        difference=False,
        runs=2,
        pretrain_steps=30,
        finetune_steps=30,
        chunk_steps=30,
        n_dense=100,
    )
    t1d.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "pretraining + Thm 3.1" in out and "7.86e-08" in out and "2.27e-05" in out  # paper numbers side by side
    m = json.loads((tmp_path / "metrics.json").read_text())
    thm = m["dense"]["x3"]["thm31"]
    assert len(thm["train_mse"]) == 2 and all(np.isfinite(thm["train_mse"]))
    assert thm["switch_step"] == 30
    # exactly 2^d regions throughout pretraining (and right after the switch)
    for s in thm["snapshots"]:
        if s["phase"] in ("init", "pretrain", "switch"):
            assert s["regions"] == [32, 32], s
    # baselines trained the same total number of steps, without a peak phase
    assert m["dense"]["x3"]["kaiming"]["switch_step"] == 0
    assert len(m["dense"]["x3"]["kaiming"]["loss_curve_median"]) == 60
    assert len(m["sparse"]["sin"]["thm31"]["test_mse"]) == 2
    for name in ("dense_fits.png", "dense_curves_regions.png", "sparse_fits.png", "tables.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_triangular_1d_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        t1d.main(["--quick", "--methods", "kaiming,foo", "--out", str(tmp_path), "--no-progress"])
    with pytest.raises(ValueError, match="unknown target 'cos'"):
        t1d.run(t1d.Config.quick(out=str(tmp_path), dense_targets=("cos",)))


def test_difference_model_to_raw_is_exact():
    net = t1d.TriangleDifference(3, rngs=nnx.Rngs(0))
    raw = net.to_raw()
    x = jnp.linspace(0, 1, 201)[:, None]
    np.testing.assert_allclose(raw(x), net(x), atol=1e-6)
    assert raw.layer_arrays()[1][0].shape == (8, 8)


def test_triangular_head_digits_small_run(tmp_path, capsys):
    cfg = th.Config.quick(out=str(tmp_path), epochs=2, seeds=1, hidden=16, depth=2)
    out = th.run(cfg, progress=False)
    assert set(out["results"]) == {"relu", "triangle"}
    for r in out["results"].values():
        assert r["final_acc_mean"] > 0.2  # 10 classes: chance is 0.1
    assert out["results"]["triangle"]["macs_per_example"] > out["results"]["relu"]["macs_per_example"]
    assert 0.004 < out["vgg16_head_mac_overhead"] < 0.006  # ~0.5 % as reported for VGG-16
    assert (tmp_path / "accuracy_curves.png").stat().st_size > 0
    assert "triangle" in capsys.readouterr().out


def test_triangular_head_cifar10_without_data_gives_clear_error(tmp_path):
    cfg = th.Config.quick(out=str(tmp_path), dataset="cifar10", tfds_data_dir=str(tmp_path / "none"))
    with pytest.raises(DataError, match="tfds build cifar10"):
        th.load_data(cfg)
    with pytest.raises(ValueError, match="dataset"):
        th.load_data(th.Config(dataset="mnist"))
