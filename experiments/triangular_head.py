"""Classifier head with learned triangle activations (the VGG-16 head experiment of Milkert et al. 2025 in miniature).

A 2-hidden-layer MLP head ``Linear -> act -> Linear -> act -> Linear`` is trained with
``act = ReLU`` and with ``act = TriangleActivation(hidden, depth)`` (one learned convex
1-D activation per neuron: a width-4, depth-``d`` triangle subnet in peak
parameterisation; research/triangular-wave.md section 3.3), on

* ``digits`` (default; scikit-learn's 8x8 digits, 1437 train / 360 test, offline), or
* ``cifar10`` via tensorflow-datasets (flattened 32x32x3 pixels) -- only when it is
  prepared in ArrayRecord format (``--tfds-data-dir``); otherwise a ``DataError`` says how.

Each head trains its seeds with ``gmpjax.train.replicas.train_replicas`` (shuffled minibatches,
the remainder dropped; test accuracy after every epoch). Reports test-accuracy curves (mean over
seeds) and the compute overhead of the triangle activations: analytic multiply-accumulates per
example and the time per epoch of a second, already compiled run. The paper reports ~0.5 %
extra compute for VGG-16's 4096-wide head and an early-training advantage with equal
final ImageNet accuracy; no per-epoch numbers are available to compare with.

    python -m experiments.triangular_head            # digits, 3 seeds, 40 epochs
    python -m experiments.triangular_head --quick
    python -m experiments.triangular_head --dataset cifar10 --tfds-data-dir DIR
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import numpy as np
import optax
from flax import nnx

from experiments import cli, report
from gmpjax.data.paths import DataError
from gmpjax.layers.registry import learning_rates
from gmpjax.layers.triangle import TriangleActivation
from gmpjax.train.loop import LoopConfig
from gmpjax.train.losses import accuracy, on_batch, xent
from gmpjax.train.replicas import train_replicas
from gmpjax.train.rules import Rules

ACTIVATIONS = ("relu", "triangle")


@dataclasses.dataclass(frozen=True)
class Config(cli.Common):
    method_names: ClassVar[tuple[str, ...] | None] = ACTIVATIONS
    lr_cv: ClassVar[bool] = False

    methods: tuple[str, ...] = cli.field(ACTIVATIONS, "head activations (relu triangle)")
    lr: tuple[str, ...] = cli.field(("0.001",), "Adam learning rate(s) (numbers; 'cv' does not apply)")
    seeds: int = cli.field(3, "seeds (vmapped replicas) per head")
    workdir: str = cli.field("results/triangular_head", "output folder; alias --out")
    dataset: str = cli.field("digits", "dataset", choices=("digits", "cifar10"))
    hidden: int = cli.field(128, "hidden width H")
    depth: int = cli.field(5, "depth d of each triangle subnet")
    epochs: int = cli.field(40, "training epochs")
    batch_size: int = cli.field(64, "minibatch size (the remainder of an epoch is dropped)")
    tfds_data_dir: str | None = cli.field(None, "tensorflow-datasets folder with cifar10 in ArrayRecord format")
    max_train: int | None = cli.field(None, "use only the first N training examples (cifar10 on CPU)")

    def __post_init__(self) -> None:
        super().__post_init__()
        cli.positive(self, "hidden", "depth", "epochs", "batch_size")


def get_config() -> Config:
    """digits, 128-wide head, d = 5, 40 epochs of Adam(1e-3) at batch 64, 3 seeds."""
    return Config()


CONFIGS = {"paper": get_config}


def quick(cfg: Config) -> dict:
    return dict(hidden=32, epochs=3, seeds=2, depth=3, workdir="results/triangular_head_quick")


def load_data(cfg: Config):
    """``(x_train, y_train, x_test, y_test)`` as float32 features (standardised) and int labels."""
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        xtr, xte, ytr, yte = train_test_split(
            d.data.astype(np.float32), d.target, test_size=0.2, random_state=cfg.seed, stratify=d.target
        )
    else:
        xtr, ytr, xte, yte = _load_cifar10(cfg)
    if cfg.max_train:
        xtr, ytr = xtr[: cfg.max_train], ytr[: cfg.max_train]
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    f32, i32 = lambda x: ((x - mu) / sd).astype(np.float32), lambda y: y.astype(np.int32)  # noqa: E731
    return f32(xtr), i32(ytr), f32(xte), i32(yte)


def _load_cifar10(cfg: Config):
    from gmpjax.data.images import load_source

    def arrays(split):
        src = load_source("cifar10", split, data_dir=cfg.tfds_data_dir)
        items = [src[i] for i in range(len(src))]
        x = np.stack([np.asarray(it["image"], np.float32).reshape(-1) / 255.0 for it in items])
        return x, np.asarray([int(it["label"]) for it in items])

    try:
        return (*arrays("train"), *arrays("test"))
    except DataError as e:
        raise DataError(f"{e} (experiments.triangular_head --dataset cifar10)") from e


class Head(nnx.Module):
    """``Linear(in, H) -> act -> Linear(H, H) -> act -> Linear(H, classes)`` with act = ReLU or TriangleActivation."""

    def __init__(
        self, in_features: int, hidden: int, classes: int, *, activation: str = "relu", depth: int = 5, rngs: nnx.Rngs
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}.")
        self.l1 = nnx.Linear(in_features, hidden, rngs=rngs)
        self.l2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.l3 = nnx.Linear(hidden, classes, rngs=rngs)
        tri = activation == "triangle"
        self.a1 = TriangleActivation(hidden, depth, rngs=rngs) if tri else None
        self.a2 = TriangleActivation(hidden, depth, rngs=rngs) if tri else None

    def __call__(self, x):
        act = lambda a, h: jax.nn.relu(h) if a is None else a(h)  # noqa: E731
        return self.l3(act(self.a2, self.l2(act(self.a1, self.l1(x)))))


def head_macs(in_features: int, hidden: int, classes: int, activation: str, depth: int) -> int:
    """Multiply-accumulates per example: the three linear layers plus, for triangle heads, 2H subnets of
    ``4 + 16 (d - 1) + 4`` MACs each."""
    base = in_features * hidden + hidden * hidden + hidden * classes
    return base + (2 * hidden * (8 + 16 * (depth - 1)) if activation == "triangle" else 0)


def vgg16_head_overhead(depth: int = 5) -> float:
    """Relative extra MACs of replacing both ReLUs of VGG-16's classifier (25088-4096-4096-1000) by triangle subnets."""
    return head_macs(25088, 4096, 1000, "triangle", depth) / head_macs(25088, 4096, 1000, "relu", depth) - 1


def train_head(activation: str, lr: float, cfg: Config, data) -> dict:
    """``cfg.seeds`` replicas of one head through the replica trainer (minibatches, remainder dropped)."""
    xtr, ytr, xte, yte = data
    classes = int(max(ytr.max(), yte.max()) + 1)
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.seeds)
    make = lambda k: Head(xtr.shape[1], cfg.hidden, classes, activation=activation, depth=cfg.depth, rngs=nnx.Rngs(k))  # noqa: E731
    rules = Rules(monitor="acc", mode="max")  # no early stopping: the test accuracy is recorded, not acted on
    loop = LoopConfig(cfg.epochs, "drop", cfg.batch_size, monitor_split="test", rules=rules)
    shuffle = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)  # per-replica shuffling keys
    loss, metrics = on_batch(xent), on_batch({"acc": accuracy})  # built once: the second run reuses the compilation

    def train() -> Any:
        data = {"train": (xtr, ytr), "test": (xte, yte)}
        return train_replicas(
            make, optax.adam, loss, data, loop, keys=keys, lrs=lr, metrics=metrics, shuffle_keys=shuffle
        ).result

    jax.block_until_ready(train())  # compiles
    t0 = time.perf_counter()
    res = jax.block_until_ready(train())
    curve = np.asarray(res.history["monitor"])  # (seeds, epochs) test accuracy
    return {
        "activation": activation, "lr": lr, "test_acc": curve, "final_acc_mean": float(curve[:, -1].mean()),
        "final_acc_std": float(curve[:, -1].std()), "best_acc_mean": float(curve.max(1).mean()),
        "train_loss": np.asarray(res.history["train_loss"]), "epoch_time_s": (time.perf_counter() - t0) / cfg.epochs,
        "macs_per_example": head_macs(xtr.shape[1], cfg.hidden, classes, activation, cfg.depth),
    }  # fmt: skip


def run(cfg: Config) -> dict:
    data = load_data(cfg)  # a DataError becomes one line and exit status 2 (cli.main)
    lrs, t0 = learning_rates(cfg.lr), time.time()
    specs = {a if len(lrs) == 1 else f"{a}@{lr:g}": (a, lr) for a in cfg.methods for lr in lrs}
    res = report.run_jobs(cfg, list(specs), lambda j: train_head(*specs[j], cfg, data), desc="triangular_head")
    out = {"config": dataclasses.asdict(cfg), "results": res, "wall_s": time.time() - t0}
    out["vgg16_head_mac_overhead"] = vgg16_head_overhead(5)
    relu, tri = (next((r for r in res.values() if r["activation"] == a), None) for a in ACTIVATIONS)
    if relu and tri:
        out["mac_overhead"] = tri["macs_per_example"] / relu["macs_per_example"] - 1
        out["time_overhead"] = tri["epoch_time_s"] / relu["epoch_time_s"] - 1
    report.write_results(cfg.workdir, out)
    plot_curves(res, cfg)
    report.print_tables(tables(out))
    return out


def plot_curves(res: dict, cfg: Config) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, r in res.items():
        c = np.asarray(r["test_acc"])
        epochs = np.arange(1, c.shape[1] + 1)
        ax.plot(epochs, c.mean(0), label=f"{name} (final {c.mean(0)[-1]:.3f})")
        ax.fill_between(epochs, c.min(0), c.max(0), alpha=0.2)
    ax.set(xlabel="epoch", ylabel="test accuracy", title=f"{cfg.dataset}: ReLU vs triangle-activation head")
    ax.legend(fontsize=8)
    fig.tight_layout()
    report.save_figure(fig, os.path.join(cfg.workdir, "accuracy_curves.png"), dpi=110)


def tables(out: Mapping[str, Any]) -> dict[str, str]:
    """``{"accuracy": ...}``: per head, test accuracy after epochs 1 and 5 and at the end, MACs and time per epoch;
    the caption gives the MAC overhead beside the paper's ~0.5 % for VGG-16."""
    c = out["config"]
    rows = []
    for name, r in out["results"].items():
        acc = np.asarray(r["test_acc"]).mean(0)
        final = f"{r['final_acc_mean']:.3f} ± {r['final_acc_std']:.3f}"
        rows.append([name, f"{acc[0]:.3f}", f"{acc[min(4, len(acc) - 1)]:.3f}", final, r["macs_per_example"],
                     f"{r['epoch_time_s']:.3f}"])  # fmt: skip
    head = ["head", "acc. epoch 1", "acc. epoch 5", "final acc. (mean ± sd)", "MACs / example", "s / epoch (mean)"]
    title = (
        f"## {c['dataset']} head: hidden {c['hidden']}, depth {c['depth']}, {c['epochs']} epochs, {c['seeds']} seeds"
    )
    lines = [title, "", report.markdown_table(head, rows)]
    if "mac_overhead" in out:
        lines.append(
            f"\nOverhead of the triangle head here: {100 * out['mac_overhead']:.1f} % MACs, "
            f"{100 * out['time_overhead']:.0f} % measured time per epoch. "
            f"Same construction on VGG-16's classifier (d=5): {100 * out['vgg16_head_mac_overhead']:.2f} % MACs "
            "(paper: ~0.5 %)."
        )
    return {"accuracy": "\n".join(lines)}


def main(argv=None):
    return cli.main(argv, __name__)


if __name__ == "__main__":
    main()
