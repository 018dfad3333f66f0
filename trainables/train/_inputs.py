"""What a training step feeds the network: one input strategy per trial, chosen once.

:func:`build_inputs` looks at the trial once and returns :class:`TrainInputs`:

- **images**: the decoded photos; each batch is augmented
  (:func:`trainables.augment_batch`) on the trial's device and the whole
  network runs. Used when nothing is frozen, or when the frozen
  activations would not fit the cache limit.
- **activations**: ``aug_strength = 0`` with a frozen prefix: the prefix's
  output for every photo, computed once (from a shallower prefix's kept
  activations of the same photos when there are some); only the trainable
  parts run.
- **views**: ``aug_strength > 0`` with a frozen prefix: the prefix's output
  for V augmented views of every photo (float16, :class:`AugmentedViews`),
  computed as epochs 1..V first use them, then kept; later epochs draw one
  view per photo.

``train_size = S`` (FixRes) crops training photos at S pixels while validation
stays at ``image_size``; cached train activations (and views) are then of S-pixel
crops, under their own key. ``mixup`` / ``cutmix`` (:mod:`trainables.train._mixing`)
mix each training batch where the trained part starts: pixels for ``images``,
the cached activations otherwise (manifold mixup: the cache stays in use); a
mixed batch's labels are class probabilities. A cache with ``train_soft`` (a
distillation's targets) trains on those class probabilities instead of the labels,
mixed alike.

Photos and activations stay on the host, memory-mapped from disk
(:class:`Rows`); :func:`stream` gathers each batch's rows on a background
thread while the previous step computes, into pinned memory on a GPU, and
copies them to the device without blocking (on a side CUDA stream). So a
trial's device memory and its own host memory do not grow with the number
of photos. Labels and augmentation parameters live on the device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from trainables._progress import Progress
from trainables.data import DecodedSplit
from trainables.models import (
    STEM,
    ComputePolicy,
    frozen_output_part,
    normalization,
    pretrained_weights_file,
    run_parts,
)
from trainables.train._augment import (
    apply_params,
    augment_batch,
    draw_params,
    eval_transform,
    normalize,
)
from trainables.train._batches import Rows, forward_batch, host_tensor, stream
from trainables.train._config import TrialConfig
from trainables.train._features import (
    BATCH,
    FeatureFile,
    cache_fits,
    cache_part,
    feature_key,
    load_features,
    on_disk,
    rows_key,
    views_for,
)
from trainables.train._mixing import Mixing

InputKind = Literal["images", "activations", "views"]

# Augmented views are drawn from this seed (not the trial's), so trials share them.
_VIEW_SEED = 20_231_123


class AugmentedViews:
    """Frozen-prefix activations of V augmented views of every training photo, filled lazily.

    View ``v`` of photo ``i`` is the prefix's output on the photo augmented
    with the ``(v, i)``-th parameters of one fixed seeded draw, so it is the
    same whichever trial, epoch or batch computes it. :meth:`rows` computes
    the pairs it is asked for that are still missing, into a file mapped from
    the disk cache; once all are there, the file is kept for later trials.
    """

    def __init__(
        self,
        images: Rows,
        image_size: int,
        strength: float,
        views: int,
        prefix: Callable[[torch.Tensor], torch.Tensor],
        key: str | None,
        stored: np.ndarray | None = None,
    ) -> None:
        self.images, self.image_size, self.views = images, image_size, views
        self.prefix, self.key = prefix, key
        n = len(images)
        self.params = draw_params(views * n, strength, torch.Generator().manual_seed(_VIEW_SEED))
        self.file: FeatureFile | None = None
        self.store = host_tensor(stored) if stored is not None else None
        self.done = torch.full((views, n), stored is not None, dtype=torch.bool)
        self.complete = stored is not None

    def __len__(self) -> int:
        return self.views

    def rows(self, view: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Activations (float16, on ``device``) of view ``view[j]`` of photo ``idx[j]``."""
        view, idx = view.cpu(), idx.cpu()
        missing = None if self.complete else ~self.done[view, idx]
        if missing is not None and bool(missing.any()):
            mv, mi = view[missing], idx[missing]
            params = self.params.select(mv * len(self.images) + mi)
            photos = self.images.gather(mi).to(device)
            with torch.no_grad():
                out = self.prefix(apply_params(photos, self.image_size, params.to(device)))
            if self.store is None:
                shape = (self.views, len(self.images), *out.shape[1:])
                self.file = FeatureFile(self.key, "views", shape, np.float16)
                self.store = torch.from_numpy(self.file.array)
            self.store[mv, mi] = out.to("cpu", torch.float16)
            self.done[mv, mi] = True
            if bool(self.done.all()):
                self.complete = True
                if self.file is not None:
                    self.store = host_tensor(self.file.keep())
        assert self.store is not None
        return self.store[view, idx].to(device)


@dataclass(frozen=True, kw_only=True)
class TrainInputs:
    """A trial's training and validation inputs: host rows streamed to ``device``.

    ``train`` holds one row per training photo: decoded images (``images``,
    and the source of ``views``) or activations; ``start`` is the first part
    of the network that runs on a step's input (0: the stem, on images).
    ``train_size`` (0: ``image_size``) is the side of training crops;
    ``mixing`` (None: off) mixes each training batch and makes its labels soft.
    """

    kind: InputKind
    start: int
    train: Rows
    train_labels: torch.Tensor
    val: Rows  # decoded images (cropped per batch) or activations
    val_labels: torch.Tensor
    image_size: int
    strength: float
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    views: AugmentedViews | None = None
    train_size: int = 0
    mixing: Mixing | None = None

    @property
    def train_crop(self) -> int:
        """Side of the training crops (``image_size`` unless ``train_size`` is set)."""
        return self.train_size or self.image_size

    def __len__(self) -> int:
        return len(self.train_labels)

    def train_batches(
        self, batches: Sequence[torch.Tensor], generator: torch.Generator, epoch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(network input, labels) of each batch of training rows in ``epoch`` (1, 2, ...).

        Random draws (augmentation, which view, mixing) come from ``generator``
        in batch order, whatever is prepared ahead. Labels are class indices,
        or class probabilities (N, classes) when ``mixing`` is on or the cache has
        soft targets.
        """
        if self.views is not None:
            for idx in batches:
                yield self.train_batch(idx, generator, epoch)
            return
        for idx, rows in zip(batches, stream(self.train.gather, batches, self.device), strict=True):
            x = self._train_input(rows, generator)
            yield self._mix(x, self.train_labels[idx.to(self.device)], generator)

    def train_batch(
        self, idx: torch.Tensor, generator: torch.Generator, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, labels) of training rows ``idx`` in ``epoch``, without prefetching."""
        labels = self.train_labels[idx.to(self.device)]
        if self.views is not None:
            n_views = len(self.views)
            if epoch <= n_views:  # epoch k: view k of every photo
                view = torch.full((len(idx),), epoch - 1, dtype=torch.long)
            else:
                view = torch.randint(n_views, (len(idx),), generator=generator)
            x = self.to_network(self.views.rows(view, idx.cpu(), self.device))
            return self._mix(x, labels, generator)
        rows = self.train.gather(idx.cpu()).to(self.device)
        return self._mix(self._train_input(rows, generator), labels, generator)

    def _train_input(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.kind == "images":
            rows = augment_batch(rows, self.train_crop, self.strength, generator)
        return self.to_network(rows)

    def _mix(
        self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return (x, labels) if self.mixing is None else self.mixing(x, labels, generator)

    def val_batches(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(network input, labels) of the validation rows, ``size`` at a time, in order."""
        batches = list(torch.arange(len(self.val)).split(size))
        crop = eval_transform(self.image_size)
        for idx, rows in zip(batches, stream(self.val.gather, batches, self.device), strict=True):
            x = crop(rows) if self.kind == "images" else rows
            yield self.to_network(x), self.val_labels[idx.to(self.device)]

    def to_network(self, x: torch.Tensor) -> torch.Tensor:
        """Stored rows -> what part ``start`` takes (normalised images; fp32 activations)."""
        images = self.start == STEM
        x = normalize(x, self.mean, self.std, torch.float32) if images else x.float()
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


Prefix = Callable[..., torch.Tensor]
"""``prefix(rows, start=STEM)``: the frozen prefix's output on stored rows that go into
part ``start`` (``STEM``: photos, normalised first); it runs the frozen parts from
``start`` to the first part that trains."""


def _compute(
    prefix: Callable[[torch.Tensor], torch.Tensor],
    rows: Rows,
    inputs: TrainInputs,
    key: str | None,
    which: str,
    image_size: int | None,
) -> np.ndarray:
    """The prefix's fp32 output for every row of ``rows`` (``which``: "train", "val"):
    photos centre-cropped at ``image_size``, or a shallower prefix's activations
    (``image_size`` None), streamed batch by batch into a file of the disk cache."""
    crop = eval_transform(image_size) if image_size is not None else (lambda x: x)
    batches = list(torch.arange(len(rows)).split(forward_batch(image_size, inputs.device, BATCH)))
    out: FeatureFile | None = None
    with Progress(len(rows), f"frozen activations ({which})", "photo") as progress:
        for idx, photos in zip(batches, stream(rows.gather, batches, inputs.device), strict=True):
            with torch.no_grad():
                features = prefix(crop(photos)).float().cpu().numpy()
            if out is None:
                out = FeatureFile(key, "plain", (len(rows), *features.shape[1:]), np.float32)
            out.array[int(idx[0]) : int(idx[-1]) + 1] = features
            progress.update(len(idx))
    assert out is not None
    return out.keep()


@dataclass(frozen=True)
class _Plain:
    """The plain activations (centre crops at ``size`` px) of the prefix frozen to
    ``depth``, found in the disk cache or computed: ``key_at(depth, rows)`` keys them
    (None: no key, held in memory)."""

    prefix: Prefix
    pixels: np.ndarray
    inputs: TrainInputs
    depth: int
    size: int
    key_at: Callable[[int, np.ndarray], str | None]

    def of(self, runs: list[np.ndarray], which: str) -> np.ndarray:
        """The activations of the rows ``runs`` put end to end: the disk cache's entry for
        those rows; else, for several runs (a refit's train slot), each run's own entry (a
        missing one computed and kept) copied together; else computed."""
        rows = np.concatenate(runs) if len(runs) > 1 else runs[0]
        key = self.key_at(self.depth, rows)
        stored = load_features(key, "plain", (len(rows),))
        if stored is not None:
            return stored
        if len(runs) == 1 or not on_disk(key is not None):  # in memory: never two copies
            return self.computed(rows, key, which)
        parts = []
        for run in runs:
            run_key = self.key_at(self.depth, run)
            part = load_features(run_key, "plain", (len(run),))
            if part is None:
                part = self.computed(run, run_key, which)
            parts.append(part)
        out = FeatureFile(key, "plain", (len(rows), *parts[0].shape[1:]), np.float32)
        at = 0
        for part in parts:
            out.array[at : at + len(part)] = part
            at += len(part)
        return out.keep()

    def computed(self, rows: np.ndarray, key: str | None, which: str) -> np.ndarray:
        """Computed from the deepest shallower prefix's entry of these rows (only the frozen
        stages past it run), or from the photos."""
        for shallower in range(self.depth - 1, 0, -1) if key is not None else ():
            source = load_features(self.key_at(shallower, rows), "plain", (len(rows),))
            if source is not None:
                rest = functools.partial(self.prefix, start=frozen_output_part(shallower))
                return _compute(rest, Rows(source), self.inputs, key, which, None)
        photos = Rows(self.pixels, rows)
        return _compute(self.prefix, photos, self.inputs, key, which, self.size)


def build_inputs(
    cfg: TrialConfig, data: DecodedSplit, model: nn.Module, precision: ComputePolicy
) -> TrainInputs:
    """Choose and prepare the trial's inputs for ``precision.device`` (see the module doc).

    ``model`` must already be on that device and frozen to ``cfg.freeze_depth``.
    """
    device = precision.device
    data = data.decoded_here()
    mean, std = normalization(cfg.model)
    pixels = data.pixels.array()
    train_y, val_y = (
        torch.tensor(y, dtype=torch.long, device=device) for y in (data.train_y, data.val_y)
    )
    if data.train_soft is not None:
        train_y = torch.tensor(data.train_soft, dtype=torch.float32, device=device)
    train, val = Rows(pixels, data.train_rows), Rows(pixels, data.val_rows)
    mixing = Mixing.for_config(cfg, len(data.classes))
    images = TrainInputs(
        kind="images",
        start=STEM,
        train=train,
        train_labels=train_y,
        val=val,
        val_labels=val_y,
        image_size=cfg.image_size,
        strength=cfg.aug_strength,
        mean=mean,
        std=std,
        device=device,
        train_size=cfg.train_size,
        mixing=mixing,
    )
    part = cache_part(cfg)
    if part is None or not len(val):
        return images

    def prefix(batch: torch.Tensor, start: int = STEM) -> torch.Tensor:
        x = dataclasses.replace(images, start=start).to_network(batch)
        with precision.autocast():
            out: torch.Tensor = run_parts(model, cfg.model, x, start, part)
        return out

    model.eval()  # frozen modules stay in eval mode for training too
    with torch.no_grad():
        one = eval_transform(cfg.image_size)(val.gather(torch.arange(1)).to(device))
        per_photo = prefix(one).numel()
    views = views_for(cfg)
    weights = pretrained_weights_file(cfg.model).name if cfg.pretrained else None
    if not cache_fits(per_photo, len(train_y), len(val_y), views, on_disk(weights is not None)):
        return images

    def plain(size: int) -> _Plain:
        def key_at(depth: int, rows: np.ndarray) -> str | None:
            if weights is None:
                return None
            return rows_key(cfg, data, weights, rows, size, precision.name, depth)

        return _Plain(prefix, pixels, images, cfg.freeze_depth, size, key_at)

    val_f = plain(cfg.image_size).of([data.val_rows], "val")
    if views:
        key = feature_key(cfg, data, weights, precision.name) if weights else None
        stored = load_features(key, "views", (views, len(train_y)))
        lazy = AugmentedViews(
            train, images.train_crop, cfg.aug_strength, views, prefix, key, stored
        )
        return dataclasses.replace(images, kind="views", start=part, val=Rows(val_f), views=lazy)
    crop = images.train_crop
    train_f = plain(crop).of(data.train_runs(), "train")
    return dataclasses.replace(
        images, kind="activations", start=part, train=Rows(train_f), val=Rows(val_f)
    )
