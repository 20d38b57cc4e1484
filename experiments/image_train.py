"""The image-classification protocol of ``imagenet32_vgg6`` and ``imagenet_resnet18``: config, model, table.

One run = one model / parameterization / learning rate / seed, trained by the library's host trainer
(``gmpjax.train.trainer.HostTrainer``: data-parallel over every device of every process, evaluation every
epoch, orbax checkpoints, ``--resume``) with SGD momentum 0.9 (``gmpjax.train.optim.make_optimizer``) and
the paper's step schedule (``get_config``) or the released code's plateau rule and early stopping
(``--protocol official``), on the grain pipelines of ``gmpjax.data.images.image_loaders``. Files:
``<workdir>/<run>/{metrics.jsonl, metrics.json, curves.png, checkpoints/}`` and ``<workdir>/results.json``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import cli, report
from gmpjax.data.images import dataset_info, image_loaders
from gmpjax.layers import check_parameterization, registry
from gmpjax.layers.registry import learning_rates
from gmpjax.models import VGG6, ResNet18
from gmpjax.models.vgg import VGG6_WIDTHS
from gmpjax.records import write_json
from gmpjax.train import sharding as shd
from gmpjax.train.host import HostConfig
from gmpjax.train.losses import xent_sums, xent_top_k
from gmpjax.train.optim import make_optimizer
from gmpjax.train.rules import Rules
from gmpjax.train.schedules import PAPER_BOUNDARIES, RELEASED_EARLY_STOP_PATIENCE, RELEASED_PLATEAU, piecewise_epochs
from gmpjax.train.trainer import HostTrainer

MODELS = ("vgg6", "resnet18")
SCHEDULES = ("piecewise", "plateau")
IMN_POSITIONS = ("input", "output")
C = TypeVar("C", bound="ImageConfig")


@dataclasses.dataclass(frozen=True)
class ImageConfig(cli.Common):
    """Settings shared by the image experiments; a script subclasses it and sets ``MODEL``/``NAME``/defaults."""

    MODEL: ClassVar[str] = "vgg6"
    NAME: ClassVar[str] = "imagenet32_vgg6"

    methods: tuple[str, ...] = cli.field(("GmP+IMN",), "parameterizations, space-separated (one run each)")
    workdir: str = cli.field("results/imagenet32_vgg6", "output folder (one subfolder per run); alias --out")
    dataset: str = cli.field("imagenet_resized/32x32", "tfds name (ArrayRecord-prepared) or 'digits' (embedded)")
    batch_size: int = cli.field(256, "global batch size over all devices (paper: 256, 512, 1024)")
    epochs: int = cli.field(90, "training epochs")
    momentum: float = cli.field(0.9, "SGD momentum")
    weight_decay: float = cli.field(0.0, "L2 weight decay (never on the GmP angles; paper and released code: 0)")
    schedule: str = cli.field("piecewise", "x0.1 at --boundaries (paper) or on a top-5 plateau", choices=SCHEDULES)
    boundaries: tuple[int, ...] = cli.field(PAPER_BOUNDARIES, "epochs of the piecewise schedule's x0.1 steps")
    rules: Rules = cli.field(
        Rules("val_top5", "max"), "early stopping (epochs without a validation top-5 gain) and restore (--rules.*)"
    )
    init: str = cli.field("uniform", "GmP initialisation", choices=("uniform", "official"))
    imn_position: str = cli.field(
        "input", "GmP+IMN: IMN of each conv's input (paper Eq. 14) or output (released VGG code)", choices=IMN_POSITIONS
    )
    image_size: int | None = cli.field(None, "input size in pixels (None: 32 for VGG-6, 224 for ResNet-18)")
    width: float = cli.field(1.0, "channel-width multiplier (1 = paper)")
    crop: str = cli.field("scale", "ImageNet train crop", choices=("scale", "inception"))
    save_every: int = cli.field(1000, "checkpoint every N steps")
    keep: int = cli.field(3, "checkpoints to keep")
    max_steps: int | None = cli.field(None, "stop after this many steps in total")
    log_every: int = cli.field(50, "log train metrics every N steps")
    max_eval_batches: int | None = cli.field(None, "evaluate on the first N batches only")
    tfds_data_dir: str | None = cli.field(None, "tfds data directory")
    workers: int | None = cli.field(None, "grain worker processes (default: the visible cores; 0: in-process)")
    distributed: bool = cli.field(False, "multi-process: jax.distributed from $GMPJAX_COORDINATOR/_NUM_PROCESSES/...")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.MODEL not in MODELS:
            raise ValueError(f"the model must be one of {MODELS} (got {self.MODEL!r}).")
        cli.positive(self, "batch_size", "epochs", "save_every", "keep", "log_every", "max_steps", "max_eval_batches")
        cli.positive(self, "image_size")
        cli.positive(self, "workers", least=0)  # 0: load in the training process
        for flag, v, ok, want in [("width", self.width, self.width > 0, "> 0"),
                                  ("weight-decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
                                  ("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)")]:  # fmt: skip
            if not ok:
                raise ValueError(f"--{flag} must be {want} (got {v!r}).")
        b = tuple(self.boundaries)
        if any(x < 0 for x in b) or list(b) != sorted(set(b)):
            raise ValueError(f"--boundaries must be strictly increasing non-negative epochs (got {b}).")
        if self.MODEL == "vgg6" and self.input_size % 8:
            raise ValueError(f"--image-size must be a multiple of 8 for VGG-6 (got {self.input_size}).")

    @property
    def input_size(self) -> int:
        """The input size: ``--image-size``, else 32 for VGG-6 and 224 for ResNet-18."""
        return self.image_size or (32 if self.MODEL == "vgg6" else 224)


def official(cfg: C, *, epochs: int, restore: str) -> C:
    """``cfg`` with the released code's schedule: ReduceLROnPlateau on validation top-5 and early stopping."""
    rules = dataclasses.replace(cfg.rules, patience=RELEASED_EARLY_STOP_PATIENCE, restore=restore)
    return dataclasses.replace(cfg, schedule="plateau", rules=rules, epochs=epochs)


def quick_overrides(cfg: ImageConfig) -> dict[str, Any]:
    """The smoke-run settings both scripts share (CPU, the embedded digits)."""
    return dict(dataset="digits", batch_size=64, log_every=5, save_every=20, workdir=f"results/{cfg.NAME}/quick")


def model_factory(cfg: ImageConfig, parameterization: str, num_classes: int) -> Callable[[jax.Array], nnx.Module]:
    """``key ->`` VGG-6 or ResNet-18 of ``parameterization``; ``cfg.width`` scales every channel count."""
    kw: dict[str, Any] = {"parameterization": parameterization, "init": cfg.init}
    if registry.get(parameterization).accepts("imn_position", conv=True):
        kw["layer_kwargs"] = {"imn_position": cfg.imn_position}
    if cfg.MODEL == "vgg6":
        widths = tuple(max(1, round(w * cfg.width)) for w in VGG6_WIDTHS)
        return lambda key: VGG6(num_classes, widths=widths, rngs=nnx.Rngs(key), **kw)
    return lambda key: ResNet18(num_classes, width=max(1, round(64 * cfg.width)), rngs=nnx.Rngs(key), **kw)


def run_name(cfg: ImageConfig, method: str, lr: float, seed: int) -> str:
    """``<method>_bs<batch>``, plus ``_lr<lr>`` when several rates run and ``_seed<seed>`` when several seeds do."""
    lr_part, seed_part = f"_lr{lr:g}" if len(cfg.lr) > 1 else "", f"_seed{seed}" if cfg.seeds > 1 else ""
    return f"{method}_bs{cfg.batch_size}{lr_part}{seed_part}"


def host_config(cfg: ImageConfig, steps_per_epoch: int) -> HostConfig:
    """The loop and its stopping rules: evaluation every epoch, top-5 monitored (the one place they are set)."""
    total = cfg.epochs * steps_per_epoch
    plateau = (cfg.rules.plateau or RELEASED_PLATEAU) if cfg.schedule == "plateau" else None
    return HostConfig(
        num_steps=total if cfg.max_steps is None else min(cfg.max_steps, total), eval_every=steps_per_epoch,
        log_every=cfg.log_every, steps_per_epoch=steps_per_epoch, rules=dataclasses.replace(cfg.rules, plateau=plateau),
    )  # fmt: skip


_TRAINERS: dict[tuple, HostTrainer] = {}  # one per architecture x optimizer x mesh: seeds and resumes compile once


def trainer(cfg: ImageConfig, p: str, lr: float, num_classes: int, spe: int, pre: tuple) -> HostTrainer:
    """The ``HostTrainer`` of a run, ``pre`` its train and eval ``Preprocess`` (cached: seeds and resumes reuse it)."""
    mesh = shd.make_data_mesh()
    boundaries = tuple(b for b in cfg.boundaries if b < cfg.epochs)
    fields = ("MODEL", "init", "imn_position", "width", "schedule", "momentum", "weight_decay")
    key = (p, lr, num_classes, boundaries, spe, *(getattr(cfg, f) for f in fields), *pre)
    key += tuple(d.id for d in mesh.devices.flat)
    if key not in _TRAINERS:
        schedule = piecewise_epochs(lr, spe, boundaries) if cfg.schedule == "piecewise" else lr
        tx = make_optimizer("sgd", schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        # softmax cross-entropy of the labels; top-1/top-5 of the train batch, masked sums over the evaluation split
        loss = lambda m, b: xent_top_k(m(pre[0].finish(b, xp=jnp)), b["label"], (1, 5))  # noqa: E731
        sums = lambda m, b: xent_sums(m(pre[1].finish(b, xp=jnp)), b["label"], b["mask"], (1, 5))  # noqa: E731
        make = model_factory(cfg, p, num_classes)
        _TRAINERS[key] = HostTrainer(make, tx, loss, mesh, eval_fn=sums, donate_state=True)
    return _TRAINERS[key]


def train_one(cfg: ImageConfig, method: str, lr: float, seed: int, run_dir: str) -> dict[str, Any]:
    """Train (or resume) one run in ``run_dir``; returns the summary written to ``run_dir/metrics.json``."""
    p, num_classes = check_parameterization(method), dataset_info(cfg.dataset)["num_classes"]
    shd.check_batch_size(cfg.batch_size, jax.device_count(), what="--batch-size")
    kw = {"global_batch_size": cfg.batch_size, "seed": seed, "workers": cfg.workers, "crop": cfg.crop}
    data, evals = image_loaders(
        cfg.dataset, image_size=cfg.input_size, data_dir=cfg.tfds_data_dir, eval_steps=cfg.max_eval_batches, **kw
    )
    spe, host_cfg = data.steps_per_epoch, host_config(cfg, data.steps_per_epoch)
    tr = trainer(cfg, p, lr, num_classes, spe, (data.preprocess, evals.preprocess))
    keep = ("image", "label", "alpha") if data.preprocess.lighting else ("image", "label")
    train_iter = data.iterate(put=lambda b: shd.shard_batch({k: b[k] for k in keep}, tr.mesh), prefetch=2)

    def check_position(step: int, extra: dict) -> None:
        if train_iter.position != dict(zip(("epoch", "step"), divmod(step, spe), strict=True)):
            msg = f"the data iterator of {run_dir} is at {train_iter.position} but the train state at step {step}"
            raise ValueError(f"--resume: {msg}; resume from an older step or use a fresh --workdir.")

    def show(r: dict) -> None:
        print(f"  epoch {r['step'] / spe:6.2f}  step {r['step']:7d}  val top-1 {100 * r['val_top1']:6.2f}%  "
              f"top-5 {100 * r['val_top5']:6.2f}%  loss {r['val_loss']:.4f}  lr {r['lr']:.4g}")  # fmt: skip

    identity = {"model": cfg.MODEL, "dataset": cfg.dataset, "parameterization": p, "batch_size": cfg.batch_size}
    identity |= {"seed": seed, "schedule": cfg.schedule, "lr": lr, "width": cfg.width, "imn_position": cfg.imn_position}
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("methods", "lr", "seeds")}
    settings |= {"experiment": cfg.NAME, "model": cfg.MODEL, "image_size": cfg.input_size, "workdir": run_dir}
    if shd.is_primary():
        n = f"{data.num_examples} / {evals.num_examples} examples, {tr.mesh.size} device(s), batch {cfg.batch_size}"
        print(f"{cfg.NAME}: {p} on {cfg.dataset} ({n}), lr {lr} ({cfg.schedule}), {host_cfg.num_steps} steps")
    put = lambda b: shd.shard_batch({k: b[k] for k in ("image", "label", "mask")}, tr.mesh)  # noqa: E731
    run = tr.fit(
        jax.random.key(seed), train_iter, host_cfg, run_dir, resume=cfg.resume, save_every=cfg.save_every,
        keep=cfg.keep, eval_batches=lambda: evals.iterate(put=put), eval_steps=evals.steps_per_epoch,
        on_eval=show, examples_per_step=cfg.batch_size, progress=cfg.progress, data_iterator=train_iter,
        config_json=identity, extra={"settings": settings | identity}, on_resume=check_position,
        desc=f"{p} ({host_cfg.num_steps} steps)",
    )  # fmt: skip
    summary = {"config": settings | identity, **run.summary(spe), "images_per_s_median": run.throughput_median}
    summary |= {"best_val_top5": max(h["val_top5"] for h in run.history), "chance_top1": 1.0 / num_classes}
    summary["history"] = run.history
    if shd.is_primary():
        write_json(os.path.join(run_dir, "metrics.json"), summary)
        run.plot(os.path.join(run_dir, "curves.png"), ("val_top1", "val_top5"), title=f"{cfg.MODEL} {p}")
    return summary


def _ours(values: Sequence[float]) -> str:
    m, se = report.mean_se([100 * v for v in values])
    return f"{m:.2f}" if len(values) == 1 else f"{m:.2f} ± {se:.2f}"


def paper_table(
    paper: Mapping[str, Mapping[str, tuple[float, float]]], runs: Sequence[dict], columns: Sequence[str]
) -> str:
    """Markdown table: the paper's top-1/top-5 (%) per batch size (``paper[method][batch] = (top1, top5)``, methods
    spelled as the paper does: ``"GmP+IMN"``), with ours (mean ± s.e. over seeds) in the last two columns of each
    method's row (one row per learning rate)."""
    paper = {check_parameterization(m): v for m, v in paper.items()}
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
    head = [f"paper top-{k} @{c}" for k in (1, 5) for c in columns]
    rows = []
    for label, method in order:
        mine, pr = groups.get(label, (method, []))[1], paper.get(method, {})
        cells = [f"{pr[c][k]:.2f}" if c in pr else "-" for k in (0, 1) for c in columns]
        ours = [_ours([x[f"val_top{k}"] for x in mine]) if mine else "" for k in (1, 5)]
        rows.append([label, *cells, *ours])
    c = runs[0]["config"]
    return report.markdown_table(["method", *head, "ours top-1", "ours top-5"], rows) + (
        f"\n\nours: {c['dataset']}, batch {c['batch_size']}, {runs[0]['epochs_done']:.1f} epochs, "
        f"width x{c['width']}, image {c['image_size']}px (paper: ImageNet, 90 epochs, full width)"
    )


def image_tables(
    results: Mapping[str, Any], paper: Mapping[str, Mapping[str, tuple[float, float]]], columns: Sequence[str]
) -> dict[str, str]:
    """``{"top1": paper_table(...)}`` of the runs in ``results`` (``run name -> summary``, from ``results.json``)."""
    return {"top1": paper_table(paper, [r for k, r in results.items() if k != "provenance"], columns)}


def run_experiment(cfg: ImageConfig, tables: Callable[[Mapping[str, Any]], dict[str, str]]) -> dict:
    """Train every method x learning rate x seed, write ``results.json``, print ``tables`` (the paper's beside ours)."""
    if cfg.distributed:
        shd.initialize_distributed()
    runs = {}
    for method in cfg.methods:
        for lr in learning_rates(cfg.lr, method):
            for seed in range(cfg.seed, cfg.seed + cfg.seeds):
                name = run_name(cfg, check_parameterization(method), lr, seed)
                runs[name] = train_one(cfg, method, lr, seed, os.path.join(cfg.workdir, name))
    if shd.is_primary():
        results = {k: {**v, "history": None} for k, v in runs.items()}
        report.write_results(cfg.workdir, results, tables)
        for r in runs.values():
            c, rate = r["config"], r["images_per_s_median"] or float("nan")
            print(f"\nours: {c['dataset']}, top-1 {100 * r['val_top1']:.2f}% (chance {100 * r['chance_top1']:.1f}%), "
                  f"top-5 {100 * r['val_top5']:.2f}%, {rate:.0f} images/s on {r['devices']} x {r['device_kind']}, "
                  f"{r['wall_s']:.0f} s; files in {c['workdir']}")  # fmt: skip
    return {"runs": runs}
