"""A small CIFAR-style ResNet of BasicBlocks: fast enough for full runs on a few CPU cores."""
from __future__ import annotations

from typing import Sequence

from convnorm.experiments.models.resnet import BasicBlock, ResNet

__all__ = ["small_resnet"]


def small_resnet(
    num_classes: int = 10, in_channels: int = 3, widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 1
) -> ResNet:
    """He et al.'s CIFAR ResNet layout: 3x3 stem, one stage per width (stride 1, then 2),
    ``blocks_per_stage`` BasicBlocks each, global average pool, Linear.

    The defaults (widths 16-32-64, one block per stage: 7 convs on the main path, "ResNet-8")
    train an epoch of CIFAR-10 in well under a minute on two CPU cores; ``blocks_per_stage=3``
    is He et al.'s ResNet-20.

    Shape: ``(B, in_channels, H, W) -> (B, num_classes)``.
    """
    if blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}")
    return ResNet(BasicBlock, [blocks_per_stage] * len(widths), num_classes, in_channels, widths)
