"""The transformer LM experiment: embedded corpus, causal model, CLI errors, tensor-parallel --quick run + resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gmpjax.data import text
from gmpjax.data.paths import DataError
from gmpjax.models.transformer import MLPBlock, TransformerLM
from gmpjax.records import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import childproc  # noqa: E402

sys.path.insert(0, str(childproc.REPO))
from experiments import cli  # noqa: E402
from experiments import transformer_lm as lm  # noqa: E402


def test_corpus_is_fixed_disjoint_and_reports_missing_files(tmp_path):
    corpus = text.load_stdlib_corpus()
    assert not set(text.TRAIN_FILES) & set(text.VALID_FILES)
    assert corpus.train.size > 500_000 and corpus.valid.size > 50_000
    assert corpus.info["train_files"] == list(text.TRAIN_FILES)
    assert "def bisect" in text.decode(corpus.valid) or "bisect" in text.decode(corpus.valid)
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(DataError, match="'b.py'"):
        text.load_stdlib_corpus(tmp_path, train_files=("a.py",), valid_files=("b.py",))
    with pytest.raises(ValueError, match="overlap"):
        text.load_stdlib_corpus(tmp_path, train_files=("a.py",), valid_files=("a.py",))


def test_windows_are_deterministic_and_cover_the_text():
    t = np.arange(1000, dtype=np.int64).astype(np.uint8)
    a, b = text.sample_windows(t, 4, 16, seed=1, step=7), text.sample_windows(t, 4, 16, seed=1, step=7)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 17) and not np.array_equal(a, text.sample_windows(t, 4, 16, seed=1, step=8))
    w = text.eval_windows(np.arange(101, dtype=np.uint8), 10)
    assert w.shape == (10, 11)
    np.testing.assert_array_equal(w[:, 1:].ravel(), np.arange(1, 101))  # every byte after the first, once
    np.testing.assert_array_equal(next(text.window_batches(t, 4, 16, seed=1, start=7)), a)  # resumable stream
    assert text.eval_windows(np.arange(101, dtype=np.uint8), 10, 9, multiple_of=4).shape == (8, 11)
    with pytest.raises(ValueError, match="multiples of 4"):
        text.eval_windows(np.arange(30, dtype=np.uint8), 10, multiple_of=4)


def test_model_is_causal_and_mlp_computes_in_bf16():
    tok = jax.random.randint(jax.random.key(0), (2, 12), 0, 256)
    changed = tok.at[:, 8].set((tok[:, 8] + 1) % 256)

    @jax.jit  # one compiled program: build the model, run both sequences
    def both(tok, changed):
        model = TransformerLM(
            256, 12, parameterization="gmp_imn", d_model=16, num_heads=2, num_layers=1, rngs=nnx.Rngs(0)
        )
        model.eval()  # IMN uses its running mean: no mixing over the batch
        return model(tok), model(changed)

    a, b = both(tok, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :8]), np.asarray(b[:, :8]))  # the past ignores the future
    assert not np.allclose(np.asarray(a[:, 8:]), np.asarray(b[:, 8:]))
    mlp = nnx.eval_shape(lambda: MLPBlock(8, 16, "gmp", dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, x: m(x), mlp, jax.ShapeDtypeStruct((3, 8), jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and mlp.up.theta.dtype == jnp.float32  # bf16 compute, f32 parameters
    with pytest.raises(ValueError, match="not available for the transformer"):
        MLPBlock(8, 16, "bn", rngs=nnx.Rngs(0))


def _parse(argv: list[str]) -> lm.Config:
    return cli.parse(lm, argv)


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--methods", "sp", "foo"], "--methods: unknown name 'foo'"),
        (["--methods", "bn"], "--methods: unknown name 'bn'"),
        (["--lr", "-1"], "--lr values must be"),
        (["--lr", "cv"], "--lr takes one number"),
        (["--lr", "1e-3", "2e-3"], "--lr takes one number"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--mesh", "2by4"], "--mesh"),
        (["--d-model", "30", "--heads", "4"], "divisible"),
        (["--quick", "--warmup", "40"], "--warmup must be in [0, --steps)"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, msg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _parse([*argv, "--workdir", str(tmp_path / "w")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err


def test_quick_keeps_given_flags_and_resume_checks_the_workdir(tmp_path, capsys):
    cfg = _parse(["--quick", "--steps", "7", "--methods", "WN", "gmp+imn", "--lr", "0.01"])
    assert (cfg.steps, cfg.methods, cfg.d_model, cfg.peak_lr, cfg.warmup_steps) == (7, ("wn", "gmp_imn"), 32, 0.01, 1)
    full = _parse([])
    assert (full.steps, full.seeds, full.peak_lr, full.warmup_steps) == (300, 3, 3e-3, 15)
    assert full.methods == ("sp", "gmp", "gmp_imn")
    with pytest.raises(SystemExit) as e:
        _parse(["--resume", "--workdir", str(tmp_path / "missing")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    work = tmp_path / "w"
    (work / "runs").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:  # a run is there: starting over it needs --resume
        lm.main(["--quick", "--workdir", str(work)])
    assert e.value.code == 2 and "pass --resume" in capsys.readouterr().err
    write_json(work / "jobs" / "_config.json", {"lr": ["0.5"]})
    with pytest.raises(SystemExit) as e:  # resuming with other settings is refused
        lm.main(["--quick", "--resume", "--workdir", str(work), "--no-progress"])
    assert e.value.code == 2 and "other settings" in capsys.readouterr().err


def _run_child(args: list[str]) -> subprocess.CompletedProcess:
    """8 host devices; XLA:CPU optimisation level 0 halves the compile time (both runs use the same flags)."""
    env = childproc.child_env(8)
    env["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
    return subprocess.run(
        args, env=env, cwd=childproc.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300
    )


def test_quick_tensor_parallel_run_and_resume(tmp_path):
    """--quick on a 2x4 mesh of 8 host devices; deleting the last checkpoint and --resume reproduces the result."""
    work = tmp_path / "lm"
    args = [
        sys.executable,
        "-m",
        "experiments.transformer_lm",
        "--quick",
        "--mesh",
        "2x4",
        "--methods",
        "gmp_imn",
        "--seeds",
        "2",
        "--steps",
        "20",
        "--eval-every",
        "10",
        "--save-every",
        "10",
        "--workdir",
        str(work),
        "--no-progress",
    ]
    proc = _run_child(args)
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = json.loads((work / "results.json").read_text())
    assert "| gmp_imn |" in lm.tables(summary)["bpc"] and "provenance" in summary
    assert (work / "loss_curves.png").stat().st_size > 1000
    assert summary["mesh"] == {"data": 2, "model": 4}
    row = summary["table"]["gmp_imn"]
    assert row["n"] == 2 and 1.0 < row["mean"] < 8.0 and row["se"] >= 0
    first = summary["runs"]["gmp_imn"][0]
    assert first["theta_sharding"] == ["P('model', None)"]  # the MLP's theta stayed split over 'model'
    assert [s for s, _ in first["val_curve"]] == [10, 20]

    # simulate a crash after step 10 of seed 1: drop its result and its step-20 checkpoint, then resume
    (work / "jobs" / "gmp_imn_seed1.json").unlink()
    shutil.rmtree(work / "runs" / "gmp_imn_seed1" / "checkpoints" / "20")
    before = summary["runs"]["gmp_imn"][1]["val_bpc"]
    proc = _run_child([*args, "--resume"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    again = json.loads((work / "jobs" / "gmp_imn_seed1.json").read_text())
    assert again["val_bpc"] == pytest.approx(before, abs=1e-5)
    assert [s for s, _ in again["val_curve"]] == [10, 20]
