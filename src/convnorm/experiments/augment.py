"""Batched data augmentation as plain tensor code (no torchvision), on any device.

Images stay ``uint8`` until :func:`normalize` turns a batch into floats;
:func:`random_crop_flip` then augments the whole float batch at once with one gather.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["crop_flip", "normalize", "random_crop_flip"]

Stats = Union[float, Sequence[float], torch.Tensor]


def normalize(images: torch.Tensor, mean: Stats, std: Stats, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(images / 255 - mean) / std`` per channel.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)`` (pixel values 0..255).
        mean, std: per-channel statistics in [0, 1] pixel units: a number or ``C`` numbers
            (e.g. from :func:`convnorm.experiments.data.dataset_stats`).
        dtype: floating dtype of the result.

    Returns:
        ``dtype`` tensor ``(N, C, H, W)`` on the images' device.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (pixel values 0..255), got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    channels = images.shape[1]

    def per_channel(value, what):
        t = torch.as_tensor(value, dtype=dtype, device=images.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(channels)
        if t.numel() != channels:
            raise ValueError(f"{what} needs 1 or {channels} values, got {t.numel()}")
        return t.view(1, channels, 1, 1)

    mean_t, std_t = per_channel(mean, "mean"), per_channel(std, "std")
    if (std_t <= 0).any():
        raise ValueError("std must be positive")
    return (images.to(dtype) / 255 - mean_t) / std_t


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, *,
              padding: int) -> torch.Tensor:
    """Crop each image from its zero-padded version, then mirror it where ``flip`` is set.

    ``out[n, :, i, j] = padded[n, :, top[n] + i, left[n] + j']`` with ``j' = W-1-j`` if
    ``flip[n]`` else ``j``, where ``padded`` is ``images`` with ``padding`` zeros on each side.

    Args:
        images: float tensor ``(N, C, H, W)``.
        top, left: integer tensors ``(N,)`` in ``[0, 2 * padding]``.
        flip: bool tensor ``(N,)``.
        padding: zero padding on each side, in pixels.

    Returns:
        Tensor ``(N, C, H, W)``, same dtype and device as ``images``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    n, c, h, w = images.shape
    device = images.device
    top, left, flip = top.to(device, torch.long), left.to(device, torch.long), flip.to(device, torch.bool)
    for name, offset in (("top", top), ("left", left)):
        if offset.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(offset.shape)}")
        if n and (offset.min() < 0 or offset.max() > 2 * padding):
            raise ValueError(f"{name} offsets must lie in [0, {2 * padding}]")
    if flip.shape != (n,):
        raise ValueError(f"flip must have shape ({n},), got {tuple(flip.shape)}")
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    wp = w + 2 * padding
    rows = top[:, None] + torch.arange(h, device=device)                        # (N, H)
    cols = left[:, None] + torch.arange(w, device=device)                       # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


def random_crop_flip(images: torch.Tensor, *, padding: int = 4, flip: bool = True,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per sample, in one gather.

    The standard CIFAR augmentation: each image is padded by ``padding`` zeros on every
    side, a window of the original size is taken at a uniformly random offset, and with
    probability 1/2 it is mirrored left-right. The random draws, in this order, are
    ``top = randint(0, 2p+1, (N,))``, ``left = randint(0, 2p+1, (N,))`` and (if ``flip``)
    ``randint(0, 2, (N,)) == 1``, made with ``generator`` on its device, then applied by
    :func:`crop_flip`.

    Args:
        images: float tensor ``(N, C, H, W)``. The padding is zeros in the images' own
            units: for normalized images that is the mean colour, not black.
        padding: pixels of zero padding on each side.
        flip: whether to mirror half of the images.
        generator: source of randomness (default: the global one on the images' device).

    Returns:
        Tensor ``(N, C, H, W)``, same dtype and device as ``images``.
    """
    if not torch.is_floating_point(images):
        raise ValueError(f"images must be a floating tensor, got {images.dtype}")
    if padding < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    n = images.shape[0]
    device = generator.device if generator is not None else images.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    if flip:
        mirror = torch.randint(0, 2, (n,), generator=generator, device=device) == 1
    else:
        mirror = torch.zeros(n, dtype=torch.bool, device=device)
    return crop_flip(images, top, left, mirror, padding=padding)
