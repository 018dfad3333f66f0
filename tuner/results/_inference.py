"""A ranked trial's model, and photos preprocessed exactly as its validation photos were.

``evaluate``, ``export`` and ``predict`` all go through this module, so a photo
is decoded, resized, centre-cropped and normalised the same way everywhere,
and the same way a trial's validation photos were (see
:func:`trainables.decode_split` and :func:`trainables.eval_transform`):

1. decode as RGB with the EXIF orientation applied,
2. shorter side to ``resize = resize_for(image_size)``, centre crop to a square,
3. centre crop to ``image_size``,
4. scale to [0, 1] and standardise with the model's ``mean`` and ``std``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainables import (
    CheckpointError,
    DataError,
    PhotoSource,
    Progress,
    build_model,
    decode_files,
    decode_rels,
    eval_transform,
    find_decoded,
    forward_batch,
    load_state,
    normalization,
    normalize,
    resize_for,
    scan_folder,
)
from tuner._errors import UsageError
from tuner.storage import Experiment

# Photos decoded at once, and run through the model at once: bound memory on large folders.
# Batches of 16 in channels-last on a GPU; a few photos at a time on a CPU (see
# trainables.forward_batch).
CHUNK = 256
BATCH = 16
# Larger photos go fewer at a time, so that what is in flight stays bounded whatever
# image_size an export's config.json asks for (up to 1024 px): decoded chunks of at most
# ~CHUNK_BYTES (never under BATCH photos), and batches of BATCH photos up to 256 px, then
# fewer (one photo at 1024 px).
CHUNK_BYTES = 64 << 20
_BATCH_PIXELS = BATCH * 256 * 256


def chunk_size(resize: int) -> int:
    """Photos decoded at once at ``resize`` px."""
    return max(BATCH, min(CHUNK, CHUNK_BYTES // (3 * resize * resize)))


def batch_size(image_size: int, device: torch.device | None = None) -> int:
    """Photos run through the model at once at ``image_size`` px on ``device`` (default
    the CPU, where they go a few at a time: :func:`trainables.forward_batch`)."""
    device = device or torch.device("cpu")
    return forward_batch(image_size, device, max(1, min(BATCH, _BATCH_PIXELS // image_size**2)))


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes a model input (the numbers written to an export's config.json)."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def resize(self) -> int:
        """The shorter side is resized to this before the centre crop to ``image_size``."""
        return resize_for(self.image_size)

    @classmethod
    def for_model(cls, model: Any, image_size: int) -> Preprocessing:
        """The preprocessing a trial of ``model`` at ``image_size`` was validated with."""
        mean, std = normalization(model)
        return cls(int(image_size), tuple(mean), tuple(std))

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "resize": self.resize,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class Classified:
    """A model's logits for the readable files of a list, and why the others failed."""

    logits: torch.Tensor  # (len(ok), n_classes) float32, in the order of ``ok``
    ok: list[int]  # index into the list of each row of ``logits``
    failed: dict[int, str]  # index into the list -> reason


@torch.no_grad()
def classify(
    model: Callable[[torch.Tensor], torch.Tensor],
    paths: Sequence[str | Path],
    prep: Preprocessing,
    source: PhotoSource | None = None,
    device: torch.device | None = None,
) -> Classified:
    """fp32 logits (on the CPU) of ``model`` (in eval mode) for each readable photo of
    ``paths``, its batches sent to ``device`` (the model's; default: left on the CPU).

    Photos are decoded :func:`chunk_size` at a time (in parallel), or read from the
    decoded photos of ``source`` when a search decoded them at this size, and run
    :func:`batch_size` at a time, so memory stays bounded for any number of files and
    any image size (the logits kept are 4 bytes per photo and class). An unreadable
    file is reported in ``failed``, never raised.
    """
    crop = eval_transform(prep.image_size)
    logits: list[torch.Tensor] = []
    ok: list[int] = []
    failed: dict[int, str] = {}
    names = [str(p) for p in paths]
    progress = Progress(len(names), "classifying", "photo", quiet=len(names) <= CHUNK)
    step, batch = chunk_size(prep.resize), batch_size(prep.image_size, device)
    # Photos of a source decoded at this size before (a search's) are read from its map.
    stored = find_decoded(source, names, prep.resize) if source is not None else None
    for start in range(0, len(paths), step):
        chunk = names[start : start + step]
        if stored is not None:
            at = stored.rows[start : start + step]
            raw = stored.pixels.array()[np.maximum(at, 0)]
            bad = {i - start: r for i, r in stored.failed.items() if start <= i < start + step}
        elif source is None:
            raw, bad, _ = decode_files(chunk, prep.resize)
        else:
            raw, bad, _ = decode_rels(source, chunk, prep.resize)
        failed.update({start + i: reason for i, reason in bad.items()})
        rows = [i for i in range(len(raw)) if i not in bad]
        ok += [start + i for i in rows]
        for b in range(0, len(rows), batch):
            images = crop(torch.from_numpy(raw[rows[b : b + batch]]))
            if device is not None:  # uint8 pixels travel; the device standardises them
                images = images.to(device)
            x = normalize(images, prep.mean, prep.std, torch.float32)
            logits.append(model(x.contiguous(memory_format=torch.channels_last)).float().cpu())
        progress.update(len(chunk))
    progress.close()
    return Classified(torch.cat(logits) if logits else torch.empty(0, 0), ok, failed)


def classify_labelled(
    model: Callable[[torch.Tensor], torch.Tensor],
    root: PhotoSource,
    files: Sequence[tuple[str, int]],
    prep: Preprocessing,
) -> tuple[Classified, torch.Tensor]:
    """:func:`classify` over ``(path under root, label)`` pairs, and the labels of the
    rows it could read (in the order of ``logits``)."""
    result = classify(model, [p for p, _ in files], prep, root)
    return result, torch.tensor([files[i][1] for i in result.ok], dtype=torch.long)


@dataclass(kw_only=True)
class RankedTrial:
    """The best checkpoint of one ranked trial, loaded as an eval-mode fp32 model."""

    experiment: Experiment
    rank: int
    trial_id: str
    val_acc: float | None
    best_epoch: int
    checkpoint: str  # the folder, as the leaderboard names it (a path or a URI)
    config: dict[str, Any]
    classes: list[str]
    model: nn.Module
    preprocessing: Preprocessing


def load_checkpoint(exp: Experiment, folder: str) -> dict[str, Any]:
    """The state in the checkpoint ``folder`` of ``exp`` (a path or URI the leaderboard
    gives), read through Ray's ``Checkpoint`` (a remote one is downloaded first)."""
    from ray.tune import Checkpoint

    checkpoint = Checkpoint(exp.storage.path(exp.storage.relative(folder)), exp.storage.fs)
    with checkpoint.as_directory() as local:
        return load_state(Path(local))


def model_from_state(state: dict[str, Any], n_classes: int) -> nn.Module:
    """The eval-mode model a checkpoint state holds, channels-last as :func:`classify`
    feeds it."""
    cfg = state["config"]
    model = build_model(cfg["model"], n_classes, pretrained=False, image_size=cfg["image_size"])
    model.load_state_dict(state["model"])
    return model.eval().to(memory_format=torch.channels_last)


def load_ranked_trial(exp: Experiment, rank: int, board: pd.DataFrame) -> RankedTrial:
    """Load the best checkpoint of the ``rank``-th trial of ``board``, the leaderboard of
    ``exp`` (1 = best)."""
    if not 1 <= rank <= len(board):
        raise UsageError(
            f"rank {rank} is out of range: experiment {exp.name!r} has {len(board)} trial(s)"
        )
    row = board.iloc[rank - 1]
    trial_id = str(row["trial_id"])
    if pd.isna(row["checkpoint"]) or not str(row["checkpoint"]):
        raise UsageError(
            f"trial {trial_id} (rank {rank}, status {row['status']}) has no checkpoint to load"
        )
    folder = str(row["checkpoint"])
    try:
        state = load_checkpoint(exp, folder)
    except (CheckpointError, FileNotFoundError) as exc:
        raise UsageError(f"trial {trial_id} (rank {rank}): {exc}") from None
    cfg = dict(state["config"])
    classes = [str(c) for c in state["classes"]]
    model = model_from_state(state, len(classes))
    val_acc = float(row["val_acc"])
    return RankedTrial(
        experiment=exp,
        rank=rank,
        trial_id=trial_id,
        val_acc=val_acc if math.isfinite(val_acc) else None,
        best_epoch=int(row["best_epoch"]),
        checkpoint=folder,
        config=cfg,
        classes=classes,
        model=model,
        preprocessing=Preprocessing.for_model(cfg["model"], cfg["image_size"]),
    )


def classification_metrics(
    labels: Sequence[int], predicted: Sequence[int], classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/support and the confusion matrix.

    Rows of the confusion matrix are true classes, columns predicted ones,
    both in ``classes`` order. A class never predicted has precision 0.
    """
    k = len(classes)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(
        matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1
    )
    correct = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    per_class = {
        name: {
            "precision": float(correct[i] / predicted_count[i]) if predicted_count[i] else 0.0,
            "recall": float(correct[i] / support[i]) if support[i] else 0.0,
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    n = int(matrix.sum())
    return {
        "accuracy": float(correct.sum() / n) if n else 0.0,
        "n_images": n,
        "classes": list(classes),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def experiment_split(trial: RankedTrial) -> Any:
    split = trial.experiment.split()
    if list(trial.classes) != list(split.classes):
        raise UsageError(
            f"checkpoint {trial.checkpoint} was trained on classes {trial.classes}, "
            f"not the experiment's {list(split.classes)}"
        )
    return split


def evaluate_folder(trial: RankedTrial, data_dir: str | Path) -> dict[str, Any]:
    """Metrics of ``trial`` on a labelled ImageFolder tree with the experiment's classes."""
    expected = experiment_split(trial).classes
    try:
        scan = scan_folder(data_dir)
    except DataError as exc:
        raise UsageError(f"data: {exc}") from None
    if list(scan.classes) != list(expected):
        missing = sorted(set(expected) - set(scan.classes))
        extra = sorted(set(scan.classes) - set(expected))
        raise UsageError(
            f"the classes of {data_dir} differ from the experiment's: "
            f"missing {', '.join(missing) or '(none)'}; extra {', '.join(extra) or '(none)'}"
        )
    skipped = [{"path": s.path, "reason": s.reason} for s in scan.skipped]
    return _evaluate_files(trial, scan.root, scan.files, skipped, str(data_dir))


def evaluate_test_split(trial: RankedTrial) -> dict[str, Any]:
    """Metrics of ``trial`` on its experiment's test split (photos no trial saw)."""
    split = experiment_split(trial)
    if not split.test:
        raise UsageError(
            f"experiment {trial.experiment.name!r} holds no test split (it was searched with "
            "--test-fraction 0); give a labelled photo folder with --data DIR"
        )
    return _evaluate_files(trial, split.root, split.test, [], "the test split")


def _evaluate_files(
    trial: RankedTrial,
    root: PhotoSource,
    files: Sequence[tuple[str, int]],
    skipped: list[dict[str, str]],
    where: str,
) -> dict[str, Any]:
    result, labels = classify_labelled(trial.model, root, files, trial.preprocessing)
    skipped = skipped + [
        {"path": files[i][0], "reason": r} for i, r in sorted(result.failed.items())
    ]
    if not result.ok:
        raise UsageError(f"{where} holds no readable photos ({len(skipped)} file(s) skipped)")
    predicted = result.logits.argmax(1).tolist()
    return {
        **classification_metrics(labels.tolist(), predicted, trial.classes),
        "skipped": skipped,
        "trial_id": trial.trial_id,
        "checkpoint": str(trial.checkpoint),
    }
