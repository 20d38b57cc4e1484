"""End-to-end runs of the image experiment scripts in tiny ``--quick`` settings, exact resume, and clear errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import imagenet32_vgg6, imagenet_resnet18
from experiments.image_train import ImageConfig, final_params, run
from gmpjax.data import DataError

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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("vgg_ref")
    out = imagenet32_vgg6.main(TINY + ["--max-steps", "4", "--workdir", str(work), "--workers", "2"])
    return work, out


def test_quick_vgg6_end_to_end(reference):
    work, out = reference
    assert out["steps"] == 4 and out["config"]["parameterization"] == "gmp_imn"
    assert out["config"]["dataset"] == "digits" and out["config"]["lr"] == 0.1
    assert 0.0 <= out["val_top1"] <= out["val_top5"] <= 1.0
    summary = json.loads((work / "metrics.json").read_text())
    assert summary["steps"] == 4 and summary["num_params"] > 0
    recs = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r and "train_top1" in r and "train_top5" in r for r in recs)
    assert any("images_per_s" in r for r in recs)
    assert any("val_top1" in r and "lr" in r for r in recs)
    assert (work / "curves.png").stat().st_size > 0
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    # the grain data-iterator state is in the same orbax checkpoint: the next batch is (epoch 0, step 4)
    saved = json.loads(next((work / "checkpoints" / "4" / "data").glob("process_0-of-1.json")).read_text())
    assert (saved["epoch"], saved["step"], saved["global_batch_size"]) == (0, 4, 32)


def test_resume_matches_uninterrupted_run(reference, tmp_path):
    ref_work, _ = reference
    imagenet32_vgg6.main(TINY + IN_PROCESS + ["--max-steps", "2", "--workdir", str(tmp_path)])
    out = imagenet32_vgg6.main(TINY + IN_PROCESS + ["--max-steps", "4", "--workdir", str(tmp_path), "--resume"])
    assert out["steps"] == 4
    a, b = final_params(str(ref_work)), final_params(str(tmp_path))
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_existing_checkpoints_are_not_overwritten(reference):
    work, _ = reference
    before = sorted(os.listdir(work / "checkpoints"))
    with pytest.raises(ValueError, match="--resume"):
        imagenet32_vgg6.main(TINY + IN_PROCESS + ["--max-steps", "4", "--workdir", str(work)])
    with pytest.raises(ValueError, match="lr"):
        imagenet32_vgg6.main(
            TINY + IN_PROCESS + ["--max-steps", "6", "--workdir", str(work), "--resume", "--lr", "0.05"]
        )
    assert sorted(os.listdir(work / "checkpoints")) == before


def test_resnet18_cli_quick_config():
    # The ResNet-18 script shares run() with VGG-6 (exercised above); check its CLI wiring and quick overrides.
    import argparse

    from experiments.image_train import add_arguments, config_from_args, validate

    p = argparse.ArgumentParser()
    add_arguments(p, imagenet_resnet18.DEFAULTS)
    cfg = validate(
        config_from_args(
            p.parse_args(["--quick", "--epochs", "2"]), imagenet_resnet18.DEFAULTS, imagenet_resnet18.QUICK
        )
    )
    assert (cfg.model, cfg.dataset, cfg.epochs, cfg.image_size, cfg.lr) == ("resnet18", "digits", 2, 32, 0.1)
    full = validate(config_from_args(p.parse_args(["--parameterization", "wn+mbn"]), imagenet_resnet18.DEFAULTS))
    assert (full.dataset, full.image_size, full.batch_size, full.epochs, full.boundaries, full.parameterization) == (
        "imagenet2012",
        224,
        256,
        90,
        (30, 60, 80),
        "wn_mbn",
    )


def test_missing_dataset_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="--dataset digits"):
        imagenet32_vgg6.main(["--tfds-data-dir", str(tmp_path), "--workdir", str(tmp_path / "w"), "--no-progress"])
    with pytest.raises(ValueError, match="--batch-size"):
        run(ImageConfig(dataset="digits", batch_size=0, workdir=str(tmp_path)))
    with pytest.raises(ValueError, match="parameterization"):
        run(ImageConfig(dataset="digits", parameterization="gmp_bn", workdir=str(tmp_path)))
    with pytest.raises(ValueError, match="--schedule"):
        run(ImageConfig(dataset="digits", schedule="cosine", workdir=str(tmp_path)))
    with pytest.raises(ValueError, match="--workers"):
        run(ImageConfig(dataset="digits", workers=-1, workdir=str(tmp_path)))


def test_batch_size_not_divisible_by_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    code = (
        "from experiments.imagenet32_vgg6 import main; "
        f"main(['--quick', '--batch-size', '33', '--workdir', {str(tmp_path)!r}, '--no-progress'])"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "--batch-size 33 is not divisible by the 2 devices" in r.stderr
