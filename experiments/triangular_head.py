"""Classifier head with learned triangle activations (the VGG-16 head experiment of Milkert et al. 2025 in miniature).

A 2-hidden-layer MLP head ``Linear -> act -> Linear -> act -> Linear`` (``gmpjax.models.TriangleHead``)
is trained with ``act = ReLU`` and with ``act = TriangleActivation(hidden, depth)`` (one learned convex
1-D activation per neuron: a width-4, depth-``d`` triangle subnet in peak
parameterisation; ``docs/triangular.md``), on the standardised flat features of
``gmpjax.data.images.flat_arrays``:

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
from gmpjax.data.images import flat_arrays
from gmpjax.models.triangle_head import HEAD_ACTIVATIONS, TriangleHead, triangle_head_macs
from gmpjax.train.loop import LoopConfig
from gmpjax.train.losses import accuracy, on_batch, xent
from gmpjax.train.replicas import train_replicas
from gmpjax.train.rules import Rules


@dataclasses.dataclass(frozen=True)
class Config(cli.Common):
    method_names: ClassVar[tuple[str, ...] | None] = HEAD_ACTIVATIONS
    lr_cv: ClassVar[bool] = False

    methods: tuple[str, ...] = cli.field(HEAD_ACTIVATIONS, "head activations (relu triangle)")
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
        cli.positive(self, "hidden", "depth", "epochs", "batch_size", "max_train")


def get_config() -> Config:
    """digits, 128-wide head, d = 5, 40 epochs of Adam(1e-3) at batch 64, 3 seeds."""
    return Config()


CONFIGS = {"paper": get_config}


def quick(cfg: Config) -> dict:
    return dict(hidden=32, epochs=3, seeds=2, depth=3, workdir="results/triangular_head_quick")


def vgg16_head_overhead(depth: int = 5) -> float:
    """Relative extra MACs of replacing both ReLUs of VGG-16's classifier (25088-4096-4096-1000) by triangle subnets."""
    vgg = (25088, (4096, 4096), 1000)
    return triangle_head_macs(*vgg, activation="triangle", depth=depth) / triangle_head_macs(*vgg) - 1


def train_head(activation: str, lr: float, cfg: Config, data) -> dict:
    """``cfg.seeds`` replicas of one head through the replica trainer (minibatches, remainder dropped)."""
    xtr, ytr, xte, yte = data
    classes = int(max(ytr.max(), yte.max()) + 1)
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.seeds)
    sizes = (xtr.shape[1], (cfg.hidden, cfg.hidden), classes)
    make = lambda k: TriangleHead(*sizes, activation=activation, depth=cfg.depth, rngs=nnx.Rngs(k))  # noqa: E731
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
        "macs_per_example": triangle_head_macs(*sizes, activation=activation, depth=cfg.depth),
    }  # fmt: skip


def run(cfg: Config) -> dict:
    # a DataError (cifar10 not prepared) becomes one line and exit status 2 (cli.main)
    data = flat_arrays(cfg.dataset, seed=cfg.seed, data_dir=cfg.tfds_data_dir, max_train=cfg.max_train)
    specs, t0 = cfg.runs(), time.time()
    res = report.run_jobs(cfg, list(specs), lambda j: train_head(*specs[j], cfg, data), desc="triangular_head")
    out = {"config": dataclasses.asdict(cfg), "results": res, "wall_s": time.time() - t0}
    out["vgg16_head_mac_overhead"] = vgg16_head_overhead(5)
    relu, tri = (next((r for r in res.values() if r["activation"] == a), None) for a in HEAD_ACTIVATIONS)
    if relu and tri:
        out["mac_overhead"] = tri["macs_per_example"] / relu["macs_per_example"] - 1
        out["time_overhead"] = tri["epoch_time_s"] / relu["epoch_time_s"] - 1
    plot_curves(res, cfg)
    report.write_results(cfg.workdir, out, tables)
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


main = cli.entry(__name__)  # main(argv) runs the script; python -m runs it on sys.argv

if __name__ == "__main__":
    main()
