"""Augmentation strength -> a torchvision transforms v2 pipeline.

``aug_strength`` is one number in [0, 1]. At 0 a training photo is treated
exactly like a validation photo (resize + centre crop, deterministic). As it
grows, every random transform grows with it: the random-resized-crop minimum
scale falls from 1 to 0.08, horizontal flips reach p = 0.5 and vertical flips
p = 0.25, rotation reaches 30 degrees, translation 15 %, colour jitter 0.4
(hue 0.05).

The transforms run on the decoded uint8 tensors of the in-memory cache;
:func:`normalize` converts a batch to float with the model's mean and std.

Example:
    >>> import torch
    >>> photo = torch.randint(0, 256, (3, 73, 73), dtype=torch.uint8)
    >>> eval_tf = build_transform(64, strength=0.0)
    >>> bool(torch.equal(eval_tf(photo), eval_tf(photo)))
    True
    >>> build_transform(64, strength=1.0)(photo).shape
    torch.Size([3, 64, 64])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from trainables._data import cache_size_for

MAX_ROTATION_DEG = 30.0
MAX_TRANSLATE = 0.15
MAX_JITTER = 0.4
MAX_HUE = 0.05
MIN_CROP_SCALE = 0.08

Transform = Callable[[torch.Tensor], torch.Tensor]


def eval_transform(image_size: int) -> Transform:
    """Resize (shorter side to ``image_size / 0.875``) + centre crop: deterministic."""
    return v2.Compose(
        [
            v2.Resize(cache_size_for(image_size), antialias=True),
            v2.CenterCrop(image_size),
        ]
    )


def build_transform(image_size: int, strength: float) -> Transform:
    """The training transform for ``aug_strength = strength``.

    ``strength == 0`` returns :func:`eval_transform`; anything larger is
    random, with every component scaled by ``strength``.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"aug_strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return eval_transform(image_size)
    s = strength
    min_scale = 1.0 - (1.0 - MIN_CROP_SCALE) * s
    steps: list[Transform] = [
        v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
        v2.RandomHorizontalFlip(p=0.5 * min(1.0, 2 * s)),
        v2.RandomVerticalFlip(p=0.25 * s),
        v2.RandomAffine(
            degrees=MAX_ROTATION_DEG * s,
            translate=(MAX_TRANSLATE * s, MAX_TRANSLATE * s),
        ),
        v2.ColorJitter(
            brightness=MAX_JITTER * s,
            contrast=MAX_JITTER * s,
            saturation=MAX_JITTER * s,
            hue=MAX_HUE * s,
        ),
    ]
    return v2.Compose(steps)


def apply_batch(transform: Transform, images: torch.Tensor) -> torch.Tensor:
    """Apply ``transform`` to each uint8 CHW image of a batch (own random draw each)."""
    return torch.stack([transform(img) for img in images])


def normalize(
    batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 NCHW -> float ``dtype`` scaled to [0, 1] then standardised."""
    m = torch.tensor(mean, device=batch.device, dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(std, device=batch.device, dtype=torch.float32).view(1, -1, 1, 1)
    return ((batch.to(torch.float32) / 255.0 - m) / sd).to(dtype)
