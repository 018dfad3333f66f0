"""Frozen activations, computed once: what a frozen prefix of the network outputs.

With ``aug_strength = 0`` a training photo is resized and centre-cropped like a
validation photo, so the frozen stem and stages (``freeze_depth = k``, BatchNorm
in eval mode) map it to the same activations in every epoch. They are then
computed once per trial, and each step runs only the stages that train:
``freeze_depth = 4`` keeps the pooled features (only the head trains),
``freeze_depth = 1..3`` the feature map of the last frozen stage. The cache is
used when it fits in :func:`max_cache_bytes` (default 1 GiB,
``$TUNER_FEATURE_CACHE_MB``); otherwise the frozen stages simply run every step.

The activations are also kept on disk, keyed by model, weights, image size,
depth and the exact decoded photos, so the next trial with the same key
loads them instead. They live in ``$TUNER_CACHE/features`` (default
``~/.cache/flower-tune/features``), which is kept under 4 GiB by removing
the least recently used entries; ``TUNER_FEATURE_CACHE=off`` disables it.

Example:
    >>> from trainables import TrialConfig
    >>> cache_part(TrialConfig(freeze_depth=3, aug_strength=0.0))  # stage 4, on stage 3 output
    4
    >>> cache_part(TrialConfig(freeze_depth=4, aug_strength=0.0))  # the head, on pooled features
    6
    >>> cache_part(TrialConfig(freeze_depth=3, aug_strength=0.2)) is None  # random crops: no
    True
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from trainables._config import TrialConfig
from trainables._data import ImageCache
from trainables._models import frozen_output_part

_BATCH = 32  # Lite0 runs ~1.5x faster per image at 32 than at 128 on CPU
_DISK_BUDGET_BYTES = 4 << 30


def max_cache_bytes() -> int:
    """How large one trial's activation cache may grow (``$TUNER_FEATURE_CACHE_MB``)."""
    megabytes = os.environ.get("TUNER_FEATURE_CACHE_MB", "")
    return int(float(megabytes) * (1 << 20)) if megabytes else 1 << 30


def cache_fits(floats_per_photo: int, photos: int) -> bool:
    """Whether ``photos`` activations of ``floats_per_photo`` fp32 values fit the limit."""
    return floats_per_photo * 4 * photos <= max_cache_bytes()


def cache_part(cfg: TrialConfig) -> int | None:
    """The first part of the network that still runs each step, or None (no cache).

    Frozen activations repeat every epoch when nothing random happens before
    them: ``aug_strength`` 0 and at least the stem and one stage frozen.
    """
    if cfg.aug_strength != 0.0 or cfg.freeze_depth == 0:
        return None
    return frozen_output_part(cfg.freeze_depth)


def _cache_dir() -> Path | None:
    if os.environ.get("TUNER_FEATURE_CACHE", "").lower() in ("off", "0", "false"):
        return None
    root = os.environ.get("TUNER_CACHE") or Path.home() / ".cache" / "flower-tune"
    return Path(root) / "features"


def feature_key(cfg: TrialConfig, data: ImageCache, weights: str) -> str:
    """Identifies activations: model, weights, image size, depth and the decoded photos."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{cfg.model}|{weights}|{cfg.image_size}|{cfg.freeze_depth}|{data.size}|".encode())
    for array in (data.train_x, data.val_x):
        h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def cached_features(
    key: str | None,
    compute: Callable[[torch.Tensor], torch.Tensor],
    train_x: torch.Tensor,
    val_x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) activations from the disk cache, or computed in batches and stored."""
    folder = _cache_dir() if key else None
    path = folder / f"{key}.pt" if folder else None
    if path is not None and path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            if stored["train"].shape[0] == len(train_x) and stored["val"].shape[0] == len(val_x):
                os.utime(path)  # recently used: pruned last
                return stored["train"], stored["val"]
        except Exception:  # a damaged cache entry is recomputed, never fatal
            pass
    with torch.no_grad():
        train_f, val_f = (
            torch.cat([compute(x[i : i + _BATCH]).float() for i in range(0, len(x), _BATCH)])
            for x in (train_x, val_x)
        )
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({"train": train_f.cpu(), "val": val_f.cpu()}, tmp)
            os.replace(tmp, path)
            prune(path.parent, _DISK_BUDGET_BYTES)
        except OSError:
            pass  # the cache is an optimisation; a read-only home must not fail a trial
    return train_f, val_f


def prune(folder: Path, budget_bytes: int) -> list[Path]:
    """Remove the least recently used entries until ``folder`` holds at most ``budget_bytes``."""
    entries = []
    for path in folder.glob("*.pt"):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    entries.sort(reverse=True)  # newest first: kept
    removed, total = [], 0
    for _, size, path in entries:
        total += size
        if total > budget_bytes:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
