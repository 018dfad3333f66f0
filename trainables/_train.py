"""The training loop: fine-tune one configuration, report every epoch, checkpoint, resume.

:func:`fit` knows nothing of Ray: it takes a report callback, so it is
testable and reusable outside Tune (:func:`trainables.train_classifier` wraps
it for Tune). One reading follows a learning rate from the config to the
optimizer: :func:`fit` builds the model and the :class:`Training` state
(optimizer, StepLR, grad scaler), the input strategy
(:func:`trainables.build_inputs`), then alternates :func:`train_epoch` and
:func:`evaluate`.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables._checkpoint import save_state
from trainables._config import TrialConfig
from trainables._data import ImageCache
from trainables._inputs import TrainInputs, build_inputs
from trainables._models import build_model, freeze, run_parts, set_train_mode
from trainables._precision import ComputePolicy, choose_precision, default_device, prepare_device

# How often (in steps) the loss is checked for NaN/inf during an epoch.
_DIVERGENCE_CHECK_EVERY = 10
_EVAL_BATCH = 128

Report = Callable[[dict[str, Any], Path], None]


def _make_optimizer(cfg: TrialConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class Training:
    """What a step changes and a checkpoint keeps: model, optimizer, schedule, scaler."""

    cfg: TrialConfig
    model: nn.Module
    frozen: list[nn.Module]
    precision: ComputePolicy
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    epoch: int = 0
    best_val_acc: float = 0.0

    @classmethod
    def start(cls, cfg: TrialConfig, num_classes: int, precision: ComputePolicy) -> Training:
        """A fresh model (frozen to ``cfg.freeze_depth``) on the precision's device."""
        model = build_model(cfg.model, num_classes, cfg.pretrained, cfg.image_size)
        frozen = freeze(model, cfg.model, cfg.freeze_depth)
        model = model.to(precision.device).to(memory_format=torch.channels_last)
        optimizer = _make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        return cls(
            cfg, model, frozen, precision, optimizer,
            torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma),
            precision.grad_scaler(), nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        )  # fmt: skip

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Logits (fp32) of parts ``start`` .. head of the network on ``x``."""
        with self.precision.autocast():
            out: torch.Tensor = run_parts(self.model, self.cfg.model, x, start)
        return out.float()

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        self.epoch, self.best_val_acc = int(state["epoch"]), float(state["best_val_acc"])

    def save(self, classes: list[str]) -> Path:
        """The full state in a new temporary folder (the caller owns and removes it)."""
        folder = Path(tempfile.mkdtemp(prefix="tuner-ckpt-"))
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "rng_cpu": torch.get_rng_state(),
        }
        save_state(folder, state, config=self.cfg.to_dict(), classes=classes)
        return folder


@dataclass(frozen=True)
class EpochResult:
    """What one pass over the training photos measured."""

    loss: float
    accuracy: float
    images: int
    seconds: float
    diverged: bool


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of one epoch's order and augmentation draws.

    Seeded by trial and epoch alone, so a resumed trial draws exactly what
    the uninterrupted one did, on any device.
    """
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def train_epoch(training: Training, inputs: TrainInputs, epoch: int) -> EpochResult:
    """One pass over the training rows in a seeded order; stops early on a non-finite loss."""
    cfg, device = training.cfg, inputs.device
    t0 = time.perf_counter()
    set_train_mode(training.model, training.frozen)
    generator = epoch_generator(cfg.seed, epoch)
    order = torch.randperm(len(inputs), generator=generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, diverged = 0, False
    batches = list(order.split(cfg.batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:  # BatchNorm cannot train on a single image
        batches.pop()
    for step, (x, labels) in enumerate(inputs.train_batches(batches, generator, epoch)):
        logits = training.forward(x, inputs.start)
        loss = training.loss_fn(logits, labels)
        training.optimizer.zero_grad(set_to_none=True)
        training.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            training.scaler.unscale_(training.optimizer)
            nn.utils.clip_grad_norm_(training.params, cfg.grad_clip)
        training.scaler.step(training.optimizer)
        training.scaler.update()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if step % _DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
            diverged = True
            break
    loss_mean = float(loss_sum) / max(seen, 1)  # waits for the device
    return EpochResult(
        loss=loss_mean,
        accuracy=float(correct) / max(seen, 1),
        images=seen,
        seconds=time.perf_counter() - t0,
        diverged=diverged or not math.isfinite(loss_mean),
    )


@torch.no_grad()
def evaluate(training: Training, inputs: TrainInputs) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the validation rows, the network in eval mode."""
    training.model.eval()
    loss_sum = torch.zeros((), device=inputs.device)
    correct = torch.zeros((), device=inputs.device, dtype=torch.long)
    y = inputs.val_labels
    for x, labels in inputs.val_batches(_EVAL_BATCH):
        logits = training.forward(x, inputs.start)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    n = max(len(y), 1)
    return float(loss_sum) / n, int(correct) / n


def _metrics(epoch: int, lr: float, result: EpochResult, t0: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": result.loss,
        "train_acc": result.accuracy,
        "lr": lr,
        "epoch_time_s": time.perf_counter() - t0,
        "images_per_s": result.images / max(result.seconds, 1e-9),
    }


def fit(
    cfg: TrialConfig,
    data: ImageCache,
    report: Report,
    *,
    resume_state: Mapping[str, Any] | None = None,
    threads: int | None = None,
    device: torch.device | None = None,
) -> None:
    """Train ``cfg`` on ``data`` for up to ``cfg.max_epochs`` epochs on ``device``.

    After every epoch ``report(metrics, checkpoint_dir)`` is called with the
    metrics of docs/design.md and a folder holding the full training state. With
    ``resume_state`` (loaded from such a folder by
    :func:`trainables.load_state`) training continues at the next epoch.
    A non-finite loss ends training at once with ``diverged: True``.
    """
    device = device or default_device()
    prepare_device(device, threads)
    precision = choose_precision(cfg.precision, device, cfg.model)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    training = Training.start(cfg, len(data.classes), precision)
    if resume_state is not None:
        training.restore(resume_state)
    inputs = build_inputs(cfg, data, training.model, precision)

    for epoch in range(training.epoch + 1, cfg.max_epochs + 1):
        t0, lr = time.perf_counter(), training.lr
        result = train_epoch(training, inputs, epoch)
        training.epoch = epoch
        if result.diverged:
            metrics = _metrics(epoch, lr, result, t0) | {
                "train_loss": float("nan"), "train_acc": 0.0, "val_acc": 0.0,
                "val_loss": float("nan"), "diverged": True,
            }  # fmt: skip
            report(metrics | {"best_val_acc": training.best_val_acc}, training.save(data.classes))
            return
        val_loss, val_acc = evaluate(training, inputs)
        training.scheduler.step()
        training.best_val_acc = max(training.best_val_acc, val_acc)
        metrics = _metrics(epoch, lr, result, t0) | {
            "val_acc": val_acc, "val_loss": val_loss, "diverged": False,
        }  # fmt: skip
        report(metrics | {"best_val_acc": training.best_val_acc}, training.save(data.classes))
