"""End-to-end runs of the image experiment scripts in tiny ``--quick`` settings, exact resume, and clear errors."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import cli, imagenet32_vgg6, imagenet_resnet18
from gmpjax.data import DataError
from gmpjax.layers import check_parameterization
from gmpjax.layers.registry import learning_rates
from gmpjax.train.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
# A few steps of a narrow VGG-6 on 16x16 digits: exercises the whole path in seconds. The reference run
# loads with 2 grain worker processes, the others in-process (worker processes take seconds to start).
TINY = [
    "--quick",
    "--batch-size",
    "32",
    "--width",
    "0.0625",
    "--image-size",
    "16",
    "--save-every",
    "2",
    "--log-every",
    "2",
    "--max-eval-batches",
    "2",
    "--no-progress",
]
IN_PROCESS = ["--workers", "0"]
RUN = "gmp_imn_bs32"  # the run's folder under --workdir


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("vgg_ref")
    out = imagenet32_vgg6.main(TINY + ["--max-steps", "4", "--workdir", str(work), "--workers", "2"])
    return work, out["runs"][RUN]


def _params(run_dir):
    with Checkpointer(run_dir / "checkpoints") as ckpt:
        return ckpt.restore_params()


def test_quick_vgg6_end_to_end(reference, results_tables):
    work, out = reference
    top1 = results_tables(imagenet32_vgg6, work, ["top1"])["top1"]
    assert "| gmp_imn | 43.14 | 43.62 | 42.70 | 67.36 |" in top1  # the paper's GmP+IMN row beside ours
    assert out["steps"] == 4 and out["config"]["parameterization"] == "gmp_imn"
    assert out["config"]["dataset"] == "digits" and out["config"]["lr"] == 0.1
    assert 0.0 <= out["val_top1"] <= out["val_top5"] <= 1.0
    run = work / RUN
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["steps"] == 4 and summary["num_params"] > 0
    assert json.loads((work / "results.json").read_text())[RUN]["steps"] == 4
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r and "train_top1" in r and "train_top5" in r for r in recs)
    assert any("examples_per_s" in r for r in recs)
    assert any("val_top1" in r and "lr" in r for r in recs)
    assert (run / "curves.png").stat().st_size > 0
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    # the grain data-iterator state is in the same orbax checkpoint: the next batch is (epoch 0, step 4)
    saved = json.loads(next((run / "checkpoints" / "4" / "data").glob("process_0-of-1.json")).read_text())
    assert (saved["epoch"], saved["step"], saved["global_batch_size"]) == (0, 4, 32)


def test_resume_matches_uninterrupted_run(reference, tmp_path):
    ref_work, _ = reference
    imagenet32_vgg6.main(TINY + IN_PROCESS + ["--max-steps", "2", "--workdir", str(tmp_path)])
    out = imagenet32_vgg6.main(TINY + IN_PROCESS + ["--max-steps", "4", "--workdir", str(tmp_path), "--resume"])
    assert out["runs"][RUN]["steps"] == 4
    a, b = _params(ref_work / RUN), _params(tmp_path / RUN)
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def _error(capsys, argv, main=imagenet32_vgg6.main) -> str:
    """The one-line message of a bad run (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_existing_checkpoints_are_not_overwritten(reference, capsys):
    work, _ = reference
    before = sorted(os.listdir(work / RUN / "checkpoints"))
    assert "--resume" in _error(capsys, TINY + IN_PROCESS + ["--max-steps", "4", "--workdir", str(work)])
    err = _error(capsys, TINY + IN_PROCESS + ["--max-steps", "6", "--workdir", str(work), "--resume", "--lr", "0.05"])
    assert "lr=0.1 but this run has lr=0.05" in err
    assert sorted(os.listdir(work / RUN / "checkpoints")) == before


def _parse(script, argv):
    return cli.parse(script, argv)


def test_configs_and_quick_overrides():
    # The ResNet-18 script shares run() with VGG-6 (exercised above); check its configs and quick overrides.
    r18 = imagenet_resnet18
    cfg = _parse(r18, ["--quick", "--epochs", "2"])
    assert (cfg.MODEL, cfg.dataset, cfg.epochs, cfg.input_size, learning_rates(cfg.lr, "bn")) == (
        "resnet18",
        "digits",
        2,
        32,
        (0.1,),
    )
    full = _parse(r18, ["--methods", "wn+mbn"])
    assert (full.dataset, full.input_size, full.batch_size, full.epochs, full.boundaries, full.schedule) == (
        "imagenet2012",
        224,
        256,
        90,
        (30, 60, 80),
        "piecewise",
    )
    assert check_parameterization(full.methods[0]) == "wn_mbn"
    off = _parse(r18, ["--protocol", "official"])
    assert (off.schedule, off.rules.patience, off.rules.restore, off.epochs) == ("plateau", 10, "never", 10000)
    vgg = _parse(imagenet32_vgg6, ["--protocol", "official", "--quick", "--epochs", "3"])
    assert (vgg.schedule, vgg.rules.patience, vgg.rules.restore, vgg.epochs, vgg.width) == (
        "plateau",
        10,
        "if_stopped",
        3,
        0.25,
    )
    assert [learning_rates(vgg.lr, m) for m in ("gmp_imn", "bn")] == [(0.1,), (0.01,)]


def test_missing_dataset_and_bad_options(tmp_path, capsys):
    # a missing dataset is a DataError inside run(); the CLI prints it as one line and exits 2
    missing = _error(capsys, ["--tfds-data-dir", str(tmp_path), "--workdir", str(tmp_path / "w"), "--no-progress"])
    assert "--dataset digits" in missing and len(missing.strip().splitlines()) == 1
    with pytest.raises(DataError, match="--dataset digits"):
        cfg = dataclasses.replace(
            imagenet32_vgg6.get_config(), tfds_data_dir=str(tmp_path), workdir=str(tmp_path / "r")
        )
        imagenet32_vgg6.run(dataclasses.replace(cfg, progress=False))
    for argv, match in [
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--methods", "gmp_bn"], "--methods"),
        (["--schedule", "cosine"], "--schedule"),
        (["--workers", "-1"], "--workers"),
        (["--image-size", "12"], "multiple of 8"),
        (["--resume", "--workdir", str(tmp_path / "nowhere")], "does not exist"),
    ]:
        assert match in _error(capsys, ["--quick", "--workdir", str(tmp_path), *argv])


def test_batch_size_not_divisible_by_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    code = (
        "from experiments.imagenet32_vgg6 import main; "
        f"main(['--quick', '--batch-size', '33', '--workdir', {str(tmp_path)!r}, '--no-progress'])"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--batch-size 33 is not divisible by the 2 devices" in r.stderr
