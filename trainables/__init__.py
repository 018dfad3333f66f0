"""What runs inside one trial: data, models, augmentation and the trainable.

This package imports nothing from ``tuner``; plain Ray Tune code can use it
directly (see :func:`train_classifier`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from trainables._precision import (
        ComputePolicy,
        choose_precision,
        cpu_has_native_bf16,
        default_device,
    )
    from trainables._progress import Progress
    from trainables._settings import (
        RAY_DEFAULTS,
        Settings,
        apply_ray_defaults,
        settings,
        use_cache_dir,
    )
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

# Where each name lives. Imported on first use (PEP 562): `tuner data check` and the
# data layer load numpy, Pillow and pyarrow only, not torch (~800 MB of resident
# libraries with the CUDA build, and seconds of start-up).
_SOURCES = {
    "AugmentParams": "_augment",
    "CHECKPOINT_FILE": "_checkpoint",
    "CacheSpaceError": "_store",
    "CheckpointError": "_checkpoint",
    "ConfigError": "_config",
    "DataError": "_data",
    "Decoded": "_store",
    "FolderScan": "_data",
    "IMAGE_EXTENSIONS": "_photos",
    "ImageCache": "_data",
    "MAX_FREEZE_DEPTH": "_config",
    "MODELS": "_config",
    "OPTIMIZERS": "_config",
    "PhotoSource": "_source",
    "PixelFile": "_store",
    "ComputePolicy": "_precision",
    "Progress": "_progress",
    "SPLIT_FILE": "_data",
    "Skipped": "_data",
    "SourceError": "_source",
    "Split": "_data",
    "TrainInputs": "_inputs",
    "TrialConfig": "_config",
    "WeightsUnavailableError": "_models",
    "apply_params": "_augment",
    "augment_batch": "_augment",
    "build_inputs": "_inputs",
    "build_model": "_models",
    "cache_root": "_store",
    "cache_size_for": "_data",
    "check_folder": "_data",
    "check_space": "_store",
    "choose_precision": "_precision",
    "cpu_has_native_bf16": "_precision",
    "default_device": "_precision",
    "decode_files": "_photos",
    "decode_for_refit": "_data",
    "decode_one": "_photos",
    "decode_rels": "_source",
    "decode_split": "_data",
    "decode_to_disk": "_store",
    "draw_params": "_augment",
    "ensure_pretrained_weights": "_models",
    "eval_transform": "_augment",
    "evaluate": "_train",
    "find_decoded": "_store",
    "fit": "_train",
    "freeze": "_models",
    "head": "_models",
    "load_image_cache": "_data",
    "load_photo": "_photos",
    "load_state": "_checkpoint",
    "make_split": "_data",
    "needed_bytes": "_store",
    "normalization": "_models",
    "normalize": "_augment",
    "prepare_data": "_data",
    "pretrained_weights_file": "_models",
    "probe_rels": "_source",
    "resize_center_crop": "_photos",
    "save_state": "_checkpoint",
    "scan_folder": "_data",
    "screen": "_data",
    "set_train_mode": "_models",
    "split_screened": "_data",
    "stages": "_models",
    "RAY_DEFAULTS": "_settings",
    "Settings": "_settings",
    "apply_ray_defaults": "_settings",
    "settings": "_settings",
    "use_cache_dir": "_settings",
    "train_classifier": "_trainable",
    "train_epoch": "_train",
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'trainables' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trainables.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CHECKPOINT_FILE",
    "IMAGE_EXTENSIONS",
    "MAX_FREEZE_DEPTH",
    "MODELS",
    "OPTIMIZERS",
    "RAY_DEFAULTS",
    "SPLIT_FILE",
    "AugmentParams",
    "CacheSpaceError",
    "CheckpointError",
    "ComputePolicy",
    "ConfigError",
    "DataError",
    "Decoded",
    "FolderScan",
    "ImageCache",
    "PhotoSource",
    "PixelFile",
    "Progress",
    "Settings",
    "Skipped",
    "SourceError",
    "Split",
    "TrainInputs",
    "TrialConfig",
    "WeightsUnavailableError",
    "apply_params",
    "apply_ray_defaults",
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
    "default_device",
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
    "settings",
    "split_screened",
    "stages",
    "train_classifier",
    "train_epoch",
    "use_cache_dir",
]
