"""Test-time augmentation: the mean of a model's class probabilities on a photo and on its
horizontal mirror, kept only where it raises the validation accuracy.

:class:`FlipAverage` is plain tensor operations (``torch.flip`` on the width axis, one
forward pass over the photos and their mirrors together), so ``torch.jit.trace``,
``torch.export`` and the ONNX exporter all take it in: ``model.ts``, ``model.onnx`` and
``model.pt2`` of a ``tta: flip`` export include it, and ``predict`` wraps the model it
builds from ``model.pt`` in it (``config.json`` ``"tta"``; absent means ``"none"``).

Probabilities are averaged, as an ensemble's members are (:mod:`tuner.results._ensemble`),
and returned as log-probabilities, so whatever applies ``softmax`` to a model's output
gets that mean unchanged.

``export --tta auto`` (:func:`choose_tta`) scores the model with and without the mirror
on the experiment's validation split and keeps the mirror only if it classifies strictly
more validation photos correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tuner.results._bounds import TTA_MODES  # what an export records, predict applies
from tuner.results._inference import Preprocessing, classify_labelled

TTA_CHOICES = (*TTA_MODES, "auto")  # what export --tta takes


def _both_views(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s probabilities on the NCHW batch ``x`` and on its mirror, from one pass
    over both (sliced by the batch size: a dynamic batch dimension stays dynamic)."""
    n = x.shape[0]
    both = model(torch.cat([x, torch.flip(x, dims=[3])])).float().softmax(1)
    return both[:n], both[n:]


class FlipAverage(nn.Module):
    """Mean of ``model``'s softmax probabilities on the NCHW batch and on its mirror (the
    width axis reversed), as log-probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain, mirrored = _both_views(self.model, x)
        return ((plain + mirrored) * 0.5).clamp_min(1e-12).log()


class _BothViews(nn.Module):
    """``model``'s probabilities on the batch and on its mirror side by side (N x 2C): one
    pass that scores both choices of :func:`choose_tta`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(_both_views(self.model, x), dim=1)


def apply_tta(model: nn.Module, mode: str) -> nn.Module:
    """``model`` with the test-time augmentation ``mode`` (one of :data:`TTA_MODES`)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}")
    return FlipAverage(model).eval() if mode == "flip" else model


@dataclass(frozen=True, kw_only=True)
class TtaChoice:
    """The test-time augmentation an export applies, and how it was chosen."""

    mode: str  # "none" or "flip"
    requested: str  # "none", "flip" or "auto"
    val_acc_none: float | None = None  # scored only for "auto"
    val_acc_flip: float | None = None
    n_val: int = 0
    scored: str = "the model"  # which model the validation photos scored

    def to_config(self) -> dict[str, Any]:
        """The ``config.json`` keys: ``tta`` (what predict applies) and ``tta_choice``."""
        choice: dict[str, Any] = {"requested": self.requested}
        if self.val_acc_none is not None:
            choice |= {
                "val_acc": {"none": self.val_acc_none, "flip": self.val_acc_flip},
                "n_val_photos": self.n_val,
                "scored": self.scored,
            }
        return {"tta": self.mode, "tta_choice": choice}

    def line(self) -> str:
        """One line saying what was chosen and why."""
        if self.requested != "auto":
            return f"Test-time augmentation: {self.mode} (--tta {self.requested})"
        if self.val_acc_none is None or self.val_acc_flip is None:
            return "Test-time augmentation: none (--tta auto: no validation photo could be read)"
        verb = "raises" if self.mode == "flip" else "does not raise"
        return (
            f"Test-time augmentation: {self.mode} (--tta auto: the flip average {verb} val_acc "
            f"on {self.n_val} photos: {self.val_acc_none:.4f} without, "
            f"{self.val_acc_flip:.4f} with)"
        )


def choose_tta(
    requested: str,
    model: nn.Module,
    split: Any,
    prep: Preprocessing,
    scored: str = "the model",
) -> TtaChoice:
    """``requested`` (``none`` / ``flip``) as is, or for ``auto`` the flip average if it
    classifies strictly more of ``split``'s validation photos correctly than ``model``
    alone (``scored`` names ``model`` in ``config.json``)."""
    if requested not in TTA_CHOICES:
        raise ValueError(f"unknown --tta {requested!r}")
    if requested != "auto":
        return TtaChoice(mode=requested, requested=requested)
    files: Sequence[tuple[str, int]] = split.val
    result, labels = classify_labelled(_BothViews(model).eval(), split.root, files, prep)
    if not result.ok:
        return TtaChoice(mode="none", requested="auto")
    plain, mirrored = result.logits.chunk(2, dim=1)
    acc_none = float((plain.argmax(1) == labels).float().mean())
    acc_flip = float(((plain + mirrored).argmax(1) == labels).float().mean())
    mode = "flip" if acc_flip > acc_none else "none"
    return TtaChoice(
        mode=mode,
        requested="auto",
        val_acc_none=acc_none,
        val_acc_flip=acc_flip,
        n_val=len(result.ok),
        scored=scored,
    )
