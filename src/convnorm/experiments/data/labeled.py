"""The in-memory form every data set takes: one split as ``uint8`` images and ``int64`` labels.

Below the readers of the built-in sets (:mod:`.datasets`) and of users' folders
(:mod:`.folders`), which both return it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LabeledImages"]


@dataclass
class LabeledImages:
    """One split of an image classification data set, held in memory.

    Attributes:
        images: ``uint8`` tensor ``(N, C, H, W)``, pixel values 0..255.
        labels: ``int64`` tensor ``(N,)``, values in ``[0, num_classes)``.
        num_classes: number of classes ``K``.
        name: canonical data set name (one of :data:`DATASETS`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be an int64 (N,) tensor, got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        if self.labels.numel() != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.numel()} labels")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    def __len__(self) -> int:
        return self.labels.numel()

    def subset(self, indices: torch.Tensor) -> "LabeledImages":
        """The samples at ``indices`` (``int64 (M,)``), in that order."""
        return LabeledImages(self.images[indices], self.labels[indices], self.num_classes, self.name)

    def with_labels(self, labels: torch.Tensor) -> "LabeledImages":
        """The same images with other labels (e.g. corrupted ones), ``int64 (N,)``."""
        return LabeledImages(self.images, labels, self.num_classes, self.name)
