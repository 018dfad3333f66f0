"""What a training step feeds the network: one input strategy per trial, chosen once.

:func:`build_inputs` looks at the trial once and returns :class:`TrainInputs`:

- **images**: the decoded photos; each batch is augmented
  (:func:`trainables.augment_batch`) on the trial's device and the whole
  network runs. Used when nothing is frozen, or when the frozen
  activations would not fit the cache limit.
- **activations**: ``aug_strength = 0`` with a frozen prefix: the prefix's
  output for every photo, computed once; only the trainable parts run.
- **views**: ``aug_strength > 0`` with a frozen prefix: the prefix's output
  for a few augmented views of every photo, computed once (float16); each
  epoch draws one view per photo.

Every tensor a step indexes or combines (photos or activations, labels, the
per-epoch order) lives on ``precision.device``: this module moves them there,
in one place, whatever device they were decoded, computed or loaded on.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from trainables._augment import augment_batch, eval_transform, normalize
from trainables._config import TrialConfig
from trainables._data import ImageCache
from trainables._features import (
    cache_fits,
    cache_part,
    cached_features,
    feature_key,
    in_batches,
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


@dataclass(frozen=True)
class TrainInputs:
    """A trial's training and validation inputs, all on one device.

    ``train`` holds one row per training photo (``views``: one per view and
    photo, shape ``(V, N, ...)``); ``start`` is the first part of the
    network that runs on them (0: the stem, on images).
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

    @property
    def device(self) -> torch.device:
        return self.train.device

    def __len__(self) -> int:
        return len(self.train_labels)

    def train_batch(
        self, idx: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, labels) of training rows ``idx``; random draws from ``generator``."""
        idx = idx.to(self.device)
        if self.kind == "images":
            images = augment_batch(self.train[idx], self.image_size, self.strength, generator)
            x = self.to_network(images)
        elif self.kind == "views":
            view = torch.randint(len(self.train), (len(idx),), generator=generator)
            x = self.to_network(self.train[view.to(self.device), idx])
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

    def compute_train() -> torch.Tensor:
        if not views:
            return in_batches(prefix, eval_transform(cfg.image_size)(train_x), torch.float32)
        generator = torch.Generator().manual_seed(_VIEW_SEED)
        return torch.stack(
            [
                in_batches(
                    lambda b: prefix(augment_batch(b, cfg.image_size, cfg.aug_strength, generator)),
                    train_x,
                    torch.float16,
                )
                for _ in range(views)
            ]
        )

    weights = pretrained_weights_file(cfg.model).name if cfg.pretrained else None
    key = feature_key(cfg, data, weights) if weights else None
    rows = (views, len(train_y)) if views else (len(train_y),)
    train_f, val_f = cached_features(
        key,
        compute_train,
        lambda: in_batches(prefix, val_x, torch.float32),
        (rows, (len(val_y),)),
    )
    return TrainInputs(
        "views" if views else "activations", part, train_f.to(device), train_y,
        val_f.to(device), val_y, cfg.image_size, cfg.aug_strength, mean, std,
    )  # fmt: skip
