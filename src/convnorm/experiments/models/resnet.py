"""CIFAR-style ResNets (He et al. 2016): 3x3 stem, no max-pool, four stages."""
from __future__ import annotations

from typing import List, Sequence, Type, Union

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        num_blocks: blocks per stage.
        num_classes: output logits.
        in_channels: image channels (3 for CIFAR, 1 for Fashion-MNIST).
        widths: channels of each stage (the standard ResNet uses 64, 128, 256, 512); the
            first stage has stride 1, the others stride 2.

    Shape: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        num_blocks: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        if len(num_blocks) != len(widths):
            raise ValueError(f"num_blocks {tuple(num_blocks)} and widths {tuple(widths)} differ in length")
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: List[nn.Module] = []
        for i, (width, blocks) in enumerate(zip(widths, num_blocks)):
            stages.append(self._make_stage(block, width, blocks, 1 if i == 0 else 2))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return self.fc(torch.flatten(self.pool(out), 1))


_STANDARD_WIDTHS = (64, 128, 256, 512)


def cifar_resnet18(num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = _STANDARD_WIDTHS) -> ResNet:
    """ResNet-18 (BasicBlocks 2-2-2-2). ``(B, in_channels, H, W) -> (B, num_classes)``."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, widths)


def cifar_resnet34(num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = _STANDARD_WIDTHS) -> ResNet:
    """ResNet-34 (BasicBlocks 3-4-6-3). ``(B, in_channels, H, W) -> (B, num_classes)``."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels, widths)


def cifar_resnet50(num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = _STANDARD_WIDTHS) -> ResNet:
    """ResNet-50 (Bottlenecks 3-4-6-3, 4x expansion). ``(B, in_channels, H, W) -> (B, num_classes)``."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, widths)
