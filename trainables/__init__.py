"""What runs inside one trial: data, models, augmentation and the trainable.

This package imports nothing from ``tuner``; plain Ray Tune code can use it
directly (see :func:`train_classifier`).
"""

from trainables._augment import (
    AugmentParams,
    apply_params,
    augment_batch,
    draw_params,
    eval_transform,
    normalize,
)
from trainables._checkpoint import CHECKPOINT_FILE, CheckpointError, load_state, save_state
from trainables._config import (
    MAX_FREEZE_DEPTH,
    MODELS,
    OPTIMIZERS,
    ConfigError,
    TrialConfig,
)
from trainables._data import (
    SPLIT_FILE,
    DataError,
    FolderScan,
    ImageCache,
    Skipped,
    Split,
    cache_size_for,
    check_folder,
    decode_for_refit,
    decode_split,
    load_image_cache,
    make_split,
    prepare_data,
    scan_folder,
    screen,
    split_screened,
)
from trainables._inputs import TrainInputs, build_inputs
from trainables._models import (
    WeightsUnavailableError,
    build_model,
    ensure_pretrained_weights,
    freeze,
    head,
    normalization,
    pretrained_weights_file,
    set_train_mode,
    stages,
)
from trainables._photos import (
    IMAGE_EXTENSIONS,
    decode_files,
    decode_one,
    load_photo,
    resize_center_crop,
)
from trainables._precision import Precision, choose_precision, cpu_has_native_bf16
from trainables._progress import Progress
from trainables._source import PhotoSource, SourceError, decode_rels, probe_rels
from trainables._store import (
    CacheSpaceError,
    Decoded,
    PixelFile,
    cache_root,
    check_space,
    decode_to_disk,
    find_decoded,
    needed_bytes,
)
from trainables._train import evaluate, fit, train_epoch
from trainables._trainable import train_classifier

__all__ = [
    "CHECKPOINT_FILE",
    "IMAGE_EXTENSIONS",
    "MAX_FREEZE_DEPTH",
    "MODELS",
    "OPTIMIZERS",
    "SPLIT_FILE",
    "AugmentParams",
    "CacheSpaceError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Decoded",
    "FolderScan",
    "ImageCache",
    "PhotoSource",
    "PixelFile",
    "Precision",
    "Progress",
    "Skipped",
    "SourceError",
    "Split",
    "TrainInputs",
    "TrialConfig",
    "WeightsUnavailableError",
    "apply_params",
    "augment_batch",
    "build_inputs",
    "build_model",
    "cache_root",
    "cache_size_for",
    "check_folder",
    "check_space",
    "choose_precision",
    "cpu_has_native_bf16",
    "decode_files",
    "decode_for_refit",
    "decode_one",
    "decode_rels",
    "decode_split",
    "decode_to_disk",
    "draw_params",
    "ensure_pretrained_weights",
    "eval_transform",
    "evaluate",
    "find_decoded",
    "fit",
    "freeze",
    "head",
    "load_image_cache",
    "load_photo",
    "load_state",
    "make_split",
    "needed_bytes",
    "normalization",
    "normalize",
    "prepare_data",
    "pretrained_weights_file",
    "probe_rels",
    "resize_center_crop",
    "save_state",
    "scan_folder",
    "screen",
    "set_train_mode",
    "split_screened",
    "stages",
    "train_classifier",
    "train_epoch",
]
