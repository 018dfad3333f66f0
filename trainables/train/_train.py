"""The training loop: fine-tune one configuration, report every epoch, checkpoint, resume.

:func:`fit` knows nothing of Ray: it takes a report callback, so it is
testable and reusable outside Tune (:func:`trainables.train_classifier` wraps
it for Tune). One reading follows a learning rate from the config to the
optimizer: :func:`fit` builds the model and the :class:`Training` state
(optimizer, learning-rate schedule, grad scaler, weight average), the input strategy
(:func:`trainables.build_inputs`), then alternates :func:`train_epoch` and
:func:`evaluate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.data import DecodedSplit
from trainables.models import (
    ComputePolicy,
    build_model,
    choose_precision,
    default_device,
    freeze,
    prepare_device,
    run_parts,
    set_train_mode,
)
from trainables.train._augment import eval_transform
from trainables.train._batches import forward_batch
from trainables.train._checkpoint import save_state, temporary_folder
from trainables.train._config import TrialConfig
from trainables.train._inputs import TrainInputs, build_inputs
from trainables.train._optim import WeightAverage, make_optimizer, make_scheduler, optimizer_params

# How often (in steps) the loss is checked for NaN/inf during an epoch.
_DIVERGENCE_CHECK_EVERY = 10
_EVAL_BATCH = 128

Report = Callable[[dict[str, Any], Path], None]


@dataclass(kw_only=True)
class Training:
    """What a step changes and a checkpoint keeps: model, optimizer, schedule, scaler and,
    with ``ema_decay``, the weight average (what :func:`evaluate` scores and the
    checkpoint's ``model`` holds; the live weights are then its ``raw_model``)."""

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
    ema: WeightAverage | None = None

    @classmethod
    def start(cls, cfg: TrialConfig, num_classes: int, precision: ComputePolicy) -> Training:
        """A fresh model (frozen to ``cfg.freeze_depth``) on the precision's device."""
        model = build_model(cfg.model, num_classes, cfg.pretrained, cfg.image_size)
        frozen = freeze(model, cfg.model, cfg.freeze_depth)
        model = model.to(precision.device).to(memory_format=torch.channels_last)
        optimizer = make_optimizer(cfg, optimizer_params(cfg, model))
        return cls(
            cfg=cfg,
            model=model,
            frozen=frozen,
            precision=precision,
            optimizer=optimizer,
            scheduler=make_scheduler(cfg, optimizer),
            scaler=precision.grad_scaler(),
            loss_fn=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
            ema=WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        )

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    @property
    def lr(self) -> float:
        """The head's learning rate (the first param group's)."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def scored(self) -> nn.Module:
        """The weights validation scores and a checkpoint's ``model`` holds: the average
        with ``ema_decay``, else the live model."""
        return self.ema.model if self.ema is not None else self.model

    def forward(self, x: torch.Tensor, start: int, net: nn.Module | None = None) -> torch.Tensor:
        """Logits (fp32) of parts ``start`` .. head of ``net`` (the live model) on ``x``."""
        with self.precision.autocast():
            out: torch.Tensor = run_parts(
                self.model if net is None else net, self.cfg.model, x, start
            )
        return out.float()

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save`.

        The live weights come from ``raw_model`` where the checkpoint has one (it
        averaged them), else from ``model``; the average, if kept, from ``model``.
        """
        self.model.load_state_dict(state.get("raw_model", state["model"]))
        if self.ema is not None:
            self.ema.model.load_state_dict(state["model"])
            self.ema.updates = int(state.get("ema_updates", 0))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._apply_changed_config(state.get("config") or {})
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        self.epoch, self.best_val_acc = int(state["epoch"]), float(state["best_val_acc"])

    def _apply_changed_config(self, saved: Mapping[str, Any]) -> None:
        """A checkpoint resumed under another lr or weight decay (PBT's exploit and
        explore: another trial's checkpoint, perturbed values) trains at the new ones
        from here: the restored optimizer and schedule are rescaled, so the schedule's
        position (decays, warm-up) is kept."""
        old_lr = saved.get("lr")
        if isinstance(old_lr, int | float) and old_lr > 0 and old_lr != self.cfg.lr:
            scale = self.cfg.lr / float(old_lr)
            for group in self.optimizer.param_groups:
                group["lr"] *= scale
                if "initial_lr" in group:
                    group["initial_lr"] *= scale
            self.scheduler.base_lrs = [lr * scale for lr in self.scheduler.base_lrs]
        if saved.get("weight_decay", self.cfg.weight_decay) != self.cfg.weight_decay:
            for group in self.optimizer.param_groups:
                group["weight_decay"] = self.cfg.weight_decay

    def save(self, classes: list[str]) -> Path:
        """The full state in a new temporary folder (the caller owns and removes it)."""
        folder = temporary_folder()
        state = {
            "model": self.scored.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_val_acc": self.best_val_acc,
            "rng_cpu": torch.get_rng_state(),
        }
        if self.ema is not None:
            state |= {"raw_model": self.model.state_dict(), "ema_updates": self.ema.updates}
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
        if training.ema is not None:
            training.ema.update()
        loss_sum += loss.detach() * len(labels)
        hard = labels.argmax(1) if labels.dim() == 2 else labels  # mixed: the larger share
        correct += (logits.detach().argmax(1) == hard).sum()
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


def eval_batch(inputs: TrainInputs) -> int:
    """Rows per forward pass when scoring ``inputs``: photos a few at a time on a CPU
    (:func:`~trainables.train._batches.forward_batch`), activations 128 at a time."""
    images = inputs.kind == "images"
    return forward_batch(inputs.image_size if images else None, inputs.device, _EVAL_BATCH)


@torch.no_grad()
def evaluate(training: Training, inputs: TrainInputs) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on the validation rows, the scored network
    (:attr:`Training.scored`: the weight average, if kept) in eval mode."""
    net = training.scored.eval()
    loss_sum = torch.zeros((), device=inputs.device)
    correct = torch.zeros((), device=inputs.device, dtype=torch.long)
    y = inputs.val_labels
    for x, labels in inputs.val_batches(eval_batch(inputs)):
        logits = training.forward(x, inputs.start, net)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    n = max(len(y), 1)
    return float(loss_sum) / n, int(correct) / n


@torch.no_grad()
def predict_train(
    cfg: TrialConfig, data: DecodedSplit, model: nn.Module, device: torch.device | None = None
) -> np.ndarray:
    """Class probabilities (float32, rows x classes) of ``model``, a trained ``cfg`` trial,
    for each training row of ``data`` in order, on the validation's centre crops.

    The frozen prefix's activations come from the disk cache that training ``cfg`` on
    ``data`` without augmentation reads (computed and kept there if absent), so only the
    trained part runs: what a distillation's teacher costs (:mod:`tuner.results._distill`).
    """
    device = device or torch.device("cpu")
    plain = cfg.replace(aug_strength=0.0, mixup=0.0, cutmix=0.0, train_size=0)
    precision = choose_precision(plain.precision, device, plain.model)
    model = model.to(device)
    freeze(model, plain.model, plain.freeze_depth)
    inputs = build_inputs(plain, data, model, precision)
    model.eval()
    crop = eval_transform(plain.image_size)
    out = []
    for idx in torch.arange(len(inputs)).split(eval_batch(inputs)):
        rows = inputs.train.gather(idx).to(device)
        x = inputs.to_network(crop(rows) if inputs.kind == "images" else rows)
        with precision.autocast():
            logits: torch.Tensor = run_parts(model, plain.model, x, inputs.start)
        out.append(logits.float().softmax(1).cpu())
    return torch.cat(out).numpy()


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
    data: DecodedSplit,
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
