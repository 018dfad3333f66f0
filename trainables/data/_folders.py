"""Photo folders: listing and the stratified split.

A folder in ImageFolder layout (``ROOT/CLASS/.../photo.jpg``) is listed once
(:func:`scan_folder`) and split once (:func:`make_split`, saved as ``split.json``);
its photos are then decoded once per node (:mod:`trainables.data._decoded`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

from trainables.data._source import PhotoSource, SourceError

# Decoded photos are kept a little larger than the training size so that
# evaluation can resize + centre-crop (the classic 256 -> 224 ratio) and
# augmentation has border to crop from.
CROP_RATIO = 0.875
SPLIT_FILE = "split.json"
MIN_PER_CLASS = 2


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in counts.items())


class DataError(ValueError):
    """The photo folder cannot be used as it is (message says what and where)."""


@dataclass(frozen=True)
class Skipped:
    """A file a search does not use, and why."""

    path: str
    reason: str


@dataclass(kw_only=True)
class FolderScan:
    """Photos per class found under ``root``: candidates, or after :func:`screen` usable ones."""

    root: PhotoSource
    classes: list[str]
    files: list[tuple[str, int]]  # (path relative to root, class index)
    skipped: list[Skipped] = field(default_factory=list)
    # Groups of byte-identical files filed under different classes.
    ambiguous: list[list[str]] = field(default_factory=list)
    # After screen(): row of each file in the decoded array.
    row_of: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Files per class name."""
        totals = dict.fromkeys(self.classes, 0)
        for _, label in self.files:
            totals[self.classes[label]] += 1
        return totals

    def problem(self) -> str | None:
        """Why a search cannot use these files, or None if it can."""
        counts = self.counts()
        with_photos = [name for name, n in counts.items() if n]
        if len(with_photos) < 2:
            return (
                f"{self.root} has {len(with_photos)} class(es) with usable photos "
                f"({_describe(counts)}); a classifier needs at least 2"
            )
        short = [name for name, n in counts.items() if n < MIN_PER_CLASS]
        if short:
            return (
                f"class(es) {', '.join(repr(c) for c in short)} in {self.root} have fewer than "
                f"{MIN_PER_CLASS} usable photos ({_describe(counts)}); each class needs at least "
                f"{MIN_PER_CLASS} to be split into train and val"
            )
        return None


@dataclass(kw_only=True)
class Split:
    """The train/val/test file lists and class names of an experiment.

    Trials train on ``train`` and are selected on ``val``; ``test`` is held out:
    it never reaches a trial and only scores the chosen models at the end.
    """

    root: PhotoSource
    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    seed: int
    val_fraction: float
    skipped: list[Skipped] = field(default_factory=list)
    ambiguous: list[list[str]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)
    test_fraction: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root.record(),
            "classes": self.classes,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "train": [[p, y] for p, y in self.train],
            "val": [[p, y] for p, y in self.val],
            "test": [[p, y] for p, y in self.test],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "ambiguous": self.ambiguous,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        return cls(
            root=photo_source(data["root"]),
            classes=list(data["classes"]),
            train=[(str(p), int(y)) for p, y in data["train"]],
            val=[(str(p), int(y)) for p, y in data["val"]],
            seed=int(data["seed"]),
            val_fraction=float(data["val_fraction"]),
            skipped=[Skipped(s["path"], s["reason"]) for s in data.get("skipped", [])],
            ambiguous=[list(group) for group in data.get("ambiguous", [])],
            test=[(str(p), int(y)) for p, y in data.get("test", [])],
            test_fraction=float(data.get("test_fraction", 0.0)),
        )


def resize_for(image_size: int) -> int:
    """The resize for ``image_size``: photos are resized to this shorter side and centre-
    cropped to a square of it (decoded and stored so), then cropped to ``image_size``
    for the network. ``config.json``'s ``resize`` and ``tuner.json``'s ``resize``."""
    return round(image_size / CROP_RATIO)


def photo_source(
    location: str | os.PathLike[str] | PhotoSource, follow_links: bool = False
) -> PhotoSource:
    if isinstance(location, PhotoSource):
        return location
    try:
        return PhotoSource.parse(location, follow_links)
    except SourceError as exc:
        raise DataError(str(exc)) from None


def scan_folder(
    root: str | os.PathLike[str] | PhotoSource, follow_links: bool = False
) -> FolderScan:
    """List class folders and candidate image files (by extension) under ``root``: a local
    folder or a URI (``s3://BUCKET/PREFIX``, ...). Each local folder is visited once;
    folder links leaving it (unless ``follow_links``) and files that are not regular are
    skipped with a reason."""
    source = photo_source(root, follow_links)
    try:
        classes, files, skipped = source.walk()
    except SourceError as exc:
        raise DataError(str(exc)) from None
    except OSError as exc:
        raise DataError(f"cannot list {source.display()}: {exc}") from None
    return FolderScan(
        root=source,
        classes=classes,
        files=files,
        skipped=[Skipped(path, reason) for path, reason in skipped],
    )


def make_split(
    scan: FolderScan, val_fraction: float = 0.2, seed: int = 0, test_fraction: float = 0.0
) -> Split:
    """Stratified, seeded train/val/test split: each class keeps the same shares.

    Every class first gives ``round(n * test_fraction)`` files to test (at least
    one when ``test_fraction > 0``), then ``round(n * val_fraction)`` to val (at
    least one), and keeps at least one for train. The result depends only on
    the file list, the fractions and ``seed``.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not 0 <= test_fraction < 0.5:
        raise DataError(f"test fraction must be in [0, 0.5), got {test_fraction:g}")
    if test_fraction + val_fraction >= 1:
        raise DataError(
            f"test fraction {test_fraction:g} + val fraction {val_fraction:g} leave no photos "
            "to train on"
        )
    problem = scan.problem()
    if problem:
        raise DataError(problem)
    need = 3 if test_fraction else 2
    short = {name: n for name, n in scan.counts().items() if n < need}
    if short:
        raise DataError(
            f"too few photos per class for a train/val/test split (test fraction "
            f"{test_fraction:g}): at least {need} each needed; "
            f"{_describe(short)} (use a smaller --test-fraction, or 0 for none)"
        )
    rng = random.Random(seed)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for label in range(len(scan.classes)):
        members = sorted(p for p, y in scan.files if y == label)
        rng.shuffle(members)
        n = len(members)
        n_test = min(max(1, round(n * test_fraction)), n - 2) if test_fraction else 0
        n_val = min(max(1, round(n * val_fraction)), n - n_test - 1)
        test += [(p, label) for p in sorted(members[:n_test])]
        val += [(p, label) for p in sorted(members[n_test : n_test + n_val])]
        train += [(p, label) for p in sorted(members[n_test + n_val :])]
    return Split(
        root=scan.root,
        classes=scan.classes,
        train=train,
        val=val,
        seed=seed,
        val_fraction=val_fraction,
        skipped=list(scan.skipped),
        ambiguous=list(scan.ambiguous),
        test=test,
        test_fraction=test_fraction,
    )
