"""Quickstart: SP vs GmP one-hidden-layer ReLU networks on a generated 1-D regression task.

Runs in under a minute on a 2-core CPU with no data download:

    python -m experiments.quickstart

The task is the paper's 1-D Levy regression (``gmpjax.data.levy_data``: 50 noisy points on [-10, 10]),
trained with a deliberately plain protocol: MAE loss, full-batch Adam for a fixed number of steps (no
plateau decay, no early stopping), lr 0.1 for GmP and 0.01 for the others (``--lr cv``, the paper's
cross-validated rates), the paper's GmP initialisation (u uniform, r = 1, lambda = 0), float64.
``experiments.levy_1d`` is the full reproduction of Fig. 2 with the released code's protocol.

The ``--seeds`` replicas of a method train as one ``gmpjax.train.replicas.train_replicas`` (one
full-batch step per epoch); the test RMSE is printed as mean ± standard error over seeds. Writes ``results.json``
and ``fits.png`` under ``--workdir``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import cli, report
from gmpjax.data.levy import levy_data
from gmpjax.models import MLP
from gmpjax.train.loop import LoopConfig
from gmpjax.train.losses import mae, on_batch
from gmpjax.train.replicas import train_replicas


@dataclasses.dataclass(frozen=True)
class Config(cli.Common):
    methods: tuple[str, ...] = cli.field(("sp", "gmp"), "parameterizations, space-separated")
    seeds: int = cli.field(5, "replicas per method")
    seed: int = cli.field(1, "PRNG seed of the replicas (split into --seeds keys)")
    workdir: str = cli.field("results/quickstart", "output folder; alias --out")
    steps: int = cli.field(10_000, "full-batch Adam steps")
    hidden: int = cli.field(100, "hidden ReLU units")
    data_seed: int = cli.field(0, "numpy seed of the data")

    def __post_init__(self) -> None:
        super().__post_init__()
        cli.positive(self, "steps", "hidden")


def get_config() -> Config:
    return Config()


CONFIGS = {"paper": get_config}


def quick(cfg: Config) -> dict:
    return {"steps": 500, "seeds": 2}


def train_method(method: str, lr: float, cfg: Config, data: dict) -> dict[str, np.ndarray]:
    """``cfg.seeds`` replicas, ``cfg.steps`` steps: ``rmse (seeds,)``, ``pred (seeds, 201)``, ``final_loss``."""

    def make(key):
        return MLP(1, (cfg.hidden,), 1, parameterization=method, param_dtype=jnp.float64, rngs=nnx.Rngs(key))

    # the default rules: no early stopping, no plateau decay, the last weights
    out = train_replicas(
        make, lambda lr: optax.adam(lr, eps=1e-7), on_batch(mae),
        {"train": (jnp.asarray(data["x"]), jnp.asarray(data["y"]))}, LoopConfig(cfg.steps, monitor_split=None),
        keys=jax.random.split(jax.random.key(cfg.seed), cfg.seeds), lrs=lr,
    )  # fmt: skip
    pred = out.evaluate(lambda m, x: m(x)[:, 0], jnp.asarray(data["x_test"]))["metric"]
    rmse = np.sqrt(np.mean((pred - data["y_test"][None, :, 0]) ** 2, axis=1))
    return {"rmse": rmse, "pred": pred, "final_loss": np.asarray(out.result.history["train_loss"][:, -1])}


def run(cfg: Config) -> dict:
    data = levy_data(seed=cfg.data_seed)
    results, fits = {}, {}
    t0 = time.perf_counter()
    with jax.enable_x64(True):
        for name, (m, lr) in cfg.runs().items():
            r = train_method(m, lr, cfg, data)
            mean, se = report.mean_se(r["rmse"])
            results[name] = {"lr": lr, "rmse": r["rmse"], "rmse_mean": mean, "rmse_se": se}
            results[name]["final_train_mae"] = r["final_loss"]
            fits[name] = r["pred"][0]
    wall = time.perf_counter() - t0
    if not all(np.isfinite(r["rmse_mean"]) for r in results.values()):
        raise SystemExit("non-finite RMSE: training diverged")
    metrics = {"config": dataclasses.asdict(cfg), "results": results, "wall_time_s": wall,
               "backend": jax.default_backend()}  # fmt: skip
    report.write_results(cfg.workdir, metrics, tables)
    print(f"wall time {wall:.1f}s on {jax.default_backend()}")

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(data["x_test"][:, 0], data["y_test"][:, 0], "k-", lw=2, label="ground truth")
    ax.plot(data["x"][:, 0], data["y"][:, 0], "k.", ms=4, label="train")
    for name, f in fits.items():
        ax.plot(data["x_test"][:, 0], f, label=f"{name} (RMSE {results[name]['rmse_mean']:.3f})")
    ax.legend(fontsize=8)
    ax.set_title("quickstart: 1-D Levy, one hidden layer of 100 ReLU units (seed 0)")
    fig.tight_layout()
    report.save_figure(fig, os.path.join(cfg.workdir, "fits.png"))
    return metrics


def tables(results: Mapping[str, Any]) -> dict[str, str]:
    """``{"rmse": ...}``: per method, the test RMSE (mean ± s.e. over seeds)."""
    n = len(next(iter(results["results"].values()))["rmse"])
    res = results["results"]
    rows = [[name, f"{r['lr']:g}", f"{r['rmse_mean']:.4f} ± {r['rmse_se']:.4f}"] for name, r in res.items()]
    return {"rmse": report.markdown_table(["method", "lr", f"test RMSE (mean ± s.e. over {n} seeds)"], rows)}


main = cli.entry(__name__)  # main(argv) runs the script; python -m runs it on sys.argv

if __name__ == "__main__":
    main()
