"""Smoke tests of experiments.triangular_1d and experiments.triangular_head (tiny configs, through their CLIs)."""

import json

import pytest

from experiments import triangular_1d as t1d
from experiments import triangular_head as th

TINY_1D = [
    "--quick", "--dense-targets", "x3", "--methods", "kaiming", "thm31", "--sparse-targets", "sin",
    "--no-difference", "--seeds", "2", "--pretrain-steps", "30", "--finetune-steps", "30", "--chunk-steps", "30",
    "--n-dense", "100", "--no-progress",
]  # fmt: skip


def test_triangular_1d_small_run_writes_tables_json_and_figures_and_resumes(tmp_path, capsys, results_tables):
    t1d.main([*TINY_1D, "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "pretraining + Thm 3.1" in out and "7.86e-08" in out and "2.27e-05" in out  # paper numbers side by side
    assert all(t in out for t in results_tables(t1d, tmp_path, ["dense", "sparse"]).values())
    m = json.loads((tmp_path / "results.json").read_text())
    assert m["config"]["seeds"] == 2 and m["config"]["quick"] is True  # explicit flags win over --quick
    thm = m["dense"]["x3"]["thm31"]
    assert len(thm["train_mse"]) == 2 and thm["switch_step"] == 30
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
    # --resume reloads every job from workdir/jobs (nothing retrained) and reports the same numbers
    t1d.main([*TINY_1D, "--workdir", str(tmp_path), "--resume"])
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["dense"] == m["dense"] and again["sparse"] == m["sparse"]
    # --resume with other settings would mix two runs: refused before anything trains
    with pytest.raises(SystemExit) as e:
        t1d.main([*TINY_1D, "--workdir", str(tmp_path), "--resume", "--seed", "1"])
    assert e.value.code == 2 and "other settings (seed)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--methods", "kaiming", "foo"], "--methods: unknown name 'foo'"),
        (["--dense-targets", "cos"], "--dense-targets: unknown name 'cos'"),
        (["--lr", "cv"], "--lr: 'cv'"),
        (["--lr", "-1"], "--lr values must be"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--resume", "--workdir", "/nonexistent/dir"], "--resume: workdir"),
    ],
)
def test_triangular_1d_bad_flags_give_one_line_and_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        t1d.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_triangular_1d_none_selects_no_target():
    cfg = t1d.Config(dense_targets=("x3",), sparse_targets=("none",), difference=False)
    assert cfg.sparse_targets == () and cfg.dense_targets == ("x3",)


def test_triangular_head_digits_small_run(tmp_path, capsys, results_tables):
    argv = ["--quick", "--epochs", "2", "--seeds", "1", "--hidden", "16", "--depth", "2", "--no-progress"]
    out = th.main([*argv, "--workdir", str(tmp_path)])
    assert "paper: ~0.5 %" in results_tables(th, tmp_path, ["accuracy"])["accuracy"]
    assert set(out["results"]) == {"relu", "triangle"}
    for r in out["results"].values():
        assert r["final_acc_mean"] > 0.2  # 10 classes: chance is 0.1
        assert len(r["test_acc"]) == 1 and len(r["test_acc"][0]) == 2 and len(r["train_loss"][0]) == 2
    assert out["results"]["triangle"]["macs_per_example"] > out["results"]["relu"]["macs_per_example"]
    assert 0.004 < out["vgg16_head_mac_overhead"] < 0.006  # ~0.5 % as reported for VGG-16
    assert (tmp_path / "accuracy_curves.png").stat().st_size > 0
    assert "triangle" in capsys.readouterr().out


def test_triangular_head_cifar10_without_data_gives_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        th.main(["--dataset", "cifar10", "--tfds-data-dir", str(tmp_path / "none"), "--workdir", str(tmp_path)])
    assert e.value.code == 2 and "tfds build cifar10" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--dataset"):
        th.Config(dataset="mnist")
    with pytest.raises(SystemExit):
        th.main(["--methods", "relu", "gelu"])
