"""Quickstart: SP vs GmP one-hidden-layer ReLU networks on a generated 1-D regression task.

Runs in under a minute on a 2-core CPU with no data download:

    python -m experiments.quickstart

The task is the paper's 1-D Levy regression (50 noisy points on [-10, 10], the
data of ``experiments.levy_1d``), trained with a deliberately plain protocol:
MAE loss, full-batch Adam for a fixed number of steps (no plateau decay, no
early stopping), lr 0.1 for GmP and 0.01 for the others (the paper's
cross-validated rates), the paper's GmP initialisation (u uniform, r = 1,
lambda = 0), float64. ``experiments.levy_1d`` is the full reproduction of Fig. 2
with the released code's protocol.

Each method trains ``--seeds`` replicas at once (``jax.vmap`` over seeds, ``lax.scan``
over steps: one compiled program per method) and prints the test RMSE as
mean +- standard error over seeds. Writes ``metrics.json`` and ``fits.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.levy_1d import Config as LevyConfig
from experiments.levy_1d import mae_loss
from experiments.levy_1d import make_data as levy_data
from gmpjax.layers import check_parameterization
from gmpjax.models import MLP
from gmpjax.train import init_replicas, make_train_step, scan_steps_same_batch


@dataclasses.dataclass
class Config:
    methods: tuple[str, ...] = ("sp", "gmp")
    hidden: int = 100
    steps: int = 10_000
    lr_gmp: float = 0.1
    lr_other: float = 0.01
    seeds: int = 5
    data_seed: int = 0
    out: str = "results/quickstart"


def make_data(cfg: Config):
    """``((x, y), (x_test, y_test))`` of the Levy task, float64 arrays of shape ``(N, 1)``."""
    d = levy_data(LevyConfig(data_seed=cfg.data_seed))
    return (jnp.asarray(d["x"]), jnp.asarray(d["y"])), (jnp.asarray(d["x_test"]), jnp.asarray(d["y_test"]))


def train_method(method: str, cfg: Config, train, test):
    lr = cfg.lr_gmp if method.startswith("gmp") else cfg.lr_other
    tx = optax.adam(lr, eps=1e-7)
    keys = jax.random.split(jax.random.key(1), cfg.seeds)
    graphdef, states = init_replicas(
        lambda k: MLP(1, (cfg.hidden,), 1, parameterization=method, param_dtype=jnp.float64, rngs=nnx.Rngs(k)),
        keys,
        tx,
    )
    step = make_train_step(graphdef, tx, mae_loss)

    @jax.jit
    def run(states):
        states, metrics = jax.vmap(lambda s: scan_steps_same_batch(step, s, train, cfg.steps))(states)

        def predict(s):
            model = nnx.merge(graphdef, s.params, s.rest)
            model.eval()
            return model(test[0])

        preds = jax.vmap(predict)(states)
        return preds, metrics["loss"]

    preds, losses = run(states)
    rmse = np.sqrt(np.mean((np.asarray(preds) - np.asarray(test[1])[None]) ** 2, axis=(1, 2)))
    return rmse, np.asarray(preds), np.asarray(losses)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    p.add_argument("--methods", default=",".join(d.methods), help="comma list of sp,wn,bn,gmp,gmp_imn,wn_mbn")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--seeds", type=int, default=d.seeds)
    p.add_argument("--out", default=d.out)
    p.add_argument("--quick", action="store_true", help="500 steps, 2 seeds (for tests)")
    a = p.parse_args(argv)
    methods = tuple(check_parameterization(m) for m in a.methods.split(","))
    cfg = Config(methods=methods, steps=500 if a.quick else a.steps, seeds=2 if a.quick else a.seeds, out=a.out)
    if cfg.seeds < 1 or cfg.steps < 1:
        p.error("--seeds and --steps must be positive")

    jax.config.update("jax_enable_x64", True)
    train, test = make_data(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results, fits = {}, {}
    t0 = time.perf_counter()
    print(f"{'method':<8} {'lr':>6} {f'test RMSE (mean ± s.e. over {cfg.seeds} seeds)'}")
    for m in cfg.methods:
        rmse, preds, losses = train_method(m, cfg, train, test)
        se = rmse.std(ddof=1) / np.sqrt(len(rmse)) if len(rmse) > 1 else 0.0
        lr = cfg.lr_gmp if m.startswith("gmp") else cfg.lr_other
        results[m] = {
            "lr": lr,
            "rmse": rmse.tolist(),
            "rmse_mean": float(rmse.mean()),
            "rmse_se": float(se),
            "final_train_mae": losses[:, -1].tolist(),
        }
        fits[m] = preds[0, :, 0]
        print(f"{m:<8} {lr:>6g} {rmse.mean():.4f} ± {se:.4f}")
    wall = time.perf_counter() - t0
    print(f"wall time {wall:.1f}s on {jax.default_backend()}")
    if not all(np.isfinite(r["rmse_mean"]) for r in results.values()):
        raise SystemExit("non-finite RMSE: training diverged")

    metrics = {
        "config": dataclasses.asdict(cfg),
        "results": results,
        "wall_time_s": wall,
        "backend": jax.default_backend(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(test[0][:, 0], test[1][:, 0], "k-", lw=2, label="ground truth")
    ax.plot(train[0][:, 0], train[1][:, 0], "k.", ms=4, label="train")
    for m, f in fits.items():
        ax.plot(test[0][:, 0], f, label=f"{m} (RMSE {results[m]['rmse_mean']:.3f})")
    ax.legend(fontsize=8)
    ax.set_title("quickstart: 1-D Levy, one hidden layer of 100 ReLU units (seed 0)")
    fig.tight_layout()
    fig.savefig(out / "fits.png", dpi=120)
    plt.close(fig)
    return metrics


if __name__ == "__main__":
    main()
