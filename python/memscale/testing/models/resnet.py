"""ResNet-style CNN with BatchNorm, laid out like torchvision (``layer1`` .. ``layer4``).

Example:
    >>> from memscale.testing.models import resnet
    >>> model = resnet.build(block="basic", layers=(1, 1, 1, 1))
    >>> loss = model(*resnet.example_inputs(model, batch=2))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import apply_overrides, check_positive, image_inputs, seeded


@dataclass(frozen=True)
class ResNetConfig:
    """Sizes of a ResNet-style CNN; ``block`` is ``basic`` or ``bottleneck``."""

    block: str = "basic"
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    width: int = 16
    in_chans: int = 3
    num_classes: int = 10
    image_size: int = 32

    def validate(self) -> None:
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {self.block!r}")
        if len(self.layers) != 4 or any(not isinstance(n, int) or n <= 0 for n in self.layers):
            raise ValueError(f"layers must be 4 positive ints, got {self.layers!r}")
        for name in ("width", "in_chans", "num_classes", "image_size"):
            check_positive(name, getattr(self, name))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    """``forward(images, labels=None)`` -> logits, or mean cross-entropy with labels."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        block = BasicBlock if cfg.block == "basic" else Bottleneck
        w = cfg.width
        self.conv1 = nn.Conv2d(cfg.in_chans, w, 3, padding=1, bias=False)  # CIFAR-style stem
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = w
        stages = []
        for i, n in enumerate(cfg.layers):
            planes = w * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, 2 if (j == 0 and i > 0) else 1))
                inplanes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, cfg.num_classes)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        logits = self.fc(torch.flatten(self.avgpool(x), 1))
        if labels is None:
            return logits
        return F.cross_entropy(logits, labels)


def build(seed: int = 0, **overrides: Any) -> ResNet:
    """Build a ResNet with ``ResNetConfig`` fields overridden by keyword (``layers`` may be a list)."""
    if "layers" in overrides:
        overrides = {**overrides, "layers": tuple(overrides["layers"])}
    cfg = apply_overrides(ResNetConfig(), overrides)
    with seeded(seed):
        return ResNet(cfg)


def example_inputs(model: ResNet, batch: int = 2, seq: int | None = None, labels: bool = True,
                   seed: int = 0, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """``(images, labels)`` with images ``(batch, in_chans, image_size, image_size)``; seq must be None."""
    cfg = model.config
    return image_inputs("resnet", cfg.in_chans, cfg.image_size, cfg.num_classes, batch, seq, labels, seed, device)
