"""The trainable: fine-tune one configuration, report every epoch, checkpoint, resume.

:func:`train_classifier` is a plain Ray Tune function trainable::

    from ray import tune
    from trainables import load_image_cache, train_classifier

    cache = load_image_cache("photos/", image_size=160)
    trainable = tune.with_resources(
        tune.with_parameters(train_classifier, data=cache), {"cpu": 2}
    )
    tune.Tuner(trainable, param_space={"model": "efficientnet_lite0", "lr": 1e-3}).fit()

The loop itself, :func:`fit`, knows nothing of Ray: it takes a report
callback, so it is testable and reusable outside Tune.
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

from trainables._augment import apply_batch, build_transform, eval_transform, normalize
from trainables._checkpoint import load_state, save_state
from trainables._config import TrialConfig
from trainables._data import ImageCache
from trainables._features import cache_fits, cache_part, cached_features, feature_key
from trainables._models import (
    STEM,
    build_model,
    freeze,
    normalization,
    pretrained_weights_file,
    run_parts,
    set_train_mode,
)

# How often (in steps) the loss is checked for NaN/inf during an epoch.
_DIVERGENCE_CHECK_EVERY = 10
_EVAL_BATCH = 128

Report = Callable[[dict[str, Any], Path], None]


@dataclass(frozen=True)
class Precision:
    """Where and how a trial computes: device, autocast dtype, grad scaling."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def choose_precision(requested: str, device: torch.device, model: str = "resnet18") -> Precision:
    """Resolve ``precision: auto|fp32|bf16|fp16`` for ``device`` and ``model``.

    ``auto`` is bf16 autocast where the hardware runs it natively (recent
    GPUs; CPUs with AVX512-BF16/AMX), fp16 with a grad scaler on older GPUs,
    fp32 elsewhere. On a CPU, EfficientNet-Lite0 stays in fp32: its depthwise
    convolutions run slower in bf16 than in fp32 there.
    """
    if requested == "fp32":
        return Precision(device, None, False)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "bf16" or (requested == "auto" and bf16_ok):
            return Precision(device, torch.bfloat16, False)
        return Precision(device, torch.float16, True)
    cpu_auto_bf16 = cpu_has_native_bf16() and model != "efficientnet_lite0"
    if requested == "bf16" or (requested == "auto" and cpu_auto_bf16):
        return Precision(device, torch.bfloat16, False)
    return Precision(device, None, False)


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (otherwise bf16 is slower than fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _view(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor over a (possibly read-only, shared-memory) array, without copying on CPU."""
    import warnings

    with warnings.catch_warnings():
        # The object store maps arrays read-only; nothing here writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array)).to(device)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Feature maps in channels-last order (pooled features pass unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _make_optimizer(cfg: TrialConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False
        )
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def fit(
    cfg: TrialConfig,
    data: ImageCache,
    report: Report,
    *,
    resume_state: Mapping[str, Any] | None = None,
    threads: int | None = None,
    device: torch.device | None = None,
) -> None:
    """Train ``cfg`` on ``data`` for up to ``cfg.max_epochs`` epochs.

    After every epoch ``report(metrics, checkpoint_dir)`` is called with the
    metrics of DESIGN.md and a folder holding the full training state. With
    ``resume_state`` (loaded from such a folder by
    :func:`trainables.load_state`) training continues at the next epoch.
    A non-finite loss ends training at once with ``diverged: True``.
    """
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = choose_precision(cfg.precision, device, cfg.model)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _seed_everything(cfg.seed)

    model = build_model(cfg.model, len(data.classes), cfg.pretrained, cfg.image_size)
    frozen = freeze(model, cfg.model, cfg.freeze_depth)
    model = model.to(device).to(memory_format=torch.channels_last)
    trainable_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(cfg, trainable_params)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mean, std = normalization(cfg.model)

    start_epoch, best_acc = 0, 0.0
    if resume_state is not None:
        state = resume_state
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        start_epoch, best_acc = int(state["epoch"]), float(state["best_val_acc"])

    # The shared cache is read-only; torch views it without copying.
    train_x, train_y, val_x, val_y = (
        _view(a, device) for a in (data.train_x, data.train_y, data.val_x, data.val_y)
    )
    val_x = eval_transform(cfg.image_size)(val_x)

    def autocast() -> torch.autocast:
        return torch.autocast(
            device.type,
            dtype=precision.autocast_dtype or torch.float32,
            enabled=precision.autocast_dtype is not None,
        )

    def to_input(images: torch.Tensor) -> torch.Tensor:
        x = normalize(images, mean, std, torch.float32)
        return x.contiguous(memory_format=torch.channels_last)

    batch_of: Callable[[torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]
    part = cache_part(cfg)
    if part is not None:
        model.eval()  # frozen modules stay in eval mode for training too
        with torch.no_grad(), autocast():
            probe = run_parts(model, cfg.model, to_input(val_x[:1]), STEM, part)
        if not cache_fits(probe.numel(), len(train_y) + len(val_y)):
            part = None
    if part is not None:
        # Nothing random before the first training part: frozen activations once per trial.
        cut = part

        def frozen_prefix(images: torch.Tensor) -> torch.Tensor:
            with autocast():
                out: torch.Tensor = run_parts(model, cfg.model, to_input(images), STEM, cut)
            return out

        weights = pretrained_weights_file(cfg.model).name if cfg.pretrained else None
        key = feature_key(cfg, data, weights) if weights else None
        train_inputs, val_inputs = cached_features(
            key, frozen_prefix, eval_transform(cfg.image_size)(train_x), val_x
        )
        batch_of = _identity

        def forward(activations: torch.Tensor) -> torch.Tensor:
            with autocast():
                out: torch.Tensor = run_parts(model, cfg.model, _channels_last(activations), cut)
            return out.float()

    else:
        augment = build_transform(cfg.image_size, cfg.aug_strength)
        train_inputs, val_inputs = train_x, val_x

        def batch_of(images: torch.Tensor) -> torch.Tensor:
            return apply_batch(augment, images)

        def forward(images: torch.Tensor) -> torch.Tensor:
            with autocast():
                out: torch.Tensor = model(to_input(images))
            return out.float()

    for epoch in range(start_epoch + 1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        set_train_mode(model, frozen)
        order = torch.randperm(
            len(train_y), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        ).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        diverged = False
        for step, start in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2 and seen:  # BatchNorm cannot train on a single image
                break
            labels = train_y[idx]
            logits = forward(batch_of(train_inputs[idx]))
            loss = loss_fn(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(trainable_params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(idx)
            if step % _DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                diverged = True
                break
        train_time = time.perf_counter() - t0
        train_loss = float(loss_sum) / max(seen, 1)
        if diverged or not math.isfinite(train_loss):
            report(
                _metrics(epoch, lr, t0, seen, train_time, float("nan"), 0.0, 0.0, float("nan"))
                | {"diverged": True, "best_val_acc": best_acc},
                _save(model, optimizer, scheduler, scaler, epoch, best_acc, cfg, data),
            )
            return
        train_acc = float(correct) / max(seen, 1)
        model.eval()
        val_loss, val_acc = evaluate(forward, val_inputs, val_y)
        scheduler.step()
        best_acc = max(best_acc, val_acc)
        metrics = _metrics(
            epoch, lr, t0, seen, train_time, train_loss, train_acc, val_acc, val_loss
        )
        report(
            metrics | {"diverged": False, "best_val_acc": best_acc},
            _save(model, optimizer, scheduler, scaler, epoch, best_acc, cfg, data),
        )


def _metrics(
    epoch: int,
    lr: float,
    t0: float,
    seen: int,
    train_time: float,
    train_loss: float,
    train_acc: float,
    val_acc: float,
    val_loss: float,
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "val_acc": val_acc,
        "val_loss": val_loss,
        "train_acc": train_acc,
        "train_loss": train_loss,
        "lr": lr,
        "epoch_time_s": time.perf_counter() - t0,
        "images_per_s": seen / max(train_time, 1e-9),
    }


@torch.no_grad()
def evaluate(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``forward`` over preprocessed inputs."""
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), _EVAL_BATCH):
        logits = forward(x[start : start + _EVAL_BATCH])
        labels = y[start : start + _EVAL_BATCH]
        loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
    n = max(len(y), 1)
    return loss_sum / n, correct / n


def _save(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    epoch: int,
    best_acc: float,
    cfg: TrialConfig,
    data: ImageCache,
) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tuner-ckpt-"))
    save_state(
        folder,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "best_val_acc": best_acc,
            "rng_cpu": torch.get_rng_state(),
        },
        config=cfg.to_dict(),
        classes=data.classes,
    )
    return folder


def train_classifier(config: Mapping[str, Any], data: ImageCache | None = None) -> None:
    """Ray Tune function trainable: one trial of ``config`` on the decoded ``data``.

    Without ``data`` the photos under ``config["data_dir"]`` are decoded here
    (for use without the service). Threads follow the trial's CPU resources;
    a trial restored by Tune continues from its last checkpoint.
    """
    import logging
    import shutil

    from ray import tune

    # One line per checkpoint from Ray is noise in a search's live table.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    cfg = TrialConfig.from_dict(config)
    if data is None:
        from trainables._data import load_image_cache

        data = load_image_cache(config["data_dir"], cfg.image_size, seed=cfg.seed)

    resources = tune.get_context().get_trial_resources().required_resources
    threads = int(resources.get("CPU", 0)) or None

    import ray

    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], folder: Path) -> None:
        try:
            tune.report(
                metrics | {"node_id": node_id},
                checkpoint=tune.Checkpoint.from_directory(str(folder)),
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state(Path(folder))
    fit(cfg, data, report, resume_state=state, threads=threads)
