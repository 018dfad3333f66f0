"""Augmentation strength -> batched random augmentation on the batch's own device.

``aug_strength`` is one number in [0, 1]. At 0 a training photo is treated
exactly like a validation photo (:func:`eval_transform`: resize + centre crop,
deterministic). As it grows, every random component grows with it: the
random-resized-crop minimum area falls from 1 to 0.08 (aspect ratio 3/4 to
4/3), horizontal flips reach p = 0.5 and vertical flips p = 0.25, rotation
reaches 30 degrees, translation 15 %, brightness, contrast and saturation
jitter 0.4, hue 0.05 of the colour circle.

:func:`augment_batch` draws every parameter for the whole batch at once
(:func:`draw_params`, from a CPU generator, so a seed gives the same draws
on any device) and applies them with a few batched tensor operations where
the batch lives:

1. one ``affine_grid`` + ``grid_sample`` (bilinear, black outside the photo)
   maps each output pixel through its own crop, flip, rotation and
   translation back to the decoded photo;
2. one batched 3 x 3 colour matrix per photo applies brightness, contrast,
   saturation and hue (a rotation of the chroma plane in YIQ space), in
   that order, clamped once at the end.

No Python loop runs per image. :func:`normalize` converts a batch to float
with the model's mean and std.

Example:
    >>> import torch
    >>> photos = torch.randint(0, 256, (4, 3, 73, 73), dtype=torch.uint8)
    >>> plain = augment_batch(photos, 64, 0.0, torch.Generator().manual_seed(0))
    >>> bool(torch.equal(plain, eval_transform(64)(photos)))
    True
    >>> out = augment_batch(photos, 64, 1.0, torch.Generator().manual_seed(0))
    >>> out.shape, out.dtype
    (torch.Size([4, 3, 64, 64]), torch.uint8)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from trainables.data import resize_for

MAX_ROTATION_DEG = 30.0
MAX_TRANSLATE = 0.15
MAX_JITTER = 0.4
MAX_HUE = 0.05
MIN_CROP_SCALE = 0.08
CROP_RATIO_RANGE = (3 / 4, 4 / 3)
MAX_HFLIP_P = 0.5
MAX_VFLIP_P = 0.25

Transform = Callable[[torch.Tensor], torch.Tensor]

# Luma weights (torchvision's rgb_to_grayscale) and the RGB -> YIQ matrix.
_GRAY = torch.tensor([0.2989, 0.587, 0.114])
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def eval_transform(image_size: int) -> Transform:
    """Resize (shorter side to ``image_size / 0.875``) + centre crop: deterministic, as
    torchvision's ``Resize`` + ``CenterCrop``. Photos decoded at that side (every photo a
    trial sees) are only cropped, and torchvision (whose import loads torch's compiler
    stack) is imported only for others."""
    side = resize_for(image_size)

    def transform(images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if min(height, width) != side:
            from torchvision.transforms.v2 import functional as tvf

            images = tvf.resize(images, [side], antialias=True)
            height, width = images.shape[-2:]
        top = round((height - image_size) / 2.0)
        left = round((width - image_size) / 2.0)
        return images[..., top : top + image_size, left : left + image_size]

    return transform


@dataclass(frozen=True)
class AugmentParams:
    """Per-photo random parameters of one batch (CPU tensors, first dimension N)."""

    theta: torch.Tensor  # (N, 2, 3): output coordinates -> photo coordinates
    brightness: torch.Tensor  # (N,)
    contrast: torch.Tensor  # (N,)
    colour: torch.Tensor  # (N, 3, 3): saturation then hue

    def select(self, rows: torch.Tensor) -> AugmentParams:
        """The parameters of photos ``rows`` (a CPU index tensor)."""
        return AugmentParams(
            self.theta[rows], self.brightness[rows], self.contrast[rows], self.colour[rows]
        )

    def to(self, device: torch.device) -> AugmentParams:
        return AugmentParams(
            *(
                t.to(device, non_blocking=True)
                for t in (self.theta, self.brightness, self.contrast, self.colour)
            )
        )


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def draw_params(n: int, strength: float, generator: torch.Generator) -> AugmentParams:
    """Random parameters for ``n`` photos at ``strength`` (in (0, 1]) from ``generator``.

    The geometry is a crop of area ``a`` (uniform in [1 - 0.92 s, 1]) and aspect
    ``r`` (log-uniform in [3/4, 4/3]) at a uniform position, flipped, then
    rotated and translated in the output frame (as torchvision's
    RandomResizedCrop -> flips -> RandomAffine would do, composed into one map).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"aug_strength must be in (0, 1] to draw parameters, got {strength}")
    s, g = strength, generator
    area = _uniform(n, 1.0 - (1.0 - MIN_CROP_SCALE) * s, 1.0, g)
    log_r = _uniform(n, math.log(CROP_RATIO_RANGE[0]), math.log(CROP_RATIO_RANGE[1]), g)
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # fractions of the photo's side
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1.0 - w) * _uniform(n, -1.0, 1.0, g)  # normalised [-1, 1] coordinates
    cy = (1.0 - h) * _uniform(n, -1.0, 1.0, g)
    fx = torch.where(torch.rand(n, generator=g) < MAX_HFLIP_P * min(1.0, 2 * s), -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=g) < MAX_VFLIP_P * s, -1.0, 1.0)
    angle = torch.deg2rad(_uniform(n, -MAX_ROTATION_DEG * s, MAX_ROTATION_DEG * s, g))
    tx = 2 * _uniform(n, -MAX_TRANSLATE * s, MAX_TRANSLATE * s, g)
    ty = 2 * _uniform(n, -MAX_TRANSLATE * s, MAX_TRANSLATE * s, g)
    # photo = c + diag(w fx, h fy) R(angle) (out - t)
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = torch.stack(
        [
            torch.stack([w * fx * cos, -w * fx * sin], 1),
            torch.stack([h * fy * sin, h * fy * cos], 1),
        ],
        1,
    )
    t = torch.stack([tx, ty], 1).unsqueeze(2)
    b = torch.stack([cx, cy], 1).unsqueeze(2) - a @ t
    theta = torch.cat([a, b], 2).float()

    j = MAX_JITTER * s
    brightness = _uniform(n, 1.0 - j, 1.0 + j, g).float()
    contrast = _uniform(n, 1.0 - j, 1.0 + j, g).float()
    saturation = _uniform(n, 1.0 - j, 1.0 + j, g).float()
    hue = 2 * math.pi * _uniform(n, -MAX_HUE * s, MAX_HUE * s, g).float()
    eye = torch.eye(3).expand(n, 3, 3)
    sat = saturation.view(n, 1, 1) * eye + (1 - saturation).view(n, 1, 1) * _GRAY.expand(n, 3, 3)
    rot = torch.zeros(n, 3, 3)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(hue), -torch.sin(hue)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(hue), torch.cos(hue)
    hue_m = torch.linalg.inv(_YIQ) @ rot @ _YIQ
    return AugmentParams(theta, brightness, contrast, hue_m @ sat)


def apply_params(images: torch.Tensor, image_size: int, params: AugmentParams) -> torch.Tensor:
    """Warp and colour ``images`` (uint8 or float NCHW) with ``params``; same dtype out.

    uint8 photos stay in [0, 255], float photos are taken to be in [0, 1].
    """
    n = images.shape[0]
    p = params.to(images.device)
    x = images.float() if images.dtype == torch.uint8 else images
    grid = F.affine_grid(p.theta.to(x.dtype), [n, 3, image_size, image_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # brightness b, contrast c around the mean grey m, then colour M:
    # out = M (c b x + (1 - c) b m) = (c b M) x + (1 - c) b m (M 1)
    b, c = p.brightness.to(x.dtype), p.contrast.to(x.dtype)
    mean_grey = torch.einsum("c,nchw->n", _GRAY.to(x), x) / (image_size * image_size)
    m = p.colour.to(x.dtype)
    scale = (c * b).view(n, 1, 1) * m
    offset = ((1 - c) * b * mean_grey).view(n, 1, 1) * m.sum(2, keepdim=True)
    flat = torch.baddbmm(offset, scale, x.reshape(n, 3, -1))
    top = 255.0 if images.dtype == torch.uint8 else 1.0
    out = flat.clamp_(0.0, top).view(n, 3, image_size, image_size)
    if images.dtype == torch.uint8:
        return out.round_().to(torch.uint8)
    return out.to(images.dtype)


def augment_batch(
    images: torch.Tensor, image_size: int, strength: float, generator: torch.Generator
) -> torch.Tensor:
    """Augment a batch of decoded photos (NCHW) at ``strength``, each photo its own draw.

    ``strength == 0`` is exactly :func:`eval_transform`. Otherwise the
    parameters come from ``generator`` (a CPU generator; the same seed gives
    the same batch on any device) and the work runs on ``images.device``.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"aug_strength must be in [0, 1], got {strength}")
    if strength == 0.0:
        return eval_transform(image_size)(images)
    return apply_params(images, image_size, draw_params(len(images), strength, generator))


def normalize(
    batch: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 NCHW -> float ``dtype`` scaled to [0, 1] then standardised."""
    m = torch.tensor(mean, device=batch.device, dtype=torch.float32).view(1, -1, 1, 1)
    sd = torch.tensor(std, device=batch.device, dtype=torch.float32).view(1, -1, 1, 1)
    return ((batch.to(torch.float32) / 255.0 - m) / sd).to(dtype)
