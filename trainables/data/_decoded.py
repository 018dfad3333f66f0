"""The decoded photos of a split (:class:`DecodedSplit`), decoded once per node into a
memory-mapped file on local disk (:mod:`trainables.data._store`) that every trial on the
node maps, so no trial decodes a JPEG after start-up and no process holds the photos in
its own memory; and a folder's photos decoded once to check them (:func:`screen`).

Example:
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for cls in ("a", "b"):
    ...     (root / cls).mkdir()
    ...     for i in range(5):
    ...         Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(root / cls / f"{i}.jpg")
    >>> split, cache = prepare_data(scan_folder(root), resize=16, val_fraction=0.2, seed=0)
    >>> split.classes, len(split.train), len(split.val)
    (['a', 'b'], 8, 2)
    >>> cache.train_x.shape, cache.train_x.dtype.name, cache.pixels.path.name
    ((8, 3, 16, 16), 'uint8', 'pixels.u8')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainables.data._folders import (
    DataError,
    FolderScan,
    Skipped,
    Split,
    make_split,
    photo_source,
    resize_for,
    scan_folder,
)
from trainables.data._jobs import probe_rels
from trainables.data._source import PhotoSource
from trainables.data._store import CacheSpaceError, Decoded, PixelFile, decode_to_disk


@dataclass(kw_only=True)
class DecodedSplit:
    """The train and val photos of a split: rows of a memory-mapped decoded file, plus labels.

    Small to pickle (paths, row numbers and labels; never pixels), so Ray ships
    it to every trial; each trial maps :attr:`pixels` read-only, and on a node
    where that file is missing decodes the photos itself into its own cache
    (:meth:`decoded_here`). ``train_x`` and ``val_x`` gather the rows into memory, for
    small sets and tests; trials read batches of rows instead.

    ``train_soft`` (None: the labels alone) gives each training photo a target
    distribution over the classes (rows summing to 1, float32): a distillation's
    teacher mixed with the true label. Training then uses it in place of
    ``train_y``; ``train_y`` still names each photo's class.

    ``train_parts`` (empty: one part) gives the lengths of the runs of ``train_rows``
    that the search held as sets of their own: a refit's are the search's train photos
    then its val photos, whose frozen activations a trial of the search already computed.
    """

    classes: list[str]
    resize: int
    pixels: PixelFile
    train_rows: np.ndarray
    train_y: np.ndarray
    val_rows: np.ndarray
    val_y: np.ndarray
    key: str = ""  # names the decoded entry (with the rows, keys the frozen activations)
    root: str = ""  # where the entry's photos are, to decode them on another node
    entry_files: list[str] = field(default_factory=list)
    train_soft: np.ndarray | None = None
    train_parts: tuple[int, ...] = ()

    def train_runs(self) -> list[np.ndarray]:
        """``train_rows`` cut into its :attr:`train_parts` (one run when there are none)."""
        if sum(self.train_parts) != len(self.train_rows):
            return [self.train_rows]
        ends = np.cumsum(self.train_parts)[:-1]
        return [run for run in np.split(self.train_rows, ends) if len(run)]

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded train and val rows."""
        return (len(self.train_rows) + len(self.val_rows)) * 3 * self.resize * self.resize

    @property
    def train_x(self) -> np.ndarray:
        return self.decoded_here().pixels.array()[self.train_rows]

    @property
    def val_x(self) -> np.ndarray:
        return self.decoded_here().pixels.array()[self.val_rows]

    def decoded_here(self) -> DecodedSplit:
        """This split with its pixels in a file on this node: the file it names if this node
        has it, else the photos decoded here first (into this node's cache), after which
        this object names that file."""
        if self.pixels.path.is_file() or not self.root:
            return self
        decoded = decode_to_disk(photo_source(self.root), self.entry_files, self.resize)
        needed = np.concatenate([self.train_rows, self.val_rows])
        lost = sorted(i for i in decoded.failed if i in set(needed.tolist()))
        if lost:
            raise DataError(
                f"{self.root}: {self.entry_files[lost[0]]} can no longer be decoded on this "
                f"node: {decoded.failed[lost[0]]}"
            )
        self.pixels = decoded.pixels
        return self

    def subset(self, train: np.ndarray, val: np.ndarray) -> DecodedSplit:
        """The cache of training rows ``train`` and validation rows ``val`` (indices)."""
        soft = None if self.train_soft is None else self.train_soft[train]
        return dataclasses.replace(
            self, train_rows=self.train_rows[train], train_y=self.train_y[train],
            val_rows=self.val_rows[val], val_y=self.val_y[val], train_soft=soft,
            train_parts=(),
        )  # fmt: skip


def _decode(
    root: PhotoSource,
    files: list[tuple[str, int]],
    resize: int,
    workers: int | None,
    cache_dir: Path | None,
    say: Callable[[str], None] | None,
    reserve: int = 0,
) -> Decoded:
    paths = [p for p, _ in files]
    try:
        return decode_to_disk(root, paths, resize, cache_dir, workers, say=say, reserve=reserve)
    except CacheSpaceError as exc:
        raise DataError(str(exc)) from None


def _decoded_split(
    split: Split,
    files: list[tuple[str, int]],
    resize: int,
    workers: int | None,
    cache_dir: Path | None,
    say: Callable[[str], None] | None,
) -> tuple[Decoded, dict[str, int]]:
    decoded = _decode(split.root, files, resize, workers, cache_dir, say)
    if decoded.failed:
        i, reason = next(iter(sorted(decoded.failed.items())))
        raise DataError(f"{split.root}: {files[i][0]} can no longer be decoded: {reason}")
    return decoded, {p: i for i, (p, _) in enumerate(files)}


def decode_split(
    split: Split,
    resize: int,
    workers: int | None = None,
    cache_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> DecodedSplit:
    """The :class:`DecodedSplit` of an existing ``split`` (reusing its decoded photos).

    Used when an experiment is resumed from its ``split.json``; a file that
    can no longer be decoded raises :class:`DataError` naming it. The test
    files are not decoded: no trial sees them.
    """
    files = split.train + split.val
    decoded, index = _decoded_split(split, files, resize, workers, cache_dir, say)
    return _cache_from(split, decoded, index, resize)


def decode_for_refit(
    split: Split,
    resize: int,
    workers: int | None = None,
    cache_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> DecodedSplit:
    """The cache a refit trains on: train + val photos in its train slot, the test photos
    in its val slot (the rows the training loop scores each epoch).

    Only for retraining a configuration that the search already chose: no
    choice is made on the test photos.
    """
    if not split.test:
        raise DataError("the experiment holds no test split (it was searched with test fraction 0)")
    files = split.train + split.val + split.test
    decoded, index = _decoded_split(split, files, resize, workers, cache_dir, say)
    refit = Split(
        root=split.root,
        classes=split.classes,
        train=split.train + split.val,
        val=split.test,
        seed=split.seed,
        val_fraction=0.0,
    )
    cache = _cache_from(refit, decoded, index, resize)
    return dataclasses.replace(cache, train_parts=(len(split.train), len(split.val)))


def prepare_data(
    scan: FolderScan,
    resize: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    test_fraction: float = 0.0,
    cache_dir: Path | None = None,
) -> tuple[Split, DecodedSplit]:
    """Decode every candidate photo once (to the disk cache), drop the unreadable ones, split.

    Returns the split (its ``skipped`` lists every unusable file with the
    reason) and the cache of exactly the split's train and val files
    (never its test files).
    """
    usable, decoded = screen(scan, resize, workers, cache_dir)
    return split_screened(usable, decoded, resize, val_fraction, seed, test_fraction)


def split_screened(
    usable: FolderScan,
    decoded: Decoded,
    resize: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    test_fraction: float = 0.0,
) -> tuple[Split, DecodedSplit]:
    """Split the output of :func:`screen`; the cache maps the train and val rows."""
    split = make_split(usable, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction)
    return split, _cache_from(split, decoded, usable.row_of, resize)


def _usable(
    scan: FolderScan, failures: dict[int, str], digests: Sequence[str | None]
) -> FolderScan:
    """``scan`` less the files that failed (moved to ``skipped``), with ambiguous groups."""
    kept = [f for i, f in enumerate(scan.files) if i not in failures]
    skipped = scan.skipped + [Skipped(scan.files[i][0], r) for i, r in sorted(failures.items())]
    by_digest: dict[str, list[tuple[str, int]]] = {}
    for (path, label), digest in zip(scan.files, digests, strict=True):
        if digest is not None:
            by_digest.setdefault(digest, []).append((path, label))
    ambiguous = sorted(
        sorted(p for p, _ in group)
        for group in by_digest.values()
        if len({label for _, label in group}) > 1
    )
    usable = FolderScan(
        root=scan.root, classes=scan.classes, files=kept, skipped=skipped, ambiguous=ambiguous
    )
    usable.row_of = {p: i for i, (p, _) in enumerate(scan.files)}
    return usable


def screen(
    scan: FolderScan,
    resize: int,
    workers: int | None = None,
    cache_dir: Path | None = None,
    say: Callable[[str], None] | None = None,
    reserve: int = 0,
) -> tuple[FolderScan, Decoded]:
    """Decode every candidate once into the disk cache; return the usable files and the rows.

    The returned scan lists only decodable files; every other file is in its
    ``skipped`` with the reason, and byte-identical files under different
    classes are grouped in ``ambiguous`` (kept, but worth a warning). The
    rows follow the *input* scan's file order (``usable.row_of``). ``reserve``: bytes
    the caller will also write to the cache disk (frozen activations), checked with
    the decode's own before it starts.
    """
    decoded = _decode(scan.root, scan.files, resize, workers, cache_dir, say, reserve)
    return _usable(scan, decoded.failed, decoded.digests), decoded


def check_folder(scan: FolderScan, workers: int | None = None) -> FolderScan:
    """:func:`screen` without keeping any pixels: what ``data check`` reports."""
    failures, digests = probe_rels(scan.root, [p for p, _ in scan.files], workers)
    return _usable(scan, failures, digests)


def load_image_cache(
    root: str | os.PathLike[str], image_size: int, val_fraction: float = 0.2, seed: int = 0
) -> DecodedSplit:
    """Scan, split and decode ``root`` for training at ``image_size`` in one call."""
    _, cache = prepare_data(
        scan_folder(root), resize_for(image_size), val_fraction=val_fraction, seed=seed
    )
    return cache


def _cache_from(split: Split, decoded: Decoded, index: dict[str, int], resize: int) -> DecodedSplit:
    def rows(part: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        at = decoded.rows[np.array([index[p] for p, _ in part], dtype=np.int64)]
        return at, np.array([y for _, y in part], dtype=np.int64)

    train_rows, train_y = rows(split.train)
    val_rows, val_y = rows(split.val)
    return DecodedSplit(
        classes=list(split.classes),
        resize=resize,
        pixels=decoded.pixels,
        train_rows=train_rows,
        train_y=train_y,
        val_rows=val_rows,
        val_y=val_y,
        key=decoded.key,
        root=split.root.record(),
        entry_files=decoded.entry_files,
    )
