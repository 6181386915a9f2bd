"""VGG-16 for small images (CIFAR 32x32, Fashion-MNIST 28x28): Conv + BN + ReLU blocks."""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["VGG", "VGG16_CFG", "vgg16"]

# Channels of each 3x3 conv, "M" a 2x2 max-pool (Simonyan & Zisserman's configuration D).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG for small images: ``features`` (Conv3x3 + BN + ReLU, max-pools), global pool, Linear.

    The max-pools use ``ceil_mode=True`` so five of them take 28x28 down to 1x1
    (28-14-7-4-2-1) as they take 32x32 (32-16-8-4-2-1, where ceil and floor agree, so CIFAR
    shapes are exactly the standard CIFAR VGG). An adaptive average pool before the
    classifier makes any other input size work too (it is the identity on 1x1 maps).

    Args:
        cfg: conv widths and ``"M"`` for max-pool, in order.
        num_classes: output logits.
        in_channels: image channels (3 for CIFAR, 1 for Fashion-MNIST).

    Shape: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """

    def __init__(self, cfg: Sequence[Union[int, str]] = VGG16_CFG, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1, bias=False), nn.BatchNorm2d(int(item)),
                           nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg16(num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512, 512)) -> VGG:
    """VGG-16 with batch norm; ``widths`` are the channels of its five blocks (2-2-3-3-3 convs).

    ``(B, in_channels, H, W) -> (B, num_classes)``.
    """
    if len(widths) != 5:
        raise ValueError(f"widths must give the channels of the 5 VGG blocks, got {tuple(widths)}")
    cfg: List[Union[int, str]] = []
    for width, convs in zip(widths, (2, 2, 3, 3, 3)):
        cfg += [width] * convs + ["M"]
    return VGG(cfg, num_classes, in_channels)
