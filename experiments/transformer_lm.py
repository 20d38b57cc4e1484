"""Character-level language model: a small decoder-only transformer with SP, WN or GmP ReLU MLP blocks.

``gmpjax.models.transformer.TransformerLM`` with each MLP parameterization (``--methods sp wn gmp gmp_imn``)
on the embedded corpus of ``gmpjax.data.text`` (Python standard-library source, split by file), bf16 compute
with float32 parameters, adamw (peak ``--lr``, warmup, cosine decay to a tenth) with the GmP-safe weight-decay
mask, trained by the host trainer ``gmpjax.train.trainer.HostTrainer`` (``--mesh DxM``: data x tensor
parallelism; orbax checkpoints, ``--resume``). Reported: validation bits per character at the end, mean +- s.e.
over seeds per method; ``results.json`` and ``loss_curves.png`` in ``--workdir``.

    python -m experiments.transformer_lm --methods sp gmp gmp_imn --seeds 3
    python -m experiments.transformer_lm --quick --workdir /tmp/lm        # seconds: a smoke run
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.transformer_lm --quick --mesh 2x4
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import cli, report
from experiments.report import mean_se
from gmpjax.data.text import TextCorpus, eval_windows, load_stdlib_corpus, window_batches
from gmpjax.models.transformer import MLP_PARAMETERIZATIONS, TransformerLM
from gmpjax.train import sharding
from gmpjax.train.host import HostConfig
from gmpjax.train.losses import xent, xent_sums
from gmpjax.train.optim import make_optimizer
from gmpjax.train.trainer import HostTrainer

DTYPES = ("bfloat16", "float32")


@dataclasses.dataclass(frozen=True)
class Config(cli.Common):
    method_names: ClassVar[tuple[str, ...] | None] = MLP_PARAMETERIZATIONS

    methods: tuple[str, ...] = cli.field(("SP", "GmP", "GmP+IMN"), "MLP parameterizations: sp wn gmp gmp_imn")
    lr: tuple[str, ...] = cli.field(("3e-3",), "adamw peak learning rate (one number; linear warmup, cosine decay)")
    seeds: int = cli.field(3, "seeds per method (runs use --seed, --seed + 1, ...)")
    workdir: str = cli.field("results/transformer_lm", "checkpoints, results.json, figure; alias --out")
    steps: int = cli.field(300, "training steps per run")
    batch_size: int = cli.field(16, "global batch size in sequences")
    seq_len: int = cli.field(64, "context length in bytes")
    d_model: int = cli.field(64, "model width")
    heads: int = cli.field(4, "attention heads")
    layers: int = cli.field(2, "transformer blocks")
    mlp_ratio: int = cli.field(4, "MLP hidden width / d_model")
    weight_decay: float = cli.field(0.1, "adamw decay of kernels (never of theta)")
    warmup: int | None = cli.field(None, "warmup steps (None: --steps // 20, at least 1)")
    eval_every: int = cli.field(50, "validation every N steps (and at the end)")
    val_windows: int = cli.field(256, "validation windows of --seq-len bytes")
    dtype: str = cli.field("bfloat16", "compute dtype (parameters stay float32)", choices=DTYPES)
    mesh: str | None = cli.field(None, "DATAxMODEL device mesh, e.g. 2x4 (tensor parallel); None: data parallel")
    save_every: int = cli.field(100, "checkpoint every N steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.lr) != 1 or self.lr[0] == "cv":
            raise ValueError(
                f"--lr takes one number here, the adamw peak learning rate, e.g. --lr 3e-3 (got {' '.join(self.lr)})"
            )
        cli.positive(
            self, *"steps batch_size seq_len d_model heads layers mlp_ratio eval_every val_windows save_every".split()
        )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be >= 0 (got {self.weight_decay})")
        if self.d_model % self.heads:
            raise ValueError(f"--d-model {self.d_model} must be divisible by --heads {self.heads}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"--warmup must be in [0, --steps) (got {self.warmup_steps} with --steps {self.steps})")
        if self.mesh is not None:
            try:
                sharding.parse_mesh_shape(self.mesh)
            except ValueError as e:
                raise ValueError(f"--mesh: {e}") from None

    @property
    def peak_lr(self) -> float:
        return float(self.lr[0])

    @property
    def warmup_steps(self) -> int:
        return max(1, self.steps // 20) if self.warmup is None else self.warmup


def get_config() -> Config:
    """The full run: 300 steps of a 2-block, 64-wide model, 3 seeds of sp, gmp, gmp_imn."""
    return Config()


CONFIGS = {"default": get_config}


def quick(cfg: Config) -> dict:
    """A smoke run of seconds: 40 steps of a 1-block, 32-wide model, 2 seeds of sp and gmp."""
    return dict(
        steps=40, seq_len=32, d_model=32, layers=1, eval_every=20, val_windows=32, seeds=2, methods=("sp", "gmp")
    )


def make_trainer(
    cfg: Config, method: str, vocab_size: int, mesh: jax.sharding.Mesh, model_axis: str | None
) -> HostTrainer:
    """The ``HostTrainer`` of one method (shared by its seeds): adamw with warmup-cosine, next-byte cross-entropy."""
    size = {"d_model": cfg.d_model, "num_heads": cfg.heads, "num_layers": cfg.layers, "mlp_ratio": cfg.mlp_ratio}
    size |= {"dtype": jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32, "model_axis": model_axis}

    def make_model(key: jax.Array) -> TransformerLM:
        return TransformerLM(vocab_size, cfg.seq_len, parameterization=method, rngs=nnx.Rngs(key), **size)

    lr = cfg.peak_lr
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, cfg.warmup_steps, cfg.steps, end_value=0.1 * lr)
    tx = make_optimizer("adamw", schedule, b2=0.99, weight_decay=cfg.weight_decay, clip_norm=1.0)

    def next_byte(fn: Callable[[jax.Array, jax.Array], Any]) -> Callable[[nnx.Module, jax.Array], Any]:
        return lambda model, tokens: fn(model(tokens[:, :-1]), tokens[:, 1:])  # logits (B, L-1, V), labels (B, L-1)

    def bits_per_char(sums: Mapping[str, Any]) -> dict[str, float]:  # mean next-byte cross-entropy / ln 2
        return {"val_bpc": float(sums["loss"] / sums["count"] / math.log(2.0))}

    return HostTrainer(make_model, tx, next_byte(xent), mesh, eval_fn=next_byte(xent_sums), metrics=bits_per_char)


def train_one(cfg: Config, trainer: HostTrainer, corpus: TextCorpus, name: str, run_dir: Path) -> dict:
    """Train (or, with ``--resume``, continue) one (method, seed) run in ``run_dir``; returns its result record."""
    method, seed = name.rsplit("_seed", 1)
    mesh = trainer.mesh
    try:
        val = eval_windows(corpus.valid, cfg.seq_len, cfg.val_windows, multiple_of=sharding.data_shards(mesh))
    except ValueError as e:
        raise ValueError(f"--val-windows: {e}") from None
    val = sharding.shard_batch(val, mesh)

    def batches(start: int) -> Iterator[jax.Array]:  # the training stream from step ``start`` on, sharded
        windows = window_batches(corpus.train, cfg.batch_size, cfg.seq_len, int(seed), start)
        return (sharding.shard_batch(b, mesh) for b in windows)

    loop = HostConfig(num_steps=cfg.steps, eval_every=cfg.eval_every, log_every=max(1, cfg.eval_every // 4))
    run = trainer.fit(
        jax.random.key(int(seed), impl="rbg"), batches, loop, run_dir, eval_batches=lambda: itertools.repeat(val),
        resume=cfg.resume, save_every=cfg.save_every, keep=2, progress=cfg.progress,
        config_json={"method": method, "seed": int(seed)}, desc=f"{method} seed {seed}",
    )  # fmt: skip
    params = run.result.state.params
    theta = [x for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if "theta" in jax.tree_util.keystr(p)]
    return {
        "method": method,
        "seed": int(seed),
        "val_bpc": run.history[-1]["val_bpc"],
        "val_curve": [(r["step"], r["val_bpc"]) for r in run.history],
        "theta_sharding": sorted({str(x.sharding.spec) for x in theta}),
        "train_bpc_curve": [(r["step"], r["train_loss"] / math.log(2.0)) for r in run.records if "train_loss" in r],
        "train_seconds_this_session": run.wall_s,
        "num_params": run.num_params,
    }


def plot(results: dict, path: Path) -> None:
    """Training and validation bits per character against step: mean over seeds, +- s.e. band."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (method, runs) in enumerate(results.items()):
        for ax, key in ((axes[0], "train_bpc_curve"), (axes[1], "val_curve")):
            steps = [s for s, _ in runs[0][key]]
            mean, se = np.array([mean_se([r[key][j][1] for r in runs]) for j in range(len(steps))]).T
            ax.plot(steps, mean, color=f"C{i}", label=f"{method} (n={len(runs)})")
            ax.fill_between(steps, mean - se, mean + se, color=f"C{i}", alpha=0.25)
    axes[0].set(title="training loss", xlabel="step", ylabel="bits per character")
    axes[1].set(title="validation", xlabel="step", ylabel="bits per character")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    report.save_figure(fig, str(path))


def run(cfg: Config) -> dict:
    """Train every (method, seed), write ``results.json`` and ``loss_curves.png``, print the table."""
    workdir = Path(cfg.workdir)
    if not cfg.resume and (workdir / "runs").exists():
        raise ValueError(
            f"--workdir {workdir} already holds a run; pass --resume to continue it, or choose a new --workdir"
        )
    mesh = sharding.make_data_mesh() if cfg.mesh is None else sharding.make_mesh(cfg.mesh)
    model_axis = None if cfg.mesh is None else sharding.MODEL_AXIS
    sharding.check_batch_size(cfg.batch_size, sharding.data_shards(mesh), what="--batch-size")
    corpus = load_stdlib_corpus()
    trainers: dict[str, HostTrainer] = {}

    def job(name: str) -> dict:
        method = name.rsplit("_seed", 1)[0]
        if method not in trainers:
            trainers[method] = make_trainer(cfg, method, corpus.vocab_size, mesh, model_axis)
        return train_one(cfg, trainers[method], corpus, name, workdir / "runs" / name)

    t0 = time.perf_counter()
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    done = report.run_jobs(
        cfg, [f"{m}_seed{s}" for m in cfg.methods for s in seeds], job, desc="runs", grow=("methods", "seeds")
    )
    results = {m: [done[f"{m}_seed{s}"] for s in seeds] for m in cfg.methods}
    wall = time.perf_counter() - t0
    table = {
        m: dict(zip(("mean", "se"), mean_se([r["val_bpc"] for r in rs]), strict=True)) | {"n": len(rs)}
        for m, rs in results.items()
    }
    config = dataclasses.asdict(cfg) | {"peak_lr": cfg.peak_lr, "warmup_steps": cfg.warmup_steps}
    summary = {"table": table, "config": config, "corpus": corpus.info, "wall_s": wall, "mesh": dict(mesh.shape)}
    summary["runs"] = results
    plot(results, workdir / "loss_curves.png")
    report.write_results(str(workdir), summary, tables)
    print(
        f"wall time {wall:.1f} s on {jax.devices()[0]} ({os.cpu_count()} cores visible), "
        f"mesh {dict(mesh.shape)}; results in {workdir}/results.json, loss_curves.png"
    )
    return summary


def tables(results: Mapping[str, Any]) -> dict[str, str]:
    """``{"bpc": ...}``: validation bits per character at the end, mean ± s.e. over seeds, per MLP parameterization
    (neither paper reports a transformer LM: the comparison is within this run)."""
    steps = results["config"]["steps"]
    rows = [[m, f"{r['mean']:.4f} ± {r['se']:.4f}", r["n"]] for m, r in results["table"].items()]
    return {"bpc": report.markdown_table(["MLP", f"validation bpc after {steps} steps", "seeds"], rows)}


main = cli.entry(__name__)  # main(argv) runs the script; python -m runs it on sys.argv

if __name__ == "__main__":
    main()
