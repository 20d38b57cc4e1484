"""The host trainer (``gmpjax.train.trainer``): one run trains, evaluates, writes its records and checkpoints,
restores the best state, and resumes bitwise after a SIGKILL; bad wiring is a clear error."""

from __future__ import annotations

import itertools
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gmpjax.train.host import HostConfig
from gmpjax.train.rules import Rules
from gmpjax.train.sharding import make_data_mesh
from gmpjax.train.trainer import CHECKPOINTS, THROUGHPUT, HostTrainer, mean_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import childproc  # noqa: E402

SCRIPT = childproc.SCRIPTS / "host_trainer_run.py"
X = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
DATA = (X, X @ np.array([[1.0], [-2.0]], np.float32))


def _mse(model, batch):
    return jnp.mean((model(batch[0]) - batch[1]) ** 2)


def _sums(model, batch):
    return {"mse": jnp.sum((model(batch[0]) - batch[1]) ** 2), "count": jnp.float32(len(batch[0]))}


@pytest.fixture(scope="module")
def trainer():
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    return HostTrainer(lambda k: nnx.Linear(2, 1, rngs=nnx.Rngs(k)), tx, _mse, make_data_mesh(), eval_fn=_sums)


class _Writer:
    def __init__(self):
        self.scalars, self.flushed = [], 0

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))

    def flush(self):
        self.flushed += 1


def test_fit_trains_evaluates_and_writes(trainer, tmp_path):
    writer, seen = _Writer(), []
    cfg = HostConfig(num_steps=20, eval_every=5, log_every=4)
    run = trainer.fit(
        jax.random.key(0), itertools.repeat(DATA), cfg, tmp_path, eval_batches=lambda: itertools.repeat(DATA),
        eval_steps=2, examples_per_step=32, writers=[writer], on_eval=seen.append,
        progress=False,
    )  # fmt: skip
    assert [h["step"] for h in run.history] == [5, 10, 15, 20] and run.result.step == 20
    assert [r["step"] for r in seen] == [5, 10, 15, 20] and all(r["lr"] == pytest.approx(0.1) for r in seen)
    assert run.history[-1]["val_mse"] < run.history[0]["val_mse"] < 10 and run.final == run.history[-1]
    # the evaluation is the mean over eval_steps batches of the per-batch sums: the full-data mse of the last state
    model = nnx.merge(trainer.graphdef, run.result.state.params, run.result.state.rest)
    assert run.final["val_mse"] == pytest.approx(float(_mse(model, DATA)), rel=1e-5)
    assert run.num_params == 3 and run.devices == jax.device_count() and not run.restored_best
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == run.records and [r["step"] for r in lines if "train_loss" in r] == [4, 8, 12, 16, 20]
    rates = [r for r in lines if THROUGHPUT in r]
    assert [r["step"] for r in rates] == [4, 8, 12, 16, 20] and [r["includes_compile"] for r in rates[:2]] == [
        True,
        False,
    ]
    assert len(run.throughput) == 4 and run.throughput_median > 0
    # the clu-style writer got the numbers of every record (not the includes_compile flag), and was flushed once
    numbers = [(r["step"], sorted(k for k, v in r.items() if k != "step" and not isinstance(v, bool))) for r in lines]
    assert [(t, sorted(d)) for t, d in writer.scalars] == numbers
    assert writer.flushed == 1
    assert sorted(int(p.name) for p in (tmp_path / CHECKPOINTS).iterdir() if p.name.isdigit())[-1] == 20
    summary = run.summary()
    assert summary["steps"] == 20 and summary["val_mse"] == run.final["val_mse"] and "lr" not in summary
    png = tmp_path / "figs" / "curves.png"
    assert run.plot(str(png), title="t") == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"\['val_top1'\] are not evaluated; choose from \['val_mse'\]"):
        run.plot(str(png), ["val_top1"])


def test_fit_restores_the_best_state_and_reports_its_evaluation(trainer, tmp_path):
    """A learning rate too large for the data: the loss grows after the first evaluation, the best is restored."""
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1.05)
    bad = HostTrainer(lambda k: nnx.Linear(2, 1, rngs=nnx.Rngs(k)), tx, _mse, trainer.mesh, eval_fn=_sums)
    cfg = HostConfig(num_steps=12, eval_every=2, log_every=0, rules=Rules("val_mse", restore="always"))
    run = bad.fit(jax.random.key(0), itertools.repeat(DATA), cfg, tmp_path, eval_batches=lambda: itertools.repeat(DATA))
    best = min(run.history, key=lambda h: h["val_mse"])
    assert run.restored_best and run.final == best and run.result.best_step == best["step"] < 12


def test_bad_wiring_is_named(trainer, tmp_path):
    cfg = HostConfig(num_steps=2)
    with pytest.raises(ValueError, match="eval_batches and HostTrainer"):
        trainer.fit(jax.random.key(0), itertools.repeat(DATA), cfg, tmp_path)
    with pytest.raises(TypeError, match="write_scalars"):
        trainer.fit(jax.random.key(0), itertools.repeat(DATA), cfg, tmp_path, eval_batches=lambda: [], writers=[1])
    with pytest.raises(ValueError, match="'count'"):
        mean_metrics({"loss": 1.0})
    with pytest.raises(TypeError, match="must be callable"):
        HostTrainer(None, trainer.tx, _mse, trainer.mesh)


def _run(*args: str) -> str:
    proc = childproc.run([sys.executable, str(SCRIPT), *args], num_devices=1, timeout=240)
    return proc.stdout if proc.returncode == 0 else f"rc={proc.returncode}\n{proc.stdout[-3000:]}"


def test_resume_after_sigkill_is_bitwise(tmp_path):
    """Killed after step 13 (before its evaluation), resumed from the newest committed checkpoint: the parameters
    and the metrics log are those of the uninterrupted run."""
    ref = _run("--workdir", str(tmp_path / "ref"), "--out", str(tmp_path / "ref.npz"))
    assert "done step 24" in ref, ref
    killed = childproc.run(
        [sys.executable, str(SCRIPT), "--workdir", str(tmp_path / "run"), "--kill-at", "13"], num_devices=1, timeout=240
    )
    assert killed.returncode == -9, killed.stdout[-3000:]
    out = _run("--workdir", str(tmp_path / "run"), "--resume", "--out", str(tmp_path / "run.npz"))
    resumed = re.search(r"done step 24 resumed_from (\d+)", out)
    assert resumed and 0 < int(resumed.group(1)) <= 12, out  # 12 unless its async save was still in flight
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "run.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    log = lambda d: (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert log(tmp_path / "run") == log(tmp_path / "ref")
