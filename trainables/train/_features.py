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

The cache is used when it fits in :func:`max_cache_bytes` (default 4 GiB when it is
a mapped file, so the bound is the disk's, not the trial's memory; 1 GiB held in
memory; ``$TUNER_FEATURE_CACHE_MB``); otherwise the frozen stages simply run every
step.

The activations are written to disk as they are computed (``.npy`` files,
mapped: a trial's own memory does not hold them), keyed by model, weights,
image size, depth, augmentation strength, the autocast precision they were
computed in (a GPU's bf16 or fp16 activations are not a CPU's fp32 ones) and
the exact decoded photos, so the
next trial with the same key maps them instead. A trial frozen deeper than an entry
of the same photos (the head alone, ``freeze_depth = 4``, after a stage-3 trial) runs
only its remaining frozen stages on that entry instead of the whole prefix on pixels.
Plain activations are keyed by
their rows alone, whichever slot holds them (:func:`rows_key`): a refit or a
distillation trains on the search's train rows then its val rows
(:attr:`~trainables.data.DecodedSplit.train_parts`), and puts its train slot
together from the search's two entries instead of running the frozen prefix
again; only the test photos, which no trial saw, are computed. They live in
``$TUNER_CACHE/features`` (default ``~/.cache/flower-tune/features``), which
is kept under 8 GiB by removing the least recently used entries;
``TUNER_FEATURE_CACHE=off`` keeps them in the trial's memory instead.

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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainables._settings import settings
from trainables.data import DecodedSplit, cache_root
from trainables.models import frozen_output_part
from trainables.train._config import TrialConfig

BATCH = 32  # on a CPU, Lite0 runs faster per photo at 32 than at 128
# Augmented views of each training photo whose frozen activations are kept.
AUGMENTED_VIEWS = 4
FEATURE_DISK_BUDGET = 8 << 30


def max_cache_bytes(on_disk: bool = True) -> int:
    """How large one trial's activation cache may grow (``$TUNER_FEATURE_CACHE_MB``):
    4 GiB when it is a mapped file of the disk cache, 1 GiB when it would be held in
    the trial's memory (the disk cache is off, or the weights have no name to key it)."""
    megabytes = settings().feature_cache_mb
    if megabytes is not None:
        return int(megabytes * (1 << 20))
    return 4 << 30 if on_disk else 1 << 30


def on_disk(keyed: bool) -> bool:
    """Whether activations that have a key (pretrained weights with a name) go to a mapped
    file of the disk cache; without one, or with the cache off, they are held in memory."""
    return keyed and _cache_dir() is not None


def cache_fits(
    floats_per_photo: int, train: int, val: int, views: int = 0, disk: bool = True
) -> bool:
    """Whether the activations fit the limit: ``train`` photos (``views`` float16
    views each, or one fp32 copy when 0) and ``val`` fp32 ones."""
    train_bytes = floats_per_photo * train * (2 * views if views else 4)
    return train_bytes + floats_per_photo * 4 * val <= max_cache_bytes(disk)


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
    if not settings().feature_cache:
        return None
    return cache_root() / "features"


def rows_key(
    cfg: TrialConfig,
    data: DecodedSplit,
    weights: str,
    rows: np.ndarray,
    size: int,
    precision: str = "fp32",
    depth: int | None = None,
) -> str:
    """Identifies the plain activations (centre crops at ``size`` px) of ``rows`` of the
    decoded entry: model, weights, depth (``cfg.freeze_depth`` unless given), the autocast
    ``precision`` they were computed in and the rows, whichever slot (train or val) holds
    them. So the train slot of a refit, the search's train rows then its val rows, is put
    together from the search's two entries (:attr:`DecodedSplit.train_parts`), and a deeper
    prefix can start from a shallower one's entry."""
    depth = cfg.freeze_depth if depth is None else depth
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{cfg.model}|{weights}|{size}|{depth}|{data.resize}|plain|".encode())
    h.update(_precision_tag(precision))
    h.update(f"{data.key}|".encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).data)
    return h.hexdigest()


def feature_key(cfg: TrialConfig, data: DecodedSplit, weights: str, precision: str = "fp32") -> str:
    """Identifies augmented views (``cfg`` augments): model, weights, image size (and train
    size when it differs), depth, views, ``precision`` and the decoded photos (the decoded
    entry's key and its train and val rows). Plain activations are keyed by :func:`rows_key`."""
    h = hashlib.blake2b(digest_size=16)
    h.update(_precision_tag(precision))
    aug = f"{cfg.aug_strength!r}x{views_for(cfg)}"
    if cfg.train_size not in (0, cfg.image_size):  # FixRes: the train split's crops are smaller
        aug += f"|train{cfg.train_size}"
    h.update(f"{cfg.model}|{weights}|{cfg.image_size}|{cfg.freeze_depth}|{data.resize}|".encode())
    h.update(f"{aug}|{data.key}|".encode())
    for rows in (data.train_rows, data.val_rows):
        h.update(np.ascontiguousarray(rows, dtype=np.int64).data)
        h.update(b"|")
    return h.hexdigest()


def _precision_tag(precision: str) -> bytes:
    """What a key hashes of the autocast precision: nothing for fp32, so the keys of
    activations computed in fp32 stay those of earlier versions."""
    return b"" if precision == "fp32" else f"{precision}|".encode()


def _entry(key: str | None, rows: str) -> Path | None:
    folder = _cache_dir() if key else None
    return folder / f"{key}-{rows}.npy" if folder else None


def load_features(key: str | None, rows: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The activations of ``rows`` ("plain", "views") stored under ``key``, mapped
    read-only, or None. ``shape`` gives the leading dimensions expected (rows, or views
    and rows); an entry that does not match them, or cannot be read, counts as absent."""
    path = _entry(key, rows)
    if path is None or not path.is_file():
        return None
    try:
        stored = np.load(path, mmap_mode="r")
        if stored.shape[: len(shape)] == shape:
            os.utime(path)  # recently used: pruned last
            return stored
    except (OSError, ValueError):  # a damaged cache entry is recomputed, never fatal
        pass
    return None


class FeatureFile:
    """Activations being computed: a writable map on disk (or an array in memory when the
    disk cache is off or unwritable), renamed into the cache by :meth:`keep` when full."""

    def __init__(self, key: str | None, rows: str, shape: tuple[int, ...], dtype: Any) -> None:
        self.path = _entry(key, rows)
        self.tmp: Path | None = None
        self.array: np.ndarray
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f"{self.path.stem}.", dir=self.path.parent)
                os.close(fd)
                self.tmp = Path(name)
                self.array = np.lib.format.open_memmap(self.tmp, "w+", dtype, shape)
                return
            except OSError:  # the cache is an optimisation; a read-only home must not fail
                self.discard()
        self.array = np.empty(shape, dtype)

    def keep(self) -> np.ndarray:
        """The full array, from now on mapped read-only from the cache (when there is one)."""
        if self.tmp is None or self.path is None:
            return self.array
        try:
            flush = getattr(self.array, "flush", None)
            if flush:
                flush()
            os.replace(self.tmp, self.path)
            self.tmp = None
            prune(self.path.parent, FEATURE_DISK_BUDGET)
            return np.load(self.path, mmap_mode="r")
        except OSError:
            return self.array

    def discard(self) -> None:
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            self.tmp = None


def prune(folder: Path, budget_bytes: int) -> list[Path]:
    """Remove the least recently used entries until ``folder`` holds at most ``budget_bytes``."""
    entries = []
    for path in folder.glob("*.npy"):
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
