"""One trial: its typed configuration (``_config``), augmentation and mixing
(``_augment``, ``_mixing``), frozen-prefix activations (``_features``), the batches
(``_inputs``), the training loop (``_train``), checkpoints (``_checkpoint``) and the
Ray Tune function trainable (``_trainable``)."""

from __future__ import annotations

from trainables.train._augment import (
    AugmentParams,
    apply_params,
    augment_batch,
    draw_params,
    eval_transform,
    normalize,
)
from trainables.train._batches import forward_batch
from trainables.train._checkpoint import CHECKPOINT_FILE, CheckpointError, load_state, save_state
from trainables.train._config import (
    MAX_FREEZE_DEPTH,
    MODELS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    ConfigError,
    TrialConfig,
)
from trainables.train._features import AUGMENTED_VIEWS, FEATURE_DISK_BUDGET, max_cache_bytes
from trainables.train._inputs import TrainInputs, build_inputs
from trainables.train._train import evaluate, fit, predict_train, train_epoch
from trainables.train._trainable import train_classifier

__all__ = [
    "AUGMENTED_VIEWS",
    "CHECKPOINT_FILE",
    "FEATURE_DISK_BUDGET",
    "MAX_FREEZE_DEPTH",
    "MODELS",
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "AugmentParams",
    "CheckpointError",
    "ConfigError",
    "TrainInputs",
    "TrialConfig",
    "apply_params",
    "augment_batch",
    "build_inputs",
    "draw_params",
    "eval_transform",
    "evaluate",
    "fit",
    "forward_batch",
    "load_state",
    "max_cache_bytes",
    "normalize",
    "predict_train",
    "save_state",
    "train_classifier",
    "train_epoch",
]
