"""Shared image-classification training logic of ``imagenet32_vgg6`` and ``imagenet_resnet18``.

One run = one model / parameterization / batch size, trained with the engine's
pure train step (``gmpjax.train.engine.make_train_step``) sharded data-parallel
over every device of every process (``gmpjax.train.sharding``: batch split over
a 1-D ``"data"`` mesh, state replicated, XLA inserts the gradient all-reduce),
SGD with momentum 0.9 and no weight decay, and either the paper's step schedule
(x0.1 at epochs 30/60/80 of 90, ``--schedule piecewise``) or the released
code's ReduceLROnPlateau on validation top-5 with early stopping
(``--schedule plateau``).

Checkpoints (``gmpjax.train.checkpoint.Checkpointer``, orbax) hold the whole
``TrainState`` (params, batch statistics, optimizer state, step) plus, in
``extra``, the plateau state, the seed and the config, plus the grain data
iterator's state (item ``data``); ``--resume`` continues from the newest one with
the very batch the interrupted run would have read next and gives the same result
as an uninterrupted run, because every batch is a pure function of its
``(epoch, step)`` position (``gmpjax.data.images``), whatever ``--workers`` is.
Loading and augmentation run in ``--workers`` grain processes (default: the
visible cores); the uint8 batches are converted to float (+ colour noise, - mean)
inside the jitted steps. A fresh run refuses to
start in a work directory that already holds checkpoints.

Files in ``--workdir``: ``metrics.jsonl`` (train loss/top-1/top-5 every
``--log-every`` steps, images/s, validation metrics and learning rate every
epoch), ``metrics.json`` (summary with the paper's numbers), ``curves.png``,
``checkpoints/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gmpjax.data.images import DATASETS, ImageLoader, Preprocess, load_source, make_preprocess, visible_cores
from gmpjax.layers import check_parameterization
from gmpjax.models import VGG6, ResNet18
from gmpjax.models.vgg import VGG6_WIDTHS
from gmpjax.train import sharding as shd
from gmpjax.train.checkpoint import Checkpointer, abstract_state
from gmpjax.train.engine import MetricsLogger, fit, init_train_state, make_eval_step, make_train_step
from gmpjax.train.plateau import plateau_init, set_learning_rate
from gmpjax.train.schedules import (
    PAPER_BOUNDARIES,
    RELEASED_EARLY_STOP_PATIENCE,
    piecewise_epochs,
    plateau_from_json,
    plateau_to_json,
    released_plateau_update,
)

MODELS = ("vgg6", "resnet18")
PAPER_BATCH_SIZES = (256, 512, 1024)


@dataclasses.dataclass
class ImageConfig:
    """One training run. ``lr=None`` takes the paper's value (``default_lr``); ``image_size=None`` the model's."""

    experiment: str = "imagenet32_vgg6"
    model: str = "vgg6"
    dataset: str = "imagenet_resized/32x32"
    parameterization: str = "gmp_imn"
    batch_size: int = 256
    epochs: int = 90
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "piecewise"
    boundaries: tuple[int, ...] = PAPER_BOUNDARIES
    init: str = "uniform"
    image_size: int | None = None
    width: float = 1.0
    crop: str = "scale"
    seed: int = 0
    workdir: str | None = None
    resume: bool = False
    save_every: int = 1000
    keep: int = 3
    max_steps: int | None = None
    log_every: int = 50
    max_eval_batches: int | None = None
    tfds_data_dir: str | None = None
    workers: int | None = None
    distributed: bool = False
    progress: bool = True
    quick: bool = False


def default_lr(model: str, parameterization: str) -> float:
    """Paper's initial learning rates: VGG-6 0.1 for GmP(+IMN) and 0.01 otherwise; ResNet-18 0.1 for all."""
    if model == "resnet18":
        return 0.1
    return 0.1 if parameterization.startswith("gmp") else 0.01


def validate(cfg: ImageConfig) -> ImageConfig:
    """Check and normalise ``cfg``; raise ValueError naming the bad option."""
    if cfg.model not in MODELS:
        raise ValueError(f"--model must be one of {MODELS} (got {cfg.model!r}).")
    p = check_parameterization(cfg.parameterization)
    for name in ("batch_size", "epochs", "save_every", "keep", "log_every"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive int (got {v!r}).")
    for name in ("max_steps", "max_eval_batches", "image_size"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive int (got {v!r}).")
    if cfg.workers is not None and (
        not isinstance(cfg.workers, int) or isinstance(cfg.workers, bool) or cfg.workers < 0
    ):
        raise ValueError(f"--workers must be an int >= 0 (0: load in the training process), got {cfg.workers!r}.")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ValueError(f"--lr must be > 0 (got {cfg.lr!r}).")
    if cfg.schedule not in ("piecewise", "plateau"):
        raise ValueError(f"--schedule must be 'piecewise' (paper) or 'plateau' (released code), got {cfg.schedule!r}.")
    if not cfg.width > 0:
        raise ValueError(f"--width must be > 0 (got {cfg.width!r}).")
    if cfg.weight_decay < 0:
        raise ValueError(f"--weight-decay must be >= 0 (got {cfg.weight_decay!r}).")
    image_size = cfg.image_size or (32 if cfg.model == "vgg6" else 224)
    if cfg.model == "vgg6" and image_size % 8:
        raise ValueError(f"--image-size must be a multiple of 8 for VGG-6 (got {image_size}).")
    workdir = cfg.workdir or os.path.join("results", cfg.experiment, f"{p}_bs{cfg.batch_size}")
    return dataclasses.replace(
        cfg,
        parameterization=p,
        image_size=image_size,
        workdir=workdir,
        lr=cfg.lr if cfg.lr is not None else default_lr(cfg.model, p),
        boundaries=tuple(int(b) for b in cfg.boundaries),
    )


_CONSTRUCTORS: dict[tuple, Any] = {}


def build_model(cfg: ImageConfig, num_classes: int) -> nnx.Module:
    """VGG-6 or ResNet-18 of ``cfg.parameterization``; ``cfg.width`` scales every channel count.

    The constructor runs under ``nnx.jit`` (one compiled program instead of many
    small eager initialisations of the GmP angles) and is cached per architecture,
    so later runs in the same process (sweeps, resumes) only pay for the random draws.
    """
    key = (cfg.model, cfg.parameterization, cfg.init, cfg.width, num_classes)
    if key not in _CONSTRUCTORS:
        if cfg.model == "vgg6":
            widths = tuple(max(1, round(w * cfg.width)) for w in VGG6_WIDTHS)

            def make(k):
                return VGG6(
                    num_classes, parameterization=cfg.parameterization, init=cfg.init, widths=widths, rngs=nnx.Rngs(k)
                )
        else:

            def make(k):
                return ResNet18(
                    num_classes,
                    parameterization=cfg.parameterization,
                    init=cfg.init,
                    width=max(1, round(64 * cfg.width)),
                    rngs=nnx.Rngs(k),
                )

        _CONSTRUCTORS[key] = nnx.jit(make)
    return _CONSTRUCTORS[key](jax.random.key(cfg.seed))


def make_optimizer(
    learning_rate, momentum: float, weight_decay: float, *, decay_all: bool = False
) -> optax.GradientTransformation:
    """SGD with heavy-ball momentum; ``weight_decay > 0`` adds ``weight_decay * params`` to the gradient (L2).

    The decay goes through ``gmpjax.train.optim.weight_decay_mask``: standard kernels only,
    never the GmP angles theta (decaying an angle turns the unit towards e_1; it is not a
    norm penalty), radius, offsets, biases or norm scales. ``decay_all=True`` decays every
    parameter (plain L2, the unsafe behaviour of an unmasked ``add_decayed_weights``). The
    paper's and the released code's setting is ``weight_decay=0`` (no decay at all).

    Built with ``optax.inject_hyperparams`` so the learning rate lives in the optimizer state
    (``opt_state.hyperparams["learning_rate"]``), where the plateau schedule can change it.
    """
    from gmpjax.train.optim import weight_decay_mask

    def sgd(learning_rate, momentum, weight_decay):
        mask = None if decay_all else weight_decay_mask
        parts = [optax.add_decayed_weights(weight_decay, mask=mask)] if weight_decay else []
        return optax.chain(*parts, optax.sgd(learning_rate, momentum=momentum))

    return optax.inject_hyperparams(sgd, static_args=("weight_decay",))(
        learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay
    )


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """``1.0`` where ``labels`` is among the ``k`` largest ``logits`` (per example), shape ``(batch,)``."""
    k = min(k, logits.shape[-1])
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def _images(batch: dict, preprocess: Preprocess | None) -> jax.Array:
    """float32 model input: ``preprocess.finish`` of the uint8 batch on the device (as is when None)."""
    return batch["image"] if preprocess is None else preprocess.finish(batch, xp=jnp)


def loss_fn(model: nnx.Module, batch: dict, preprocess: Preprocess | None = None) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy of integer labels; top-1/top-5 of the batch as metrics."""
    logits = model(_images(batch, preprocess))
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"top1": topk_correct(logits, labels, 1).mean(), "top5": topk_correct(logits, labels, 5).mean()}


def eval_sums(model: nnx.Module, batch: dict, preprocess: Preprocess | None = None) -> dict:
    """Masked sums (loss, top-1 and top-5 hits, count) of one evaluation batch."""
    logits = model(_images(batch, preprocess))
    labels, mask = batch["label"], batch["mask"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "loss": jnp.sum(ce * mask),
        "top1": jnp.sum(topk_correct(logits, labels, 1) * mask),
        "top5": jnp.sum(topk_correct(logits, labels, 5) * mask),
        "count": jnp.sum(mask),
    }


def _dataset_info(dataset: str) -> dict:
    if dataset in DATASETS:
        return DATASETS[dataset]
    kind = "imagenet32" if "32x32" in dataset else "imagenet"
    return {"kind": kind, "num_classes": 1000, "train": "train", "eval": "validation"}


def _trim_metrics(path: str, last_step: int) -> None:
    """Drop records logged after ``last_step`` (a resumed run logs them again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= last_step]
    with open(path, "w") as f:
        f.writelines(keep)


_STEPS: dict[tuple, tuple] = {}


def run(cfg: ImageConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the summary written to ``metrics.json``."""
    cfg = validate(cfg)
    if cfg.distributed:
        shd.initialize_distributed()
    mesh = shd.make_data_mesh()
    shd.check_batch_size(cfg.batch_size, mesh.size, what="--batch-size")
    primary = shd.is_primary()
    info = _dataset_info(cfg.dataset)
    num_classes = info["num_classes"]

    train_src = load_source(cfg.dataset, info["train"], image_size=cfg.image_size, data_dir=cfg.tfds_data_dir)
    eval_src = load_source(cfg.dataset, info["eval"], image_size=cfg.image_size, data_dir=cfg.tfds_data_dir)
    kw = {"image_size": cfg.image_size}
    workers = visible_cores() if cfg.workers is None else cfg.workers
    pre_train = make_preprocess(info["kind"], train=True, crop=cfg.crop, **kw)
    pre_eval = make_preprocess(info["kind"], train=False, **kw)
    train_loader = ImageLoader(
        train_src, global_batch_size=cfg.batch_size, train=True, seed=cfg.seed, preprocess=pre_train, workers=workers
    )
    eval_loader = ImageLoader(
        eval_src,
        global_batch_size=cfg.batch_size,
        train=False,
        seed=cfg.seed,
        preprocess=pre_eval,
        workers=workers,
        steps_per_epoch=cfg.max_eval_batches,
    )
    spe = train_loader.steps_per_epoch
    total_steps = cfg.epochs * spe if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * spe)

    model = build_model(cfg, num_classes)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef = nnx.graphdef(model)
    boundaries = tuple(b for b in cfg.boundaries if b < cfg.epochs)
    # Same architecture + optimizer + mesh in one process -> reuse the compiled steps.
    step_key = (
        graphdef,
        cfg.schedule,
        cfg.lr,
        boundaries,
        spe,
        cfg.momentum,
        cfg.weight_decay,
        tuple(d.id for d in mesh.devices.flat),
        pre_train,
        pre_eval,
    )
    if step_key not in _STEPS:
        lr = piecewise_epochs(cfg.lr, spe, boundaries) if cfg.schedule == "piecewise" else cfg.lr
        tx = make_optimizer(lr, cfg.momentum, cfg.weight_decay)
        # the uint8 batches become float32 (+ lighting, - mean) inside the jitted steps, on the device
        train_loss = functools.partial(loss_fn, preprocess=pre_train)
        eval_fn = functools.partial(eval_sums, preprocess=pre_eval)
        _STEPS[step_key] = (
            tx,
            shd.shard_train_step(make_train_step(graphdef, tx, train_loss), mesh, donate_state=True),
            shd.shard_eval_step(make_eval_step(graphdef, eval_fn), mesh),
        )
    tx, train_step, eval_step = _STEPS[step_key]
    _, state = init_train_state(model, tx)
    del model
    state = shd.replicate(state, mesh)

    os.makedirs(cfg.workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(cfg.workdir, "checkpoints"), max_to_keep=cfg.keep, save_every=cfg.save_every)
    plateau, stop_wait, best_top5 = plateau_init(), 0, -math.inf
    metrics_path = os.path.join(cfg.workdir, "metrics.jsonl")
    if ckpt.latest_step() is not None and not cfg.resume:
        raise ValueError(
            f"{ckpt.directory} already holds checkpoints (latest step {ckpt.latest_step()}); pass --resume to "
            "continue that run, or choose another --workdir (nothing is overwritten)."
        )

    def put(batch):
        keep = ("image", "label", "alpha") if pre_train.lighting else ("image", "label")
        return shd.shard_batch({k: batch[k] for k in keep}, mesh)

    # grain iterator (workers start at the first batch, or when the checkpoint restores its state);
    # it keeps 2 sharded batches ahead on the devices and its state counts only the batches consumed
    train_iter = train_loader.iterate(put=put, prefetch=2)
    if cfg.resume and ckpt.latest_step() is not None:
        try:
            state, extra = ckpt.restore_latest(
                abstract_state(state, shd.replicated_sharding(mesh)), data_iterator=train_iter
            )
        except Exception:
            train_iter.close()
            raise
        saved = extra.get("config", {})
        for key in ("model", "dataset", "parameterization", "batch_size", "seed", "schedule", "lr", "width"):
            if key in saved and saved[key] != getattr(cfg, key):
                train_iter.close()
                raise ValueError(
                    f"--resume: the checkpoint in {ckpt.directory} was written with {key}={saved[key]!r} but this "
                    f"run has {key}={getattr(cfg, key)!r}; use the same settings or another --workdir."
                )
        plateau = plateau_from_json(extra["plateau"]) if "plateau" in extra else plateau
        stop_wait = extra.get("stop_wait", 0)
        best_top5 = -math.inf if extra.get("best_top5") is None else extra["best_top5"]
        if primary:
            _trim_metrics(metrics_path, int(jax.device_get(state.step)))
    elif primary and os.path.exists(metrics_path):
        os.remove(metrics_path)
    logger = MetricsLogger(cfg.workdir if primary else None)

    start = int(jax.device_get(state.step))
    epoch0, step0 = divmod(start, spe)
    if train_iter.position != {"epoch": epoch0, "step": step0}:
        train_iter.close()
        raise ValueError(
            f"--resume: the data iterator of {ckpt.directory} is at {train_iter.position} but the train "
            f"state at step {start} = {{'epoch': {epoch0}, 'step': {step0}}}; the checkpoint is "
            "inconsistent, resume from an older step or start a fresh --workdir."
        )
    batches = train_iter

    def extra_json(step: int) -> dict:
        return {
            "data_position": dict(zip(("epoch", "step"), divmod(step, spe), strict=True)),
            "seed": cfg.seed,
            "plateau": plateau_to_json(plateau),
            "stop_wait": stop_wait,
            "best_top5": best_top5 if math.isfinite(best_top5) else None,
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "boundaries"},
        }

    throughput: list[float] = []
    clock = {"t": time.perf_counter(), "step": start, "first": True}

    def on_step(step: int, st, rec) -> bool:
        if step % cfg.log_every == 0 or step == total_steps:
            jax.block_until_ready(st.step)
            now = time.perf_counter()
            ips = cfg.batch_size * (step - clock["step"]) / max(now - clock["t"], 1e-9)
            if not clock["first"]:  # the first interval includes compilation
                throughput.append(ips)
            logger.log(step, images_per_s=ips, includes_compile=clock["first"])
            clock.update(t=now, step=step, first=False)
        if step % spe:  # epoch ends are saved after evaluation (with the updated plateau state)
            ckpt.save(step, st, extra_json(step), data_iterator=train_iter)
        return False

    eval_iter = None  # one endless iterator over the (identical) evaluation epochs: its workers start once

    def evaluate(st) -> dict:
        nonlocal eval_iter
        if eval_iter is None:
            eval_iter = eval_loader.iterate(
                put=lambda b: shd.shard_batch({k: b[k] for k in ("image", "label", "mask")}, mesh)
            )
        sums = None
        for _ in range(eval_loader.steps_per_epoch):
            out = shd.to_host(eval_step(st, next(eval_iter)))
            sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
        n = max(float(sums["count"]), 1.0)
        return {
            "val_loss": float(sums["loss"]) / n,
            "val_top1": float(sums["top1"]) / n,
            "val_top5": float(sums["top5"]) / n,
        }

    t0 = time.perf_counter()
    history: list[dict] = []
    if primary:
        print(
            f"{cfg.experiment}: {cfg.model} {cfg.parameterization} on {cfg.dataset} ({len(train_src)} train / "
            f"{len(eval_src)} eval), {n_params:,} params, {mesh.size} device(s) x {jax.process_count()} "
            f"process(es), batch {cfg.batch_size}, {spe} steps/epoch, lr {cfg.lr} ({cfg.schedule}), "
            f"start step {start}/{total_steps}"
        )
    stopped = False
    for epoch in range(epoch0, cfg.epochs):
        end = min((epoch + 1) * spe, total_steps)
        if int(jax.device_get(state.step)) < end:
            state, _ = fit(
                train_step,
                state,
                batches,
                num_steps=end,
                log_every=cfg.log_every,
                logger=logger,
                callbacks=[on_step],
                progress=cfg.progress and primary,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
            )
        step = int(jax.device_get(state.step))
        if step % spe == 0 or step >= total_steps:
            ev = evaluate(state)
            lr_now = float(shd.to_host(state.opt_state.hyperparams["learning_rate"]))
            if cfg.schedule == "plateau":
                plateau, _ = released_plateau_update(plateau, ev["val_top5"])
                new_lr = cfg.lr * float(plateau.scale)
                state = state.replace(opt_state=shd.replicate(set_learning_rate(state.opt_state, new_lr), mesh))
            improved = ev["val_top5"] > best_top5 + 1e-4
            best_top5 = max(best_top5, ev["val_top5"])
            stop_wait = 0 if improved else stop_wait + 1
            rec = logger.log(step, epoch=step / spe, lr=lr_now, **ev)
            history.append(rec)
            if primary:
                print(
                    f"  epoch {step / spe:6.2f}  step {step:7d}  val top-1 {100 * ev['val_top1']:6.2f}%  "
                    f"top-5 {100 * ev['val_top5']:6.2f}%  loss {ev['val_loss']:.4f}  lr {lr_now:.4g}"
                )
            ckpt.save(step, state, extra_json(step), force=True, data_iterator=train_iter)
            if cfg.schedule == "plateau" and stop_wait >= RELEASED_EARLY_STOP_PATIENCE:
                stopped = True
        if stopped or step >= total_steps:
            break
    train_iter.close()
    step = int(jax.device_get(state.step))
    ckpt.save(step, state, extra_json(step), force=True, data_iterator=train_iter)
    ckpt.close()
    wall = time.perf_counter() - t0
    if not history:  # resumed a finished run
        ev = evaluate(state)
        history.append({"step": step, **ev})
    if eval_iter is not None:
        eval_iter.close()
    last = history[-1]
    summary = {
        "config": dataclasses.asdict(cfg),
        "num_params": n_params,
        "devices": mesh.size,
        "device_kind": jax.devices()[0].device_kind,
        "processes": jax.process_count(),
        "steps": step,
        "epochs_done": step / spe,
        "wall_s": wall,
        "early_stopped": stopped,
        "val_top1": last["val_top1"],
        "val_top5": last["val_top5"],
        "val_loss": last["val_loss"],
        "best_val_top5": max(h["val_top5"] for h in history),
        "images_per_s_median": statistics.median(throughput) if throughput else None,
        "chance_top1": 1.0 / num_classes,
        "history": history,
    }
    if primary:
        with open(os.path.join(cfg.workdir, "metrics.json"), "w") as f:
            json.dump(summary, f, indent=1)
        plot_curves(metrics_path, os.path.join(cfg.workdir, "curves.png"), title=f"{cfg.model} {cfg.parameterization}")
    return summary


def final_params(workdir: str) -> Any:
    """Host copy of the parameters of the newest checkpoint in ``workdir`` (for tests and analysis).

    Works for checkpoints written by any number of devices or processes: the
    arrays are restored onto this process's first device.
    """
    import orbax.checkpoint as ocp

    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    step = max(int(d) for d in os.listdir(directory) if d.isdigit())
    path = os.path.join(directory, str(step), "state")
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
    state = ckptr.restore(path, target)
    return jax.tree.map(np.asarray, state["params"])


def plot_curves(metrics_path: str, png: str, title: str = "") -> None:
    """Train loss per logged step and validation top-1/top-5 per epoch from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in open(metrics_path)] if os.path.exists(metrics_path) else []
    tr = [(r["step"], r["train_loss"]) for r in recs if "train_loss" in r]
    ev = [(r["epoch"], r["val_top1"], r["val_top5"]) for r in recs if "val_top1" in r]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    if tr:
        ax[0].plot(*zip(*tr, strict=True))
    ax[0].set(xlabel="step", ylabel="train loss", title=title)
    if ev:
        e, t1, t5 = zip(*ev, strict=True)
        ax[1].plot(e, [100 * v for v in t1], "o-", label="top-1")
        ax[1].plot(e, [100 * v for v in t5], "s-", label="top-5")
        ax[1].legend()
    ax[1].set(xlabel="epoch", ylabel="validation accuracy (%)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser, defaults: ImageConfig) -> None:
    """The CLI options shared by the image experiments (defaults from ``defaults``)."""
    from gmpjax.layers import PARAMETERIZATIONS

    p.add_argument(
        "--dataset",
        default=defaults.dataset,
        help="tfds name (ArrayRecord-prepared) or 'digits' (embedded sklearn digits, runs anywhere)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"global batch size over all devices (paper: {PAPER_BATCH_SIZES})",
    )
    p.add_argument("--parameterization", default=defaults.parameterization, help="/".join(PARAMETERIZATIONS))
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (default: the paper's)")
    p.add_argument(
        "--schedule",
        choices=("piecewise", "plateau"),
        default=defaults.schedule,
        help="piecewise: x0.1 at epochs 30/60/80 (paper); plateau: released code",
    )
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--init", choices=("uniform", "official"), default=defaults.init, help="GmP initialisation")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--width", type=float, default=defaults.width, help="channel-width multiplier (1 = paper)")
    p.add_argument("--crop", choices=("scale", "inception"), default=defaults.crop, help="ImageNet train crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workdir",
        "--out",
        dest="workdir",
        default=None,
        help="run directory (default results/<experiment>/<parameterization>_bs<batch>)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --workdir")
    p.add_argument("--save-every", type=int, default=defaults.save_every, help="checkpoint every N steps")
    p.add_argument("--keep", type=int, default=defaults.keep, help="checkpoints to keep")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total")
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--max-eval-batches", type=int, default=None)
    p.add_argument("--tfds-data-dir", default=None)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="grain worker processes for loading and augmentation (default: the visible cores; "
        "0: in the training process)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-process: jax.distributed.initialize from $GMPJAX_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--quick", action="store_true", help="small CPU smoke run on the embedded digits data")


def config_from_args(args: argparse.Namespace, base: ImageConfig, quick: dict | None = None) -> ImageConfig:
    """Merge CLI arguments into ``base``; with ``--quick`` the ``quick`` overrides apply first and
    explicitly given CLI values still win."""
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(ImageConfig)}}
    cfg = base
    if args.quick and quick:
        cfg = dataclasses.replace(cfg, **quick)
    defaults = dataclasses.asdict(base)
    explicit = {
        k: v
        for k, v in given.items()
        if v is not None and (not args.quick or quick is None or k not in quick or v != defaults.get(k))
    }
    return dataclasses.replace(cfg, **explicit)


def paper_table(rows: dict[str, dict], ours: dict[str, Any], columns: Sequence[str]) -> str:
    """Markdown table: the paper's top-1/top-5 (%) per batch size (``rows[method][batch] = (top1, top5)``),
    with our run's numbers in the last two columns of its parameterization's row."""
    cfg = ours["config"]
    head = (
        "| method | "
        + " | ".join(f"paper top-1 @{c}" for c in columns)
        + " | "
        + " | ".join(f"paper top-5 @{c}" for c in columns)
        + " | ours top-1 | ours top-5 |"
    )
    lines = [head, "|" + "---|" * (3 + 2 * len(columns))]
    for m, r in rows.items():
        t1 = [f"{r[c][0]:.2f}" if c in r else "-" for c in columns]
        t5 = [f"{r[c][1]:.2f}" if c in r else "-" for c in columns]
        mine = m == cfg["parameterization"]
        o1 = f"{100 * ours['val_top1']:.2f}" if mine else ""
        o5 = f"{100 * ours['val_top5']:.2f}" if mine else ""
        lines.append(f"| {m} | " + " | ".join(t1 + t5) + f" | {o1} | {o5} |")
    if cfg["parameterization"] not in rows:
        lines.append(
            f"| {cfg['parameterization']} | "
            + " | ".join(["-"] * 2 * len(columns))
            + f" | {100 * ours['val_top1']:.2f} | {100 * ours['val_top5']:.2f} |"
        )
    lines.append(
        f"\nours: {cfg['dataset']}, batch {cfg['batch_size']}, {ours['epochs_done']:.1f} epochs, "
        f"width x{cfg['width']}, image {cfg['image_size']}px (paper: ImageNet, 90 epochs, full width)"
    )
    return "\n".join(lines)


def cli_main(
    argv: Sequence[str] | None,
    *,
    doc: str,
    defaults: ImageConfig,
    quick: dict[str, Any],
    paper: dict[str, dict[str, tuple[float, float]]],
    batch_sizes: Sequence[str],
) -> dict:
    """The CLI shared by the image scripts: parse, train, print the paper's table beside ours."""
    name = defaults.experiment
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=doc.split("\n")[0])
    add_arguments(p, defaults)
    args = p.parse_args(argv)
    cfg = config_from_args(args, defaults, quick)
    if cfg.quick and args.workdir is None:
        cfg = dataclasses.replace(cfg, workdir=f"results/{name}/quick_{cfg.parameterization}")
    out = run(cfg)
    print()
    print(paper_table(paper, out, tuple(batch_sizes)))
    chance = 100 * out["chance_top1"]
    print(
        f"\nours: {out['config']['dataset']}, top-1 {100 * out['val_top1']:.2f}% (chance {chance:.1f}%), "
        f"top-5 {100 * out['val_top5']:.2f}%, {out['images_per_s_median'] or float('nan'):.0f} images/s on "
        f"{out['devices']} x {out['device_kind']}, {out['wall_s']:.0f} s; files in {out['config']['workdir']}"
    )
    return out
