"""What a training step feeds the network: one input strategy per trial, chosen once.

:func:`build_inputs` looks at the trial once and returns :class:`TrainInputs`:

- **images**: the decoded photos; each batch is augmented
  (:func:`trainables.augment_batch`) on the trial's device and the whole
  network runs. Used when nothing is frozen, or when the frozen
  activations would not fit the cache limit.
- **activations**: ``aug_strength = 0`` with a frozen prefix: the prefix's
  output for every photo, computed once; only the trainable parts run.
- **views**: ``aug_strength > 0`` with a frozen prefix: the prefix's output
  for V augmented views of every photo (float16, :class:`AugmentedViews`),
  computed as epochs 1..V first use them, then kept; later epochs draw one
  view per photo.

Every tensor a step indexes or combines (photos or activations, labels, the
per-epoch order) lives on ``precision.device``: this module moves them there,
in one place, whatever device they were decoded, computed or loaded on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from trainables._augment import apply_params, augment_batch, draw_params, eval_transform, normalize
from trainables._config import TrialConfig
from trainables._data import ImageCache
from trainables._features import (
    cache_fits,
    cache_part,
    cached_features,
    feature_key,
    in_batches,
    load_features,
    store_features,
    views_for,
)
from trainables._models import STEM, normalization, pretrained_weights_file, run_parts
from trainables._precision import Precision

InputKind = Literal["images", "activations", "views"]

# Augmented views are drawn from this seed (not the trial's), so trials share them.
_VIEW_SEED = 20_231_123


def _on(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor of ``array`` on ``device``; on the CPU a view of it, without a copy."""
    with warnings.catch_warnings():
        # The object store maps arrays read-only; nothing here writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array)).to(device)


class AugmentedViews:
    """Frozen-prefix activations of V augmented views of every training photo, filled lazily.

    View ``v`` of photo ``i`` is the prefix's output on the photo augmented
    with the ``(v, i)``-th parameters of one fixed seeded draw, so it is the
    same whichever trial, epoch or batch computes it. :meth:`rows` computes
    the pairs it is asked for that are still missing; once all are there,
    ``on_complete`` gets the full tensor (to keep it on disk).
    """

    def __init__(
        self,
        images: torch.Tensor,
        image_size: int,
        strength: float,
        views: int,
        prefix: Callable[[torch.Tensor], torch.Tensor],
        on_complete: Callable[[torch.Tensor], None],
        stored: torch.Tensor | None = None,
    ) -> None:
        self.images, self.image_size, self.views = images, image_size, views
        self.prefix, self.on_complete = prefix, on_complete
        n, device = len(images), images.device
        self.params = draw_params(views * n, strength, torch.Generator().manual_seed(_VIEW_SEED))
        self.store = stored.to(device) if stored is not None else None
        self.done = torch.full((views, n), stored is not None, dtype=torch.bool, device=device)
        self.complete = stored is not None

    def __len__(self) -> int:
        return self.views

    def rows(self, view: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Activations (float16) of view ``view[j]`` of photo ``idx[j]`` for every j."""
        missing = None if self.complete else ~self.done[view, idx]
        if missing is not None and bool(missing.any()):
            mv, mi = view[missing], idx[missing]
            flat = (mv * len(self.images) + mi).cpu()
            params = self.params.select(flat)
            with torch.no_grad():
                out = self.prefix(apply_params(self.images[mi], self.image_size, params))
            if self.store is None:
                shape = (self.views, len(self.images), *out.shape[1:])
                self.store = torch.empty(shape, dtype=torch.float16, device=out.device)
            self.store[mv, mi] = out.to(torch.float16)
            self.done[mv, mi] = True
            if bool(self.done.all()):
                self.complete = True
                self.on_complete(self.store)
        assert self.store is not None
        return self.store[view, idx]


@dataclass(frozen=True)
class TrainInputs:
    """A trial's training and validation inputs, all on one device.

    ``train`` holds one row per training photo: decoded images (``images``,
    and the source of ``views``) or activations; ``start`` is the first part
    of the network that runs on a step's input (0: the stem, on images).
    """

    kind: InputKind
    start: int
    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    image_size: int
    strength: float
    mean: Sequence[float]
    std: Sequence[float]
    views: AugmentedViews | None = None

    @property
    def device(self) -> torch.device:
        return self.train.device

    def __len__(self) -> int:
        return len(self.train_labels)

    def train_batch(
        self, idx: torch.Tensor, generator: torch.Generator, epoch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, labels) of training rows ``idx`` in ``epoch`` (1, 2, ...).

        Random draws (augmentation, which view) come from ``generator``.
        """
        idx = idx.to(self.device)
        if self.views is not None:
            n_views = len(self.views)
            if epoch <= n_views:  # epoch k: view k of every photo
                view = torch.full((len(idx),), epoch - 1, dtype=torch.long)
            else:
                view = torch.randint(n_views, (len(idx),), generator=generator)
            x = self.to_network(self.views.rows(view.to(self.device), idx))
        elif self.kind == "images":
            images = augment_batch(self.train[idx], self.image_size, self.strength, generator)
            x = self.to_network(images)
        else:
            x = self.to_network(self.train[idx])
        return x, self.train_labels[idx]

    def to_network(self, x: torch.Tensor) -> torch.Tensor:
        """Stored rows -> what part ``start`` takes (normalised images; fp32 activations)."""
        images = self.kind == "images"
        x = normalize(x, self.mean, self.std, torch.float32) if images else x.float()
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def build_inputs(
    cfg: TrialConfig, data: ImageCache, model: nn.Module, precision: Precision
) -> TrainInputs:
    """Choose and prepare the trial's inputs on ``precision.device`` (see the module doc).

    ``model`` must already be on that device and frozen to ``cfg.freeze_depth``.
    """
    device = precision.device
    mean, std = normalization(cfg.model)
    train_x, train_y, val_y = (_on(a, device) for a in (data.train_x, data.train_y, data.val_y))
    val_x = eval_transform(cfg.image_size)(_on(data.val_x, device))
    images = TrainInputs(
        "images", STEM, train_x, train_y, val_x, val_y, cfg.image_size, cfg.aug_strength,
        mean, std,
    )  # fmt: skip
    part = cache_part(cfg)
    if part is None:
        return images

    def prefix(batch: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            out: torch.Tensor = run_parts(model, cfg.model, images.to_network(batch), STEM, part)
        return out

    model.eval()  # frozen modules stay in eval mode for training too
    with torch.no_grad():
        per_photo = prefix(val_x[:1]).numel()
    views = views_for(cfg)
    if not cache_fits(per_photo, len(train_y), len(val_y), views):
        return images

    weights = pretrained_weights_file(cfg.model).name if cfg.pretrained else None
    key = feature_key(cfg, data, weights) if weights else None
    n = len(train_y)
    if views:
        stored = load_features(key, ((views, n), (len(val_y),)))
        val_f = stored[1] if stored else in_batches(prefix, val_x, torch.float32)
        lazy = AugmentedViews(
            train_x, cfg.image_size, cfg.aug_strength, views, prefix,
            lambda train_f: store_features(key, train_f, val_f),
            stored=stored[0] if stored else None,
        )  # fmt: skip
        return TrainInputs(
            "views", part, train_x, train_y, val_f.to(device), val_y, cfg.image_size,
            cfg.aug_strength, mean, std, views=lazy,
        )  # fmt: skip
    train_f, val_f = cached_features(
        key,
        lambda: in_batches(prefix, eval_transform(cfg.image_size)(train_x), torch.float32),
        lambda: in_batches(prefix, val_x, torch.float32),
        ((n,), (len(val_y),)),
    )
    return TrainInputs(
        "activations", part, train_f.to(device), train_y, val_f.to(device), val_y,
        cfg.image_size, cfg.aug_strength, mean, std,
    )  # fmt: skip
