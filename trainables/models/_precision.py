"""Where and how a trial computes: the device, the autocast dtype, gradient scaling.

Example:
    >>> import torch
    >>> choose_precision("fp32", torch.device("cpu")).name
    'fp32'
    >>> p = choose_precision("auto", torch.device("cpu"), "efficientnet_lite0")
    >>> p.name  # Lite0's depthwise convolutions are slower in bf16 on a CPU
    'fp32'
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from trainables.models._backbones import backbone


@dataclass(frozen=True)
class ComputePolicy:
    """Where and how a trial computes: device, autocast dtype, grad scaling (the policy
    that a config's ``precision`` setting resolves to on one device)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self) -> AbstractContextManager[object]:
        """The autocast context of this precision (none for fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only where fp16 needs one."""
        return torch.amp.GradScaler(self.device.type, enabled=self.use_grad_scaler)


def default_device() -> torch.device:
    """The trial's GPU when Ray (or the user) made one visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_device(device: torch.device, threads: int | None) -> None:
    """Process-wide settings for computing on ``device`` with ``threads`` CPU threads."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def choose_precision(
    requested: str, device: torch.device, model: str = "resnet18"
) -> ComputePolicy:
    """Resolve ``precision: auto|fp32|bf16|fp16`` for ``device`` and ``model``.

    ``auto`` is bf16 autocast where the hardware runs it natively (recent
    GPUs; CPUs with AVX512-BF16/AMX), fp16 with a grad scaler on older GPUs,
    fp32 elsewhere. On a CPU, a backbone whose registry entry says ``cpu_bf16=False``
    stays in fp32 (EfficientNet-Lite0's depthwise convolutions run slower in bf16
    than in fp32 there; so do Lite1 and Lite2's).
    """
    if requested == "fp32":
        return ComputePolicy(device, None, False)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "bf16" or (requested == "auto" and bf16_ok):
            return ComputePolicy(device, torch.bfloat16, False)
        return ComputePolicy(device, torch.float16, True)
    cpu_auto_bf16 = cpu_has_native_bf16() and backbone(model).cpu_bf16
    if requested == "bf16" or (requested == "auto" and cpu_auto_bf16):
        return ComputePolicy(device, torch.bfloat16, False)
    return ComputePolicy(device, None, False)


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 natively (otherwise bf16 is slower than fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
