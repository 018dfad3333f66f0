"""Backbones built, given a new head, frozen by stages and run part by part.

Every backbone (see :mod:`trainables.models._backbones`, the registry) is a stem plus
four stages of growing stride (4, 8, 16, 32); ``freeze_depth = k`` freezes the
stem and the first ``k`` stages: their parameters stop requiring gradients and
their BatchNorm layers stay in eval mode (running statistics kept). Because
the frozen part is a prefix of the network, its activations carry no autograd
graph.

Example:
    >>> model = build_model("resnet18", num_classes=5, pretrained=False)
    >>> frozen = freeze(model, "resnet18", depth=4)
    >>> sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})
    ['fc']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.models._backbones import MAX_FREEZE_DEPTH, backbone


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def normalization(model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's pretrained weights expect on [0, 1] RGB input."""
    entry = backbone(model)
    return entry.mean, entry.std


def pretrained_weights_file(model: str) -> Path:
    """Where the model's ImageNet weights are (or would be) on this machine."""
    return backbone(model).weights.file()


def ensure_pretrained_weights(model: str, download: bool = True) -> Path:
    """Return the weights file, downloading it if allowed and possible.

    Raises :class:`WeightsUnavailableError` with a message that names the file,
    the folder it is looked for in, and the alternatives.
    """
    weights = backbone(model).weights
    path = weights.file()
    if path.is_file():
        return path
    error = "are not in the cache" if weights.downloadable else "are not installed"
    if download and weights.downloadable:
        import socket

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            weights.download()
            if path.is_file():
                return path
        except Exception as exc:  # network errors come in many types
            error = f"could not be downloaded ({type(exc).__name__}: {exc})"
        finally:
            socket.setdefaulttimeout(previous)
    raise WeightsUnavailableError(
        f"pretrained {model} weights {path.name} {error}.\n"
        f"  Expected at: {path}\n"
        f"  (torchvision looks in $TORCH_HOME/hub/checkpoints/, here {path.parent}).\n"
        "  Fixes: copy the file there from a machine with internet access; or use "
        "`--space lite` (EfficientNet-Lite0, weights ship with the package); "
        "or set `pretrained: false` in the space (training from scratch)."
    )


def build_model(
    model: str, num_classes: int, pretrained: bool = True, image_size: int | None = None
) -> nn.Module:
    """The backbone with ImageNet weights (if ``pretrained``) and a fresh head.

    ``image_size`` is the size the model will run at; a family may use it to
    precompute padding (EfficientNet-Lite). The weights load strictly: every
    tensor of the architecture, no other, through ``torch.load(weights_only=True)``.
    """
    entry = backbone(model)
    net = entry.family.build(model, image_size)
    if pretrained:
        state = torch.load(ensure_pretrained_weights(model, download=False), weights_only=True)
        net.load_state_dict(state)
    entry.family.replace_head(net, num_classes)
    return net


def head(net: Any, model: str) -> nn.Linear:
    """The classification layer (replaced for the task's classes)."""
    return backbone(model).family.head(net)


def stages(net: Any, model: str) -> list[list[nn.Module]]:
    """[stem, stage1, stage2, stage3, stage4]: the backbone in freezing order."""
    return backbone(model).family.stages(net)


def params_by_depth(net: nn.Module, model: str) -> list[list[nn.Parameter]]:
    """Every parameter of ``net`` grouped by its distance below the head, head first.

    Group 0 is what no stage holds (the head, and any layer between pooling
    and it); group ``k`` for ``k`` = 1 .. 5 is stage ``5 - k`` (1: stage 4,
    ..., 5: the stem). Within a group parameters keep ``net.parameters()``
    order. Frozen parameters are included: the caller filters them.
    """
    parts = stages(net, model)
    part_of = {id(p): i for i, group in enumerate(parts) for m in group for p in m.parameters()}
    groups: list[list[nn.Parameter]] = [[] for _ in range(len(parts) + 1)]
    for p in net.parameters():
        groups[len(parts) - part_of.get(id(p), len(parts))].append(p)
    return groups


def freeze(net: nn.Module, model: str, depth: int) -> list[nn.Module]:
    """Freeze the stem and the first ``depth`` stages; return the frozen modules.

    Call :func:`set_train_mode` instead of ``net.train()`` so frozen
    BatchNorm layers keep their running statistics.
    """
    frozen = [m for group in stages(net, model)[: depth + 1] for m in group] if depth else []
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def set_train_mode(net: nn.Module, frozen: list[nn.Module]) -> None:
    """``net.train()``, except ``frozen`` modules stay in eval mode (BatchNorm stats fixed)."""
    net.train()
    for module in frozen:
        module.eval()


# The network as a chain of parts: 0 stem, 1-4 the stages, 5 global pooling, 6 the head.
STEM, POOL, HEAD = 0, 5, 6
N_PARTS = 7


def frozen_output_part(depth: int) -> int:
    """The first part that runs on the output of a network frozen to ``depth``.

    Depth 1-3: the next stage (it takes the frozen stage's feature map).
    Depth 4 (every stage frozen): the head, on the pooled features, since
    pooling has no parameters.
    """
    if not 1 <= depth <= MAX_FREEZE_DEPTH:
        raise ValueError(f"depth must be in 1..{MAX_FREEZE_DEPTH}, got {depth}")
    return HEAD if depth == MAX_FREEZE_DEPTH else depth + 1


def run_parts(net: Any, model: str, x: torch.Tensor, start: int, stop: int = N_PARTS) -> Any:
    """Run parts ``start`` .. ``stop - 1`` of the network on ``x``.

    ``run_parts(net, model, x, 0)`` equals ``net(x)``; splitting it at any
    part gives the same result, so a frozen prefix can be computed once
    and the rest run every step.
    """
    family = backbone(model).family
    for part in range(start, stop):
        x = family.run_part(net, part, x)
    return x
