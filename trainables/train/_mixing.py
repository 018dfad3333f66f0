"""Mixup and CutMix: each training batch mixed with a permutation of itself, soft targets.

``mixup = a > 0``: per batch, ``lam ~ Beta(a, a)`` and every input becomes
``lam * x + (1 - lam) * x[perm]`` (a random pairing of the batch).
``cutmix = a > 0``: per batch, ``lam ~ Beta(a, a)`` and a box of about
``1 - lam`` of the area, at a uniform centre (clipped to the frame), is pasted
from ``x[perm]`` into every input; ``lam`` is then corrected to the exact
share of the frame left outside the box. With both on, each batch picks one
of them with probability 1/2 (as timm does). The targets become class
probabilities, ``lam * onehot(y) + (1 - lam) * onehot(y[perm])``, which
``nn.CrossEntropyLoss`` takes as they are (label smoothing included).

Every draw (the choice, ``lam``, the pairing, the box) comes from the
epoch's CPU generator, after that batch's augmentation draws, so a seed
gives the same batches on any device and a resumed trial draws what the
uninterrupted one did. With both keys at 0 nothing is drawn: training is
exactly what it was before the keys existed.

Where it mixes: whatever the trained part of the network takes as input
(:class:`trainables.TrainInputs` applies it after ``to_network``). On
photos, that is the normalised pixels (mixing normalised pixels is mixing
the pixels: normalisation is affine). With a frozen prefix whose activations
are cached, it is those activations (manifold mixup): the cache stays in
use, and the trained stages see mixes of the frozen features rather than
the features of mixed photos. CutMix on a feature map pastes the box on the
map's own grid; on pooled features (``freeze_depth = 4``: no spatial map
left) it mixes them like mixup with its own ``lam``.

Example:
    >>> import torch
    >>> mix = Mixing(mixup=0.0, cutmix=1.0, num_classes=3)
    >>> x, y = torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    >>> mixed, soft = mix(x, y, torch.Generator().manual_seed(0))
    >>> mixed.shape == x.shape, soft.shape, bool(torch.allclose(soft.sum(1), torch.ones(4)))
    (True, torch.Size([4, 3]), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from trainables.train._config import TrialConfig

MixMode = Literal["mixup", "cutmix"]


@dataclass(frozen=True)
class MixDraw:
    """One batch's draw: the mode, the pairing, the share ``lam`` of each input itself,
    and (cutmix on a map) the pasted box ``(top, bottom, left, right)``, end-exclusive."""

    mode: MixMode
    perm: torch.Tensor  # (N,) CPU: input i is mixed with input perm[i]
    lam: float
    box: tuple[int, int, int, int] | None = None


def _beta(a: float, generator: torch.Generator) -> float:
    """One draw of Beta(a, a), seeded from ``generator`` (torch's Beta takes no generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(a, a))


def _box(lam: float, h: int, w: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A box of about ``1 - lam`` of an ``h x w`` frame at a uniform centre, clipped to it."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    return top, bottom, left, right


@dataclass(frozen=True)
class Mixing:
    """Mixup and/or CutMix of training batches at the configured Beta parameters."""

    mixup: float
    cutmix: float
    num_classes: int

    @classmethod
    def for_config(cls, cfg: TrialConfig, num_classes: int) -> Mixing | None:
        """The trial's mixing, or None when both keys are 0 (batches pass untouched)."""
        if cfg.mixup <= 0 and cfg.cutmix <= 0:
            return None
        return cls(cfg.mixup, cfg.cutmix, num_classes)

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> MixDraw:
        """The random choices for batch ``x`` (N, C, H, W maps or N, F features)."""
        if self.mixup > 0 and self.cutmix > 0:
            mode: MixMode = (
                "cutmix" if float(torch.rand((), generator=generator)) < 0.5 else "mixup"
            )
        else:
            mode = "mixup" if self.mixup > 0 else "cutmix"
        lam = _beta(self.mixup if mode == "mixup" else self.cutmix, generator)
        perm = torch.randperm(len(x), generator=generator)
        if mode == "mixup" or x.dim() != 4:
            return MixDraw(mode, perm, lam)
        h, w = x.shape[-2:]
        box = _box(lam, h, w, generator)
        top, bottom, left, right = box
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        return MixDraw(mode, perm, lam, box)

    def apply(
        self, x: torch.Tensor, labels: torch.Tensor, draw: MixDraw
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed ``x``, class-probability targets) of the batch under ``draw``; ``labels``
        are class indices or already class probabilities (a distillation's targets)."""
        perm = draw.perm.to(x.device)
        partner = x.index_select(0, perm)
        if draw.box is None:
            mixed = x.mul(draw.lam).add_(partner, alpha=1.0 - draw.lam)
        else:
            top, bottom, left, right = draw.box
            mixed = x.clone()
            mixed[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        onehot = (
            labels.float() if labels.dim() == 2 else F.one_hot(labels, self.num_classes).float()
        )
        soft = onehot.mul(draw.lam).add_(onehot.index_select(0, perm), alpha=1.0 - draw.lam)
        return mixed, soft

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix batch ``x`` with class-index ``labels``, drawing from ``generator``."""
        return self.apply(x, labels, self.draw(x, generator))
