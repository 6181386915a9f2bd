"""Models used by the experiments and benchmarks (plain Conv + BatchNorm; methods convert them).

Build one by name with :func:`build_model`; :data:`MODELS` maps the names to builders.
"""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from convnorm.experiments.models.resnet import ResNet, cifar_resnet18, cifar_resnet34, cifar_resnet50
from convnorm.experiments.models.small_resnet import small_resnet
from convnorm.experiments.models.vgg import VGG, vgg16

__all__ = ["MODELS", "build_model", "ResNet", "VGG", "cifar_resnet18", "cifar_resnet34", "cifar_resnet50",
           "small_resnet", "vgg16"]

# name -> builder(num_classes=, in_channels=, **options)
MODELS: Dict[str, Callable[..., nn.Module]] = {
    "resnet18": cifar_resnet18,
    "resnet34": cifar_resnet34,
    "resnet50": cifar_resnet50,
    "vgg16": vgg16,
    "small_resnet": small_resnet,
}


def build_model(name: str, *, in_channels: int = 3, num_classes: int = 10, **options) -> nn.Module:
    """A freshly initialized model ``name`` (one of :data:`MODELS`), with Conv + BN blocks.

    Args:
        name: ``resnet18``, ``resnet34``, ``resnet50``, ``vgg16`` or ``small_resnet``.
        in_channels: image channels (3 for CIFAR, 1 for Fashion-MNIST).
        num_classes: output logits.
        **options: passed to the builder (e.g. ``widths``; ``blocks_per_stage`` for
            ``small_resnet``).

    Every model takes ``(B, in_channels, H, W)`` images (28x28 and 32x32 included) and
    returns ``(B, num_classes)`` logits.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **options)
