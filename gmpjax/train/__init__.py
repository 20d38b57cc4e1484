"""The one training engine of gmpjax (pure train/eval steps over an nnx module, loops, logging).

Sharding (``gmpjax.train.sharding``) and checkpointing (``gmpjax.train.checkpoint``)
extend the same ``TrainState``.
"""

from gmpjax.train.engine import (
    EarlyStopping,
    MetricsLogger,
    TrainState,
    early_stopping_init,
    early_stopping_update,
    fit,
    init_replicas,
    init_train_state,
    make_eval_step,
    make_train_step,
    merge_model,
    scan_steps,
    scan_steps_same_batch,
)

__all__ = [
    "EarlyStopping", "MetricsLogger", "TrainState", "early_stopping_init", "early_stopping_update", "fit",
    "init_replicas", "init_train_state", "make_eval_step", "make_train_step", "merge_model", "scan_steps",
    "scan_steps_same_batch",
]
