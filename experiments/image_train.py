"""Shared image-classification machinery of ``imagenet32_vgg6`` and ``imagenet_resnet18``.

One run = one model / parameterization / learning rate / seed, trained by the
library's host loop (``gmpjax.train.host.train``) with the engine's pure train
step sharded data-parallel over every device of every process
(``gmpjax.train.sharding``: batch split over a 1-D ``"data"`` mesh, state
replicated, XLA inserts the gradient all-reduce), SGD with momentum 0.9 and no
weight decay, and either the paper's step schedule (x0.1 at epochs 30/60/80 of
90, ``get_config``) or the released code's ReduceLROnPlateau on validation top-5
with early stopping (``get_official_config``, ``--protocol official``).

Checkpoints (``gmpjax.train.checkpoint.Checkpointer``, orbax) hold the
``TrainState`` (params, batch statistics, optimizer state, step), the grain data
iterator's state and, as JSON, the loop's early-stopping and plateau state and the
run's identity; ``--resume`` continues from the newest one with the very batch the
interrupted run would have read next and gives the same result as an uninterrupted
run, because every batch is a pure function of its ``(epoch, step)`` position
(``gmpjax.data.images``), whatever ``--workers`` is. Loading and augmentation run in
``--workers`` grain processes (default: the visible cores); the uint8 batches are
converted to float (+ colour noise, - mean) inside the jitted steps. A fresh run
refuses to start in a run directory that already holds checkpoints.

Files: ``<workdir>/<method>_bs<batch>[_lr<lr>][_seed<seed>]/`` per run with
``metrics.jsonl`` (train loss/top-1/top-5 every ``--log-every`` steps, images/s,
validation metrics and learning rate every epoch), ``metrics.json`` (the run's
summary), ``curves.png`` and ``checkpoints/``; ``<workdir>/results.json`` (every run).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import cli
from experiments.common import mean_se
from gmpjax.data.images import DATASETS, ImageLoader, Preprocess, load_source, make_preprocess, visible_cores
from gmpjax.layers import check_parameterization
from gmpjax.models import VGG6, ResNet18
from gmpjax.models.vgg import VGG6_WIDTHS
from gmpjax.train import sharding as shd
from gmpjax.train.checkpoint import Checkpointer
from gmpjax.train.engine import MetricsLogger, init_train_state, make_eval_step, make_train_step
from gmpjax.train.host import RESTORE, HostConfig, sum_batches, train
from gmpjax.train.schedules import PAPER_BOUNDARIES, RELEASED_EARLY_STOP_PATIENCE, RELEASED_PLATEAU, piecewise_epochs

MODELS = ("vgg6", "resnet18")
C = TypeVar("C", bound="ImageConfig")
PAPER_BATCH_SIZES = (256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class ImageConfig(cli.Common):
    """Settings shared by the image experiments; a script subclasses it and sets ``MODEL``/``NAME``/defaults."""

    MODEL: ClassVar[str] = "vgg6"
    NAME: ClassVar[str] = "imagenet32_vgg6"

    methods: tuple[str, ...] = cli.field(("gmp_imn",), "parameterizations, space-separated (one run each)")
    workdir: str = cli.field("results/imagenet32_vgg6", "output folder (one subfolder per run); alias --out")
    dataset: str = cli.field(
        "imagenet_resized/32x32",
        "tfds name (ArrayRecord-prepared) or 'digits' (embedded sklearn digits, runs anywhere)",
    )
    batch_size: int = cli.field(256, "global batch size over all devices (paper: 256, 512, 1024)")
    epochs: int = cli.field(90, "training epochs")
    momentum: float = cli.field(0.9, "SGD momentum")
    weight_decay: float = cli.field(0.0, "L2 weight decay (never on the GmP angles; paper and released code: 0)")
    schedule: str = cli.field(
        "piecewise",
        "piecewise: x0.1 at --boundaries (paper); plateau: x0.1 after 5 epochs without a top-5 gain (released code)",
        choices=("piecewise", "plateau"),
    )
    boundaries: tuple[int, ...] = cli.field(PAPER_BOUNDARIES, "epochs of the piecewise schedule's x0.1 steps")
    stop_patience: int | None = cli.field(None, "early stopping after N epochs without a validation top-5 gain")
    restore: str = cli.field(
        "never", "report the last parameters, or the best ones (always / if early stopping fired)", choices=RESTORE
    )
    init: str = cli.field("uniform", "GmP initialisation", choices=("uniform", "official"))
    image_size: int | None = cli.field(None, "input size in pixels (None: 32 for VGG-6, 224 for ResNet-18)")
    width: float = cli.field(1.0, "channel-width multiplier (1 = paper)")
    crop: str = cli.field("scale", "ImageNet train crop", choices=("scale", "inception"))
    save_every: int = cli.field(1000, "checkpoint every N steps")
    keep: int = cli.field(3, "checkpoints to keep")
    max_steps: int | None = cli.field(None, "stop after this many steps in total")
    log_every: int = cli.field(50, "log train metrics every N steps")
    max_eval_batches: int | None = cli.field(None, "evaluate on the first N batches only")
    tfds_data_dir: str | None = cli.field(None, "tfds data directory")
    workers: int | None = cli.field(
        None, "grain worker processes for loading and augmentation (default: the visible cores; 0: in-process)"
    )
    distributed: bool = cli.field(
        False, "multi-process: jax.distributed.initialize from $GMPJAX_COORDINATOR/_NUM_PROCESSES/_PROCESS_ID"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.MODEL not in MODELS:
            raise ValueError(f"the model must be one of {MODELS} (got {self.MODEL!r}).")
        for name in ("batch_size", "epochs", "save_every", "keep", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive int (got {v!r}).")
        for name in ("max_steps", "max_eval_batches", "image_size", "stop_patience"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive int (got {v!r}).")
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 0):
            raise ValueError(f"--workers must be an int >= 0 (0: load in the training process), got {self.workers!r}.")
        if self.schedule not in ("piecewise", "plateau"):
            raise ValueError(
                f"--schedule must be 'piecewise' (paper) or 'plateau' (released code), got {self.schedule!r}."
            )
        if self.restore not in RESTORE:
            raise ValueError(f"--restore must be one of {RESTORE} (got {self.restore!r}).")
        if not self.width > 0:
            raise ValueError(f"--width must be > 0 (got {self.width!r}).")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0 (got {self.weight_decay!r}).")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1) (got {self.momentum!r}).")
        b = tuple(self.boundaries)
        if any(x < 0 for x in b) or list(b) != sorted(set(b)):
            raise ValueError(f"--boundaries must be strictly increasing non-negative epochs (got {b}).")
        if self.MODEL == "vgg6" and input_size(self) % 8:
            raise ValueError(f"--image-size must be a multiple of 8 for VGG-6 (got {input_size(self)}).")


def input_size(cfg: ImageConfig) -> int:
    """The input size: ``--image-size``, else 32 for VGG-6 and 224 for ResNet-18."""
    return cfg.image_size or (32 if cfg.MODEL == "vgg6" else 224)


def official(cfg: C, *, epochs: int, restore: str) -> C:
    """``cfg`` with the released code's schedule: ReduceLROnPlateau on validation top-5 and early stopping."""
    return dataclasses.replace(
        cfg, schedule="plateau", stop_patience=RELEASED_EARLY_STOP_PATIENCE, restore=restore, epochs=epochs
    )


def quick_overrides(cfg: ImageConfig) -> dict[str, Any]:
    """The smoke-run settings both scripts share (CPU, the embedded digits)."""
    return {
        "dataset": "digits",
        "batch_size": 64,
        "log_every": 5,
        "save_every": 20,
        "workdir": f"results/{cfg.NAME}/quick",
    }


_CONSTRUCTORS: dict[tuple, Any] = {}


def build_model(cfg: ImageConfig, parameterization: str, seed: int, num_classes: int) -> nnx.Module:
    """VGG-6 or ResNet-18 of ``parameterization``; ``cfg.width`` scales every channel count.

    The constructor runs under ``nnx.jit`` (one compiled program instead of many
    small eager initialisations of the GmP angles) and is cached per architecture,
    so later runs in the same process (sweeps, resumes) only pay for the random draws.
    """
    key = (cfg.MODEL, parameterization, cfg.init, cfg.width, num_classes)
    if key not in _CONSTRUCTORS:
        if cfg.MODEL == "vgg6":
            widths = tuple(max(1, round(w * cfg.width)) for w in VGG6_WIDTHS)

            def make(k: jax.Array) -> nnx.Module:
                return VGG6(
                    num_classes, parameterization=parameterization, init=cfg.init, widths=widths, rngs=nnx.Rngs(k)
                )
        else:

            def make(k: jax.Array) -> nnx.Module:
                width = max(1, round(64 * cfg.width))
                return ResNet18(
                    num_classes, parameterization=parameterization, init=cfg.init, width=width, rngs=nnx.Rngs(k)
                )

        _CONSTRUCTORS[key] = nnx.jit(make)
    return _CONSTRUCTORS[key](jax.random.key(seed))


def make_optimizer(
    learning_rate: float | optax.Schedule, momentum: float, weight_decay: float, *, decay_all: bool = False
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

    def sgd(learning_rate: Any, momentum: float, weight_decay: float) -> optax.GradientTransformation:
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


def run_name(cfg: ImageConfig, method: str, lr: float, seed: int) -> str:
    """``<method>_bs<batch>``, plus ``_lr<lr>`` when several rates run and ``_seed<seed>`` when several seeds do."""
    name = f"{method}_bs{cfg.batch_size}"
    if len(cfg.lr) > 1:
        name += f"_lr{lr:g}"
    if cfg.seeds > 1:
        name += f"_seed{seed}"
    return name


_STEPS: dict[tuple, tuple] = {}


def train_one(cfg: ImageConfig, method: str, lr: float, seed: int, run_dir: str) -> dict[str, Any]:
    """Train (or resume) one run in ``run_dir``; returns the summary written to ``run_dir/metrics.json``."""
    p = check_parameterization(method)
    mesh = shd.make_data_mesh()
    shd.check_batch_size(cfg.batch_size, mesh.size, what="--batch-size")
    primary = shd.is_primary()
    info = _dataset_info(cfg.dataset)
    num_classes, size = info["num_classes"], input_size(cfg)

    train_src = load_source(cfg.dataset, info["train"], image_size=size, data_dir=cfg.tfds_data_dir)
    eval_src = load_source(cfg.dataset, info["eval"], image_size=size, data_dir=cfg.tfds_data_dir)
    workers = visible_cores() if cfg.workers is None else cfg.workers
    pre_train = make_preprocess(info["kind"], train=True, crop=cfg.crop, image_size=size)
    pre_eval = make_preprocess(info["kind"], train=False, image_size=size)
    loader_kw = {"global_batch_size": cfg.batch_size, "seed": seed, "workers": workers}
    train_loader = ImageLoader(train_src, train=True, preprocess=pre_train, **loader_kw)
    eval_loader = ImageLoader(
        eval_src, train=False, preprocess=pre_eval, steps_per_epoch=cfg.max_eval_batches, **loader_kw
    )
    spe = train_loader.steps_per_epoch
    total_steps = cfg.epochs * spe if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * spe)

    model = build_model(cfg, p, seed, num_classes)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef = nnx.graphdef(model)
    boundaries = tuple(b for b in cfg.boundaries if b < cfg.epochs)
    # Same architecture + optimizer + mesh in one process -> reuse the compiled steps.
    devices = tuple(d.id for d in mesh.devices.flat)
    step_key = (
        graphdef,
        cfg.schedule,
        lr,
        boundaries,
        spe,
        cfg.momentum,
        cfg.weight_decay,
        devices,
        pre_train,
        pre_eval,
    )
    if step_key not in _STEPS:
        schedule = piecewise_epochs(lr, spe, boundaries) if cfg.schedule == "piecewise" else lr
        tx = make_optimizer(schedule, cfg.momentum, cfg.weight_decay)
        # the uint8 batches become float32 (+ lighting, - mean) inside the jitted steps, on the device
        _STEPS[step_key] = (
            tx,
            shd.shard_train_step(
                make_train_step(graphdef, tx, functools.partial(loss_fn, preprocess=pre_train)), mesh, donate_state=True
            ),
            shd.shard_eval_step(make_eval_step(graphdef, functools.partial(eval_sums, preprocess=pre_eval)), mesh),
        )
    tx, train_step, eval_step = _STEPS[step_key]
    _, state = init_train_state(model, tx)
    del model
    state = shd.replicate(state, mesh)

    keep = ("image", "label", "alpha") if pre_train.lighting else ("image", "label")
    # grain iterator (workers start at the first batch, or when the checkpoint restores its state);
    # it keeps 2 sharded batches ahead on the devices and its state counts only the batches consumed
    train_iter = train_loader.iterate(put=lambda b: shd.shard_batch({k: b[k] for k in keep}, mesh), prefetch=2)
    eval_iter = None  # one endless iterator over the (identical) evaluation epochs: its workers start once

    def evaluate(st: Any) -> dict:
        nonlocal eval_iter
        if eval_iter is None:
            eval_iter = eval_loader.iterate(
                put=lambda b: shd.shard_batch({k: b[k] for k in ("image", "label", "mask")}, mesh)
            )
        sums = sum_batches(eval_step, st, eval_iter, eval_loader.steps_per_epoch)
        n = max(float(sums["count"]), 1.0)
        ev = {
            "val_loss": float(sums["loss"]) / n,
            "val_top1": float(sums["top1"]) / n,
            "val_top5": float(sums["top5"]) / n,
        }
        if primary:
            step = int(shd.to_host(st.step))
            lr_now = float(shd.to_host(st.opt_state.hyperparams["learning_rate"]))
            print(
                f"  epoch {step / spe:6.2f}  step {step:7d}  val top-1 {100 * ev['val_top1']:6.2f}%  "
                f"top-5 {100 * ev['val_top5']:6.2f}%  loss {ev['val_loss']:.4f}  lr {lr_now:.4g}"
            )
        return ev

    throughput: list[float] = []
    clock: dict[str, Any] = {"t": time.perf_counter(), "step": None, "first": True}
    logger = MetricsLogger(run_dir if primary else None)

    def measure(step: int, st: Any, rec: dict) -> bool:
        """images/s over each ``--log-every`` window (the first one includes compilation)."""
        if clock["step"] is None:
            clock["step"] = step - 1
        if step % cfg.log_every == 0 or step == total_steps:
            jax.block_until_ready(st.step)
            now = time.perf_counter()
            ips = cfg.batch_size * (step - clock["step"]) / max(now - clock["t"], 1e-9)
            if not clock["first"]:
                throughput.append(ips)
            logger.log(step, images_per_s=ips, includes_compile=clock["first"])
            clock.update(t=now, step=step, first=False)
        return False

    def check_position(step: int, extra: dict) -> None:
        want = dict(zip(("epoch", "step"), divmod(step, spe), strict=True))
        if train_iter.position != want:
            raise ValueError(
                f"--resume: the data iterator of {run_dir} is at {train_iter.position} but the train state at step "
                f"{step} = {want}; the checkpoint is inconsistent: resume from an older step or use a fresh --workdir."
            )

    host_cfg = HostConfig(
        num_steps=total_steps,
        eval_every=spe,
        log_every=cfg.log_every,
        steps_per_epoch=spe,
        monitor="val_top5",
        mode="max",
        patience=cfg.stop_patience,
        restore=cfg.restore,  # type: ignore[arg-type]
        plateau=RELEASED_PLATEAU if cfg.schedule == "plateau" else None,
    )
    identity = {"model": cfg.MODEL, "dataset": cfg.dataset, "parameterization": p, "batch_size": cfg.batch_size}
    identity |= {"seed": seed, "schedule": cfg.schedule, "lr": lr, "width": cfg.width}
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("methods", "lr", "seeds")}
    settings |= {"experiment": cfg.NAME, "model": cfg.MODEL, "image_size": size, "workdir": run_dir} | identity
    os.makedirs(run_dir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), max_to_keep=cfg.keep, save_every=cfg.save_every)
    start = (ckpt.latest_step() or 0) if cfg.resume else 0
    t0 = time.perf_counter()
    if primary:
        print(
            f"{cfg.NAME}: {cfg.MODEL} {p} on {cfg.dataset} ({len(train_src)} train / "
            f"{len(eval_src)} eval), {n_params:,} params, {mesh.size} device(s) x {jax.process_count()} "
            f"process(es), batch {cfg.batch_size}, {spe} steps/epoch, lr {lr} ({cfg.schedule}), "
            f"start step {start}/{total_steps}"
        )
    try:
        result = train(
            train_step,
            evaluate,
            state,
            train_iter,
            host_cfg,
            checkpointer=ckpt,
            resume=cfg.resume,
            data_iterator=train_iter,
            config_json=identity,
            extra={"settings": settings},
            on_resume=check_position,
            logger=logger,
            callbacks=[measure],
            progress=cfg.progress and primary,
            desc=f"{p} ({total_steps} steps)",
        )
    finally:
        train_iter.close()
        ckpt.close()
    wall = time.perf_counter() - t0
    history = [r for r in logger.read() if "val_top1" in r] if primary else result.evals
    if not history:  # a resumed run that had finished, without its log
        history = [{"step": result.step, **evaluate(result.state)}]
    if eval_iter is not None:
        eval_iter.close()
    restored = [h for h in history if h["step"] == result.best_step and result.state is not result.last]
    final = restored[0] if restored else history[-1]
    summary = {
        "config": settings,
        "num_params": n_params,
        "devices": mesh.size,
        "device_kind": jax.devices()[0].device_kind,
        "processes": jax.process_count(),
        "steps": result.step,
        "epochs_done": result.step / spe,
        "wall_s": wall,
        "early_stopped": result.stopped,
        "restored_best": bool(restored),
        "val_top1": final["val_top1"],
        "val_top5": final["val_top5"],
        "val_loss": final["val_loss"],
        "best_val_top5": max(h["val_top5"] for h in history),
        "images_per_s_median": statistics.median(throughput) if throughput else None,
        "chance_top1": 1.0 / num_classes,
        "history": history,
    }
    if primary:
        cli.write_json(os.path.join(run_dir, "metrics.json"), summary)
        plot_curves(logger.read(), os.path.join(run_dir, "curves.png"), title=f"{cfg.MODEL} {p}")
    return summary


def plot_curves(records: Sequence[Mapping[str, Any]], png: str, title: str = "") -> None:
    """Train loss per logged step and validation top-1/top-5 per epoch (records of ``metrics.jsonl``)."""
    import matplotlib.pyplot as plt

    tr = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    ev = [(r["epoch"], r["val_top1"], r["val_top5"]) for r in records if "val_top1" in r]
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
    cli.save_figure(fig, png, dpi=100)


def _ours(values: Sequence[float]) -> str:
    m, se = mean_se([100 * v for v in values])
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {se:.2f}"


def paper_table(
    paper: Mapping[str, Mapping[str, tuple[float, float]]], runs: Sequence[dict], columns: Sequence[str]
) -> str:
    """Markdown table: the paper's top-1/top-5 (%) per batch size (``paper[method][batch] = (top1, top5)``),
    with ours (mean ± s.e. over seeds) in the last two columns of each method's row (one row per learning rate)."""
    several_lrs = len({r["config"]["lr"] for r in runs}) > 1
    groups: dict[str, tuple[str, list[dict]]] = {}
    for r in runs:
        method = r["config"]["parameterization"]
        label = method + (f" (lr {r['config']['lr']:g})" if several_lrs else "")
        groups.setdefault(label, (method, []))[1].append(r)
    order: list[tuple[str, str]] = []
    for m in paper:
        order += [(lab, m) for lab, (mm, _) in groups.items() if mm == m] or [(m, m)]
    order += [(lab, mm) for lab, (mm, _) in groups.items() if mm not in paper]
    head = (
        "| method | "
        + " | ".join(f"paper top-1 @{c}" for c in columns)
        + " | "
        + " | ".join(f"paper top-5 @{c}" for c in columns)
        + " | ours top-1 | ours top-5 |"
    )
    lines = [head, "|" + "---|" * (3 + 2 * len(columns))]
    for label, method in order:
        mine = groups.get(label, (method, []))[1]
        pr = paper.get(method, {})
        cells = [f"{pr[c][0]:.2f}" if c in pr else "-" for c in columns]
        cells += [f"{pr[c][1]:.2f}" if c in pr else "-" for c in columns]
        o1 = _ours([x["val_top1"] for x in mine]) if mine else ""
        o5 = _ours([x["val_top5"] for x in mine]) if mine else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {o1} | {o5} |")
    c = runs[0]["config"]
    lines.append(
        f"\nours: {c['dataset']}, batch {c['batch_size']}, {runs[0]['epochs_done']:.1f} epochs, "
        f"width x{c['width']}, image {c['image_size']}px (paper: ImageNet, 90 epochs, full width)"
    )
    return "\n".join(lines)


def run_experiment(
    cfg: ImageConfig, *, paper: Mapping[str, Mapping[str, tuple[float, float]]], columns: Sequence[str]
) -> dict:
    """Train every method x learning rate x seed, print the paper's table beside ours, write ``results.json``."""
    if cfg.distributed:
        shd.initialize_distributed()
    runs = {}
    for method in cfg.methods:
        for lr in cli.lr_values(cfg, method):
            for seed in range(cfg.seed, cfg.seed + cfg.seeds):
                name = run_name(cfg, check_parameterization(method), lr, seed)
                runs[name] = train_one(cfg, method, lr, seed, os.path.join(cfg.workdir, name))
    out = {"runs": runs}
    if shd.is_primary():
        cli.write_json(os.path.join(cfg.workdir, "results.json"), {k: {**v, "history": None} for k, v in runs.items()})
        print()
        print(paper_table(paper, list(runs.values()), columns))
        for r in runs.values():
            print(
                f"\nours: {r['config']['dataset']}, top-1 {100 * r['val_top1']:.2f}% "
                f"(chance {100 * r['chance_top1']:.1f}%), "
                f"top-5 {100 * r['val_top5']:.2f}%, {r['images_per_s_median'] or float('nan'):.0f} images/s on "
                f"{r['devices']} x {r['device_kind']}, {r['wall_s']:.0f} s; files in {r['config']['workdir']}"
            )
    return out
