"""The typed configuration of one trial, validated once.

Every key a search space may set is a field of :class:`TrialConfig`. Ray Tune
hands a trainable a plain ``dict``; :meth:`TrialConfig.from_dict` turns it into
this object (or raises :class:`ConfigError` naming the bad key), and nothing
downstream looks at the raw dict again.

Example:
    >>> cfg = TrialConfig.from_dict({"lr": 3e-4, "batch_size": 64})
    >>> cfg.lr, cfg.batch_size, cfg.model
    (0.0003, 64, 'resnet18')
    >>> TrialConfig.from_dict({"lr": -1})
    Traceback (most recent call last):
    ...
    trainables.train._config.ConfigError: lr must be > 0, got -1.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from trainables.models import MAX_FREEZE_DEPTH, names

OptimizerName = Literal["sgd", "adam", "adamw"]
PrecisionSetting = Literal["auto", "fp32", "bf16", "fp16"]  # what a config asks for
ScheduleName = Literal["step", "cosine"]

MODELS: tuple[str, ...] = names()
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
PRECISIONS: tuple[str, ...] = get_args(PrecisionSetting)
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)
# Below this the stride-32 backbones end in a feature map under 1x1 pixel.
MIN_IMAGE_SIZE = 32

# Keys that Ray Tune or the service add next to the trial keys; accepted and ignored.
_PASSTHROUGH_KEYS = frozenset({"data_dir", "val_fraction"})


class ConfigError(ValueError):
    """A trial configuration key is unknown or its value is out of range."""


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    """Hyperparameters of one fine-tuning trial (the keys a search space may set)."""

    model: str = "resnet18"  # a name in the backbone registry (trainables/models/_backbones.py)
    pretrained: bool = True
    optimizer: OptimizerName = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    step_size: int = 7
    gamma: float = 0.1
    freeze_depth: int = 0
    aug_strength: float = 0.5
    image_size: int = 224
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    max_epochs: int = 10
    precision: PrecisionSetting = "auto"
    seed: int = 0
    # Each of these keys' default trains exactly as before they existed.
    schedule: ScheduleName = "step"  # step: StepLR(step_size, gamma); cosine: to 0 at max_epochs
    warmup_epochs: int = 0  # epochs of linear warm-up before the schedule
    lr_decay: float = 1.0  # each stage below the head trains at lr * lr_decay ** distance
    ema_decay: float = 0.0  # 0: off; else an EMA of the weights, evaluated and checkpointed
    mixup: float = 0.0  # Beta(mixup, mixup) mixing of pairs of photos; 0: off
    cutmix: float = 0.0  # Beta(cutmix, cutmix) boxes pasted between photos; 0: off
    train_size: int = 0  # 0: train at image_size; else below it (FixRes), test at image_size

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every configurable key, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TrialConfig:
        """Build and validate a config from a Ray Tune ``config`` dict.

        Unknown keys raise :class:`ConfigError`; values are coerced to the
        field's type (YAML and Optuna may give ``32.0`` for an int, numpy
        scalars, ...) and range-checked.
        """
        known = set(cls.field_names())
        unknown = sorted(k for k in config if k not in known and k not in _PASSTHROUGH_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown trial key(s): {', '.join(unknown)}; "
                f"known keys: {', '.join(cls.field_names())}"
            )
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in config:
                values[f.name] = _coerce(f.name, f.default, config[f.name])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view of every key."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        """A validated copy with some keys changed."""
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first value out of range."""
        _check_choice("model", self.model, MODELS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check(self.lr > 0 and math.isfinite(self.lr), "lr must be > 0", self.lr)
        _check(0 <= self.momentum < 1, "momentum must be in [0, 1)", self.momentum)
        _check(self.weight_decay >= 0, "weight_decay must be >= 0", self.weight_decay)
        _check(self.batch_size >= 1, "batch_size must be >= 1", self.batch_size)
        _check(self.step_size >= 1, "step_size must be >= 1", self.step_size)
        _check(0 < self.gamma <= 1, "gamma must be in (0, 1]", self.gamma)
        _check(
            0 <= self.freeze_depth <= MAX_FREEZE_DEPTH,
            f"freeze_depth must be in 0..{MAX_FREEZE_DEPTH}",
            self.freeze_depth,
        )
        _check(0 <= self.aug_strength <= 1, "aug_strength must be in [0, 1]", self.aug_strength)
        _check(
            self.image_size >= MIN_IMAGE_SIZE,
            f"image_size must be >= {MIN_IMAGE_SIZE} (the models downsample 32x)",
            self.image_size,
        )
        _check(
            0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)", self.label_smoothing
        )
        _check(self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)", self.grad_clip)
        _check(self.max_epochs >= 1, "max_epochs must be >= 1", self.max_epochs)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check(
            0 <= self.warmup_epochs < self.max_epochs,
            "warmup_epochs must be in 0..max_epochs-1",
            self.warmup_epochs,
        )
        _check(0 < self.lr_decay <= 1, "lr_decay must be in (0, 1]", self.lr_decay)
        _check(0 <= self.ema_decay < 1, "ema_decay must be in [0, 1) (0 = off)", self.ema_decay)
        _check(0 <= self.mixup <= 10, "mixup must be in [0, 10] (0 = off)", self.mixup)
        _check(0 <= self.cutmix <= 10, "cutmix must be in [0, 10] (0 = off)", self.cutmix)
        _check(
            self.train_size == 0 or MIN_IMAGE_SIZE <= self.train_size <= self.image_size,
            f"train_size must be 0 (= image_size) or in {MIN_IMAGE_SIZE}..image_size",
            self.train_size,
        )


def _check(ok: bool, message: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{message}, got {value!r}")


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(allowed)}")


def _coerce(key: str, default: object, value: object) -> object:
    """Convert ``value`` to the type of the field's default, or raise ConfigError."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if hasattr(value, "item"):  # numpy bool
                return bool(value.item())
            raise TypeError
        if isinstance(default, int):
            as_float = float(value)  # type: ignore[arg-type]
            if isinstance(value, bool) or not as_float.is_integer():
                raise TypeError
            return int(as_float)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)  # type: ignore[arg-type]
        if isinstance(default, str):
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"{key} must be a {type(default).__name__}, got {value!r}")
