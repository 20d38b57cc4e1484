"""The one training engine of gmpjax (pure train/eval steps over an nnx module, loops, logging).

Submodules extend the same ``TrainState``:

* ``gmpjax.train.engine``: ``TrainState``, train/eval step factories, gradient accumulation, early stopping.
* ``gmpjax.train.rules``: early stopping, plateau decay and restore (``Rules``), shared by both loops.
* ``gmpjax.train.loop``: the compiled fit loop (``LoopConfig``, ``fit``, ``sweep`` over replicas).
* ``gmpjax.train.replicas``: ``train_replicas``, R replicas (seeds x lrs x splits) of a model factory.
* ``gmpjax.train.losses``: losses and metrics (mse, mae, bce, xent, accuracy, top-k).
* ``gmpjax.train.host``: the host-side loop for long runs (``train``, ``HostConfig``): checkpoints, evaluation, logs.
* ``gmpjax.train.trainer``: ``HostTrainer``, the one host trainer (model, optimizer, sharded steps, evaluation,
  checkpoints, writers, resume) on top of ``host.train``.
* ``gmpjax.train.sharding``: data- and tensor-parallel meshes, state/batch sharding, multi-host initialisation.
* ``gmpjax.train.optim``: parameter labels and the GmP-safe weight-decay mask for optax.
* ``gmpjax.train.checkpoint``: orbax ``Checkpointer`` with atomic saves and validated restores.
* ``gmpjax.train.plateau`` / ``gmpjax.train.schedules``: vmappable reduce-on-plateau and lr schedules.
* ``gmpjax.train.two_phase``: the triangular-wave schedule (peak-space pre-training, then raw weights).
"""

from gmpjax.train.engine import (
    EarlyStopping,
    MetricsLogger,
    TrainState,
    early_stopping_init,
    early_stopping_update,
    init_replicas,
    init_train_state,
    make_eval_step,
    make_train_step,
    merge_model,
)
from gmpjax.train.host import HostConfig, HostResult
from gmpjax.train.loop import FitResult, LoopConfig, fit, fit_epochs, fit_init, fit_result, sweep
from gmpjax.train.optim import LABELS, masked_weight_decay, param_labels, weight_decay_mask
from gmpjax.train.replicas import Replicas, train_replicas
from gmpjax.train.rules import Rules
from gmpjax.train.trainer import HostRun, HostTrainer, mean_metrics

__all__ = [
    "EarlyStopping",
    "MetricsLogger",
    "TrainState",
    "early_stopping_init",
    "early_stopping_update",
    "init_replicas",
    "init_train_state",
    "make_eval_step",
    "make_train_step",
    "merge_model",
    "FitResult",
    "LoopConfig",
    "Rules",
    "fit",
    "HostConfig",
    "HostResult",
    "HostRun",
    "HostTrainer",
    "mean_metrics",
    "Replicas",
    "train_replicas",
    "fit_epochs",
    "fit_init",
    "fit_result",
    "sweep",
    "LABELS",
    "masked_weight_decay",
    "param_labels",
    "weight_decay_mask",
]
