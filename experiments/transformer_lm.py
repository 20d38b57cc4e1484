"""Character-level language model: a small decoder-only transformer with SP, WN or GmP ReLU MLP blocks.

The same ``gmpjax.models.transformer.TransformerLM`` is trained with each MLP
parameterization (``--methods sp wn gmp gmp_imn``) on the embedded corpus of
``gmpjax.data.text`` (Python standard-library source, a fixed file list split by
file into train and validation), in bf16 compute with float32 parameters, with
adamw and the GmP-safe weight-decay mask (``gmpjax.train.optim``: no decay on
theta, radius, offsets, biases, norm scales). Training runs through
``gmpjax.train.engine.fit`` over ``gmpjax.train.sharding`` (``--mesh DxM`` for
data x tensor parallelism: attention heads and MLP hidden units split over the
``model`` axis), with orbax checkpoints (``--resume`` continues every unfinished
run of ``--workdir``).

Reported: validation bits per character (bytes; the corpus is ASCII up to a few
characters) at the end of training, mean +- standard error over seeds, per
method; ``results.json`` and ``loss_curves.png`` in ``--workdir``.

    python -m experiments.transformer_lm --methods sp gmp gmp_imn --seeds 3
    python -m experiments.transformer_lm --quick --workdir /tmp/lm        # seconds: a smoke run
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.transformer_lm --quick --mesh 2x4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.common import mean_se

METHODS: tuple[str, ...] = ("sp", "wn", "gmp", "gmp_imn")
DTYPES = ("bfloat16", "float32")

# Flags --quick may set (only where the user gave none): full value, quick value.
SIZED = {
    "steps": (300, 40),
    "batch_size": (16, 16),
    "seq_len": (64, 32),
    "d_model": (64, 32),
    "heads": (4, 4),
    "layers": (2, 1),
    "eval_every": (50, 20),
    "val_windows": (256, 32),
    "seeds": (3, 2),
    "methods": (("sp", "gmp", "gmp_imn"), ("sp", "gmp")),
}


@dataclasses.dataclass(frozen=True)
class Config:
    methods: tuple[str, ...]
    seeds: int
    seed: int
    steps: int
    batch_size: int
    seq_len: int
    d_model: int
    heads: int
    layers: int
    mlp_ratio: int
    lr: float
    weight_decay: float
    warmup: int
    eval_every: int
    val_windows: int
    dtype: str
    mesh: str | None
    workdir: str
    resume: bool
    save_every: int
    quick: bool
    progress: bool

    def model_key(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        skip = {"resume", "progress", "workdir", "methods", "seeds", "quick"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def parse_args(argv: Sequence[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=None, help=f"MLP parameterizations, from {' '.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed (runs use seed, seed+1, ...)")
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 300)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size in sequences (default 16)")
    p.add_argument("--seq-len", type=int, default=None, help="context length in bytes (default 64)")
    p.add_argument("--d-model", type=int, default=None, help="model width (default 64)")
    p.add_argument("--heads", type=int, default=None, help="attention heads (default 4)")
    p.add_argument("--layers", type=int, default=None, help="transformer blocks (default 2)")
    p.add_argument("--mlp-ratio", type=int, default=4, help="MLP hidden width / d_model")
    p.add_argument("--lr", type=float, default=3e-3, help="adamw peak learning rate (cosine decay, linear warmup)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="adamw decay of kernels (never of theta)")
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps)")
    p.add_argument("--eval-every", type=int, default=None, help="validation every N steps (default 50)")
    p.add_argument("--val-windows", type=int, default=None, help="validation windows of --seq-len bytes (default 256)")
    p.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="compute dtype (params stay float32)")
    p.add_argument(
        "--mesh",
        default=None,
        help="DATAxMODEL device mesh, e.g. 2x4 (tensor parallel); default: data parallel over all devices",
    )
    p.add_argument("--workdir", default="results/transformer_lm", help="checkpoints, results.json, figure")
    p.add_argument("--resume", action="store_true", help="continue the unfinished runs of --workdir")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny model and few steps (a smoke run of seconds); flags you give still win",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    a = p.parse_args(argv)

    sized = {k: getattr(a, k) if getattr(a, k) is not None else v[1 if a.quick else 0] for k, v in SIZED.items()}
    methods = tuple(dict.fromkeys(m.lower().replace("+", "_").replace("-", "_") for m in sized["methods"]))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"--methods: unknown {' '.join(bad)}; choose from {' '.join(METHODS)}")
    for name in ("seeds", "steps", "batch_size", "seq_len", "d_model", "heads", "layers", "eval_every", "val_windows"):
        if sized[name] < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer (got {sized[name]})")
    for name in ("mlp_ratio", "save_every"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer (got {getattr(a, name)})")
    if not (math.isfinite(a.lr) and a.lr > 0):
        p.error(f"--lr must be a positive number (got {a.lr})")
    if not (math.isfinite(a.weight_decay) and a.weight_decay >= 0):
        p.error(f"--weight-decay must be >= 0 (got {a.weight_decay})")
    if a.seed < 0:
        p.error(f"--seed must be >= 0 (got {a.seed})")
    if sized["d_model"] % sized["heads"]:
        p.error(f"--d-model {sized['d_model']} must be divisible by --heads {sized['heads']}")
    warmup = a.warmup if a.warmup is not None else max(1, sized["steps"] // 20)
    if warmup < 0 or warmup >= sized["steps"]:
        p.error(f"--warmup must be in [0, --steps) (got {warmup} with --steps {sized['steps']})")
    if a.mesh is not None:
        from gmpjax.train.sharding import parse_mesh_shape

        try:
            parse_mesh_shape(a.mesh)
        except ValueError as e:
            p.error(f"--mesh: {e}")
    workdir = Path(a.workdir)
    if a.resume and not (workdir / "config.json").is_file():
        p.error(f"--resume: {workdir} holds no run to resume (no config.json); drop --resume to start one")
    if not a.resume and (workdir / "config.json").is_file():
        p.error(f"--workdir {workdir} already holds a run; pass --resume to continue it, or choose a new --workdir")
    cfg = Config(
        methods=methods,
        seeds=sized["seeds"],
        seed=a.seed,
        steps=sized["steps"],
        batch_size=sized["batch_size"],
        seq_len=sized["seq_len"],
        d_model=sized["d_model"],
        heads=sized["heads"],
        layers=sized["layers"],
        mlp_ratio=a.mlp_ratio,
        lr=a.lr,
        weight_decay=a.weight_decay,
        warmup=warmup,
        eval_every=sized["eval_every"],
        val_windows=sized["val_windows"],
        dtype=a.dtype,
        mesh=a.mesh,
        workdir=str(workdir),
        resume=a.resume,
        save_every=a.save_every,
        quick=a.quick,
        progress=not a.no_progress,
    )
    if cfg.resume:
        saved = json.loads((workdir / "config.json").read_text())
        diff = {k: (saved.get(k), v) for k, v in cfg.model_key().items() if saved.get(k) != v}
        if diff:
            p.error(f"--resume: these settings differ from the run in {workdir} (saved, given): {diff}")
    return cfg


class Trainer:
    """Everything one method shares across seeds: mesh, data, compiled train and eval steps."""

    def __init__(self, cfg: Config, method: str, corpus, mesh, model_axis: str | None):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx

        from gmpjax.data.text import eval_windows
        from gmpjax.models.transformer import TransformerLM
        from gmpjax.train import sharding, weight_decay_mask
        from gmpjax.train.engine import init_train_state, make_eval_step, make_train_step

        self.cfg, self.method, self.corpus, self.mesh = cfg, method, corpus, mesh
        dtype = jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32

        def make_model(key):
            return TransformerLM(
                corpus.vocab_size,
                cfg.seq_len,
                parameterization=method,
                d_model=cfg.d_model,
                num_heads=cfg.heads,
                num_layers=cfg.layers,
                mlp_ratio=cfg.mlp_ratio,
                dtype=dtype,
                model_axis=model_axis,
                rngs=nnx.Rngs(key),
            )

        schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, cfg.steps, end_value=0.1 * cfg.lr)
        self.tx = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(schedule, b2=0.99, weight_decay=cfg.weight_decay, mask=weight_decay_mask),
        )
        self.make_model = make_model
        graphdef = nnx.split(nnx.eval_shape(lambda: make_model(jax.random.key(0))), nnx.Param, ...)[0]

        def loss_fn(model, tokens):
            logits = model(tokens[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        def ce_sums(model, tokens):
            logits = model(tokens[:, :-1])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
            return {"ce_sum": jnp.sum(ce), "count": jnp.asarray(ce.size, jnp.float32)}

        self.step = sharding.shard_train_step(make_train_step(graphdef, self.tx, loss_fn), mesh)
        self.eval_step = sharding.shard_eval_step(make_eval_step(graphdef, ce_sums), mesh)
        shards = sharding.data_shards(mesh)
        n_val = (min(cfg.val_windows, (corpus.valid.size - 1) // cfg.seq_len) // shards) * shards
        if n_val < 1:
            raise ValueError(f"--val-windows gives fewer windows than the {shards} data shards of the mesh.")
        self.val = sharding.shard_batch(eval_windows(corpus.valid, cfg.seq_len, n_val), mesh)
        self._init = jax.jit(lambda key: init_train_state(make_model(key), self.tx)[1])

    def init_state(self, seed: int):
        import jax

        from gmpjax.train import sharding

        return sharding.shard_state(self._init(jax.random.key(seed, impl="rbg")), self.mesh)

    def val_bpc(self, state) -> dict:
        import jax

        sums = jax.device_get(self.eval_step(state, self.val))
        return {"val_bpc": float(sums["ce_sum"] / sums["count"] / math.log(2.0))}

    def batches(self, seed: int, start: int):
        from gmpjax.data.text import sample_windows
        from gmpjax.train import sharding

        step = start
        while True:
            yield sharding.shard_batch(
                sample_windows(self.corpus.train, self.cfg.batch_size, self.cfg.seq_len, seed, step), self.mesh
            )
            step += 1


def run_one(trainer: Trainer, seed: int, run_dir: Path) -> dict:
    """Train (or resume) one (method, seed) run; returns its result record (also written to ``result.json``)."""
    import jax

    from gmpjax.train import sharding
    from gmpjax.train.checkpoint import Checkpointer, abstract_state
    from gmpjax.train.engine import MetricsLogger, fit

    cfg = trainer.cfg
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    state = trainer.init_state(seed)
    ckpt = Checkpointer(run_dir / "ckpt", save_every=cfg.save_every, max_to_keep=2)
    start = 0
    restored = ckpt.restore_latest(abstract_state(state)) if cfg.resume else None
    log_path = run_dir / "metrics.jsonl"
    if restored is not None:
        state, _ = restored
        start = int(jax.device_get(state.step))
        if log_path.is_file():  # drop records logged after the checkpoint (they will be logged again)
            keep = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
            log_path.write_text("".join(k + "\n" for k in keep))
    elif log_path.is_file():
        log_path.unlink()
    logger = MetricsLogger(run_dir)
    t0 = time.perf_counter()

    def save(step, st, rec):
        ckpt.save(step, st, {"method": trainer.method, "seed": seed})
        return False

    state, _ = fit(
        trainer.step,
        state,
        trainer.batches(seed, start),
        num_steps=cfg.steps,
        eval_fn=trainer.val_bpc,
        eval_every=cfg.eval_every,
        log_every=max(1, cfg.eval_every // 4),
        logger=logger,
        callbacks=[save],
        progress=cfg.progress,
        desc=f"{trainer.method} seed {seed}",
    )
    ckpt.save(cfg.steps, state, {"method": trainer.method, "seed": seed}, force=True)
    ckpt.close()
    records = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln]
    val = [(r["step"], r["val_bpc"]) for r in records if "val_bpc" in r]
    train = [(r["step"], r["train_loss"] / math.log(2.0)) for r in records if "train_loss" in r]
    specs = [
        str(x.sharding.spec)
        for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]
        if "theta" in jax.tree_util.keystr(p)
    ]
    result = {
        "method": trainer.method,
        "seed": seed,
        "val_bpc": val[-1][1],
        "val_curve": val,
        "theta_sharding": sorted(set(specs)),
        "train_bpc_curve": train,
        "train_seconds_this_session": time.perf_counter() - t0,
        "num_params": int(sum(np.size(x) for x in jax.tree.leaves(sharding.to_host(state.params)))),
    }
    done.write_text(json.dumps(result))
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (method, runs) in enumerate(results.items()):
        color = f"C{i}"
        for ax, key in ((axes[0], "train_bpc_curve"), (axes[1], "val_curve")):
            steps = [s for s, _ in runs[0][key]]
            vals = np.array([[v for _, v in r[key]] for r in runs])
            mean = vals.mean(0)
            ax.plot(steps, mean, color=color, label=f"{method} (n={len(runs)})")
            if len(runs) > 1:
                se = vals.std(0, ddof=1) / np.sqrt(len(runs))
                ax.fill_between(steps, mean - se, mean + se, color=color, alpha=0.25)
    axes[0].set(title="training loss", xlabel="step", ylabel="bits per character")
    axes[1].set(title="validation", xlabel="step", ylabel="bits per character")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: Config) -> dict:
    import jax

    from gmpjax.data.text import load_stdlib_corpus
    from gmpjax.train import sharding

    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg_path = workdir / "config.json"
    if not cfg.resume:
        cfg_path.write_text(json.dumps(cfg.model_key(), indent=1))
    if cfg.mesh is not None:
        mesh, model_axis = sharding.make_mesh(cfg.mesh), sharding.MODEL_AXIS
    else:
        mesh, model_axis = sharding.make_data_mesh(), None
    sharding.check_batch_size(cfg.batch_size, sharding.data_shards(mesh), what="--batch-size")
    corpus = load_stdlib_corpus()
    t0 = time.perf_counter()
    results: dict[str, list[dict]] = {}
    for method in cfg.methods:
        trainer = Trainer(cfg, method, corpus, mesh, model_axis)
        results[method] = [
            run_one(trainer, s, workdir / "runs" / f"{method}_seed{s}") for s in range(cfg.seed, cfg.seed + cfg.seeds)
        ]
    wall = time.perf_counter() - t0
    table = {
        m: dict(zip(("mean", "se"), mean_se([r["val_bpc"] for r in rs]), strict=True)) | {"n": len(rs)}
        for m, rs in results.items()
    }
    summary = {
        "table": table,
        "config": dataclasses.asdict(cfg),
        "corpus": corpus.info,
        "wall_s": wall,
        "command": "python -m experiments.transformer_lm " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()],
            "mesh": dict(mesh.shape),
        },
        "runs": results,
    }
    (workdir / "results.json").write_text(json.dumps(summary, indent=1))
    plot(results, workdir / "loss_curves.png")
    return summary


def print_summary(summary: dict) -> None:
    print(f"validation bits per character (mean +- s.e. over seeds), {summary['config']['steps']} steps:")
    for m, row in summary["table"].items():
        print(f"  {m:8s} {row['mean']:.4f} +- {row['se']:.4f}  (n={row['n']})")
    print("  paper: neither paper reports a transformer LM; the comparison is SP vs GmP within this run")
    print(
        f"wall time {summary['wall_s']:.1f} s on {summary['machine']['devices'][0]} "
        f"({summary['machine']['cpu_count']} cores visible), mesh {summary['machine']['mesh']}; "
        f"results in {summary['config']['workdir']}/results.json, loss_curves.png"
    )


def main(argv: Sequence[str] | None = None) -> dict:
    summary = run(parse_args(argv))
    print_summary(summary)
    return summary


if __name__ == "__main__":
    main()
