"""Frozen activations, computed once: what a frozen prefix of the network outputs.

With the stem and the first ``freeze_depth = k`` stages frozen (BatchNorm in
eval mode), the prefix maps a given input to the same activations in every
epoch. So they are computed once per trial, and each step runs only the
stages that train: ``freeze_depth = 4`` keeps the pooled features (only the
head trains), ``freeze_depth = 1..3`` the feature map of the last frozen stage.

- ``aug_strength = 0``: a training photo is resized and centre-cropped like
  a validation photo: one set of activations.
- ``aug_strength > 0``: the activations of :data:`AUGMENTED_VIEWS` (at most
  ``max_epochs``) augmented views of every training photo (drawn with a fixed
  seed at that strength), kept in float16. Epoch k <= V trains on view k,
  computed as it goes (so a trial ASHA stops early has paid no more than
  running the frozen prefix every step); later epochs draw one of the V
  views per photo and run no frozen stage at all.

The cache is used when it fits in :func:`max_cache_bytes` (default 1 GiB,
``$TUNER_FEATURE_CACHE_MB``); otherwise the frozen stages simply run every step.

The activations are also kept on disk, keyed by model, weights, image size,
depth, augmentation strength and the exact decoded photos, so the next trial
with the same key loads them instead. They live in ``$TUNER_CACHE/features``
(default ``~/.cache/flower-tune/features``), which is kept under 4 GiB by
removing the least recently used entries; ``TUNER_FEATURE_CACHE=off``
disables it.

Example:
    >>> from trainables import TrialConfig
    >>> cache_part(TrialConfig(freeze_depth=3, aug_strength=0.0))  # stage 4, on stage 3 output
    4
    >>> cache_part(TrialConfig(freeze_depth=4, aug_strength=0.3))  # the head, on pooled features
    6
    >>> cache_part(TrialConfig(freeze_depth=0)) is None  # nothing frozen: nothing to cache
    True
    >>> views_for(TrialConfig(aug_strength=0.0)), views_for(TrialConfig(aug_strength=0.3))
    (0, 4)
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
# Augmented views of each training photo whose frozen activations are kept.
AUGMENTED_VIEWS = 4
_DISK_BUDGET_BYTES = 4 << 30


def max_cache_bytes() -> int:
    """How large one trial's activation cache may grow (``$TUNER_FEATURE_CACHE_MB``)."""
    megabytes = os.environ.get("TUNER_FEATURE_CACHE_MB", "")
    return int(float(megabytes) * (1 << 20)) if megabytes else 1 << 30


def cache_fits(floats_per_photo: int, train: int, val: int, views: int = 0) -> bool:
    """Whether the activations fit the limit: ``train`` photos (``views`` float16
    views each, or one fp32 copy when 0) and ``val`` fp32 ones."""
    train_bytes = floats_per_photo * train * (2 * views if views else 4)
    return train_bytes + floats_per_photo * 4 * val <= max_cache_bytes()


def cache_part(cfg: TrialConfig) -> int | None:
    """The first part of the network that still runs each step, or None (no cache).

    Any trial with the stem and at least one stage frozen has a frozen prefix
    whose activations can be computed once (of :func:`views_for` augmented
    views when it augments).
    """
    if cfg.freeze_depth == 0:
        return None
    return frozen_output_part(cfg.freeze_depth)


def views_for(cfg: TrialConfig) -> int:
    """Augmented views kept per training photo: 0 (the plain crop) without augmentation.

    Never more views than epochs: computing a view costs about what running
    the frozen prefix for one epoch does.
    """
    return min(AUGMENTED_VIEWS, cfg.max_epochs) if cfg.aug_strength > 0 else 0


def _cache_dir() -> Path | None:
    if os.environ.get("TUNER_FEATURE_CACHE", "").lower() in ("off", "0", "false"):
        return None
    root = os.environ.get("TUNER_CACHE") or Path.home() / ".cache" / "flower-tune"
    return Path(root) / "features"


def feature_key(cfg: TrialConfig, data: ImageCache, weights: str) -> str:
    """Identifies activations: model, weights, image size, depth, views and the decoded photos."""
    h = hashlib.blake2b(digest_size=16)
    views = views_for(cfg)
    aug = f"{cfg.aug_strength!r}x{views}" if views else "plain"
    h.update(f"{cfg.model}|{weights}|{cfg.image_size}|{cfg.freeze_depth}|{data.size}|".encode())
    h.update(f"{aug}|".encode())
    for array in (data.train_x, data.val_x):
        h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def in_batches(
    compute: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``compute`` over ``x`` in batches, concatenated as ``dtype``, without gradients."""
    with torch.no_grad():
        return torch.cat([compute(x[i : i + _BATCH]).to(dtype) for i in range(0, len(x), _BATCH)])


def _entry(key: str | None) -> Path | None:
    folder = _cache_dir() if key else None
    return folder / f"{key}.pt" if folder else None


def load_features(
    key: str | None, shape: tuple[tuple[int, ...], tuple[int, ...]]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(train, val) activations stored under ``key``, or None.

    ``shape`` gives the leading dimensions expected of each (rows, or views
    and rows); a stored entry that does not match them, or cannot be read,
    counts as absent.
    """
    path = _entry(key)
    if path is None or not path.is_file():
        return None
    try:
        stored = torch.load(path, weights_only=True)
        train_f, val_f = stored["train"], stored["val"]
        if (train_f.shape[: len(shape[0])], val_f.shape[: len(shape[1])]) == shape:
            os.utime(path)  # recently used: pruned last
            return train_f, val_f
    except Exception:  # a damaged cache entry is recomputed, never fatal
        pass
    return None


def store_features(key: str | None, train_f: torch.Tensor, val_f: torch.Tensor) -> None:
    """Keep (train, val) activations under ``key`` for later trials (best effort)."""
    path = _entry(key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"train": train_f.cpu(), "val": val_f.cpu()}, tmp)
        os.replace(tmp, path)
        prune(path.parent, _DISK_BUDGET_BYTES)
    except OSError:
        pass  # the cache is an optimisation; a read-only home must not fail a trial


def cached_features(
    key: str | None,
    compute_train: Callable[[], torch.Tensor],
    compute_val: Callable[[], torch.Tensor],
    shape: tuple[tuple[int, ...], tuple[int, ...]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) activations from the disk cache, or computed and stored."""
    stored = load_features(key, shape)
    if stored is not None:
        return stored
    train_f, val_f = compute_train(), compute_val()
    store_features(key, train_f, val_f)
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
