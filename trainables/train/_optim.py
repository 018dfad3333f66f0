"""The optimizer and its schedule: SGD or Adam over parameter groups with per-stage
learning-rate decay, StepLR or cosine with warm-up, and an EMA of the weights."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from trainables.models import (
    params_by_depth,
)
from trainables.train._config import TrialConfig


def make_optimizer(cfg: TrialConfig, params: list[Any]) -> torch.optim.Optimizer:
    """``params``: the trainable parameters, or param groups (dicts) with their own ``lr``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def optimizer_params(cfg: TrialConfig, model: nn.Module) -> list[Any]:
    """What the optimizer gets: the trainable parameters in model order (``lr_decay`` 1),
    else one group per depth below the head, head first, at ``lr * lr_decay ** depth``.

    Frozen parameters are left out; a depth with none trainable has no group.
    """
    if cfg.lr_decay == 1.0:
        return [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": trainable, "lr": cfg.lr * cfg.lr_decay**depth}
        for depth, group in enumerate(params_by_depth(model, cfg.model))
        if (trainable := [p for p in group if p.requires_grad])
    ]


def lr_factor(cfg: TrialConfig, index: int) -> float:
    """The multiple of each group's initial lr that epoch ``index + 1`` trains at.

    Warm-up: epoch ``k`` <= ``warmup_epochs`` (W) trains at ``k / (W + 1)`` of it, a
    linear ramp that reaches the full lr at epoch W + 1. Then ``step``: StepLR's
    ``gamma ** (j // step_size)``, or ``cosine``: ``(1 + cos(pi * j / T)) / 2``,
    with ``j`` the epochs since warm-up and ``T = max_epochs - W``, so the lr would
    reach 0 just after the last epoch.
    """
    warmup = cfg.warmup_epochs
    if index < warmup:
        return (index + 1) / (warmup + 1)
    j, span = index - warmup, cfg.max_epochs - warmup
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(j, span) / span))
    return float(cfg.gamma ** (j // cfg.step_size))


def make_scheduler(
    cfg: TrialConfig, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule: a plain StepLR for ``step`` without warm-up (as always),
    else a LambdaLR of :func:`lr_factor` (its state is the epoch count, so a restored
    trial continues the same curve)."""
    if cfg.schedule == "step" and cfg.warmup_epochs == 0:
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda index: lr_factor(cfg, index))


class WeightAverage:
    """An exponential moving average of a model's trainable weights (``ema_decay`` > 0).

    A full copy of the model, in eval mode, whose trainable parameters follow
    ``ema = d * ema + (1 - d) * live`` after every optimizer step, with
    ``d = min(ema_decay, (1 + n) / (10 + n))`` at the n-th update: the usual
    warm-up of the decay (as TensorFlow's ``ExponentialMovingAverage`` with
    ``num_updates``), so a freshly initialised head is not averaged with its
    random start for hundreds of steps. Frozen parameters never change, so they
    equal the live ones (and activations a frozen prefix cached stay valid).
    Buffers (BatchNorm running statistics) are copied from the live model at
    every update, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        live = dict(model.named_parameters())
        averaged = dict(self.model.named_parameters())
        names = [n for n, p in live.items() if p.requires_grad]
        self._live: list[torch.Tensor] = [live[n] for n in names]
        self._averaged: list[torch.Tensor] = [averaged[n] for n in names]
        self._live_buffers = list(model.buffers())
        self._buffers = list(self.model.buffers())

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live weights in after an optimizer step."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._averaged, self._live, 1.0 - decay)
        for mine, theirs in zip(self._buffers, self._live_buffers, strict=True):
            mine.copy_(theirs)
