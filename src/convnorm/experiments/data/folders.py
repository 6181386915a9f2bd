"""A user's own images: a folder of class subfolders, as ``torchvision.datasets.ImageFolder`` reads it.

Layout: ``<folder>/<class name>/<image file>`` (classes in sorted order, labels 0..K-1); or,
when ``<folder>`` holds ``train/`` and ``test/`` (or ``val/``) folders of that layout, those
are the two splits. Otherwise the test split is a fixed, class-stratified fifth of every
class (seed 0, the same for every run).

Images are decoded with Pillow, converted to RGB (grayscale, palette and RGBA images
included; the alpha channel is dropped) or to grayscale with ``channels=1``, and, when an
``image_size`` is given, resized so that the shorter side is ``image_size`` (bilinear) and
centre-cropped to ``image_size x image_size``, the usual evaluation transform. Without one,
every image must already have the same size. The split is kept in memory as ``uint8``.

Problems are named: a missing folder, a class folder without images, a file Pillow cannot
decode (or, with ``skip_corrupt=True``, a warning that lists the files left out).
"""
from __future__ import annotations

import os
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch

from convnorm.experiments.data.formats import DatasetError
from convnorm.experiments.data.labeled import LabeledImages

__all__ = ["IMAGE_EXTENSIONS", "TEST_FRACTION", "load_image_folder", "image_folder_classes"]

#: File extensions read as images (those of torchvision's ImageFolder).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: The share of every class held out as the test split when the folder has no test folder.
TEST_FRACTION = 0.2
_TEST_NAMES = ("test", "val")


def _class_folder(folder: str) -> Tuple[str, Optional[str]]:
    """(training folder, test folder or None) of ``folder``."""
    if not os.path.isdir(folder):
        raise DatasetError(f"image folder {folder} does not exist: give a folder of class subfolders of images")
    train = os.path.join(folder, "train")
    for name in _TEST_NAMES:
        test = os.path.join(folder, name)
        if os.path.isdir(train) and os.path.isdir(test):
            return train, test
    return folder, None


def image_folder_classes(folder: str) -> List[str]:
    """The class names of an image folder (its training part), sorted."""
    train, _ = _class_folder(folder)
    classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    if not classes:
        raise DatasetError(f"{train} has no class subfolders: put each class's images in <folder>/<class>/")
    return classes


def _files(directory: str, classes: List[str]) -> List[Tuple[str, int]]:
    files, empty = [], []
    for label, name in enumerate(classes):
        path = os.path.join(directory, name)
        found = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)) \
            if os.path.isdir(path) else []
        if not found:
            empty.append(path)
        files += [(os.path.join(path, f), label) for f in found]
    if empty:
        raise DatasetError(f"class folder(s) without images ({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty)}; "
                           "remove them or add images")
    return files


def _decode(path: str, channels: int, image_size: Optional[int]) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")  # as Pillow advises for palette images with transparency
        image = image.convert("RGB" if channels == 3 else "L")
        if image_size:
            image = ImageOps.fit(image, (image_size, image_size), method=Image.BILINEAR, centering=(0.5, 0.5))
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _read(files: List[Tuple[str, int]], channels: int, image_size: Optional[int],
          skip_corrupt: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    arrays, labels, skipped = [], [], []
    for path, label in files:
        try:
            array = _decode(path, channels, image_size)
        except (OSError, ValueError, SyntaxError) as error:  # Pillow's kinds for an undecodable file
            if not skip_corrupt:
                raise DatasetError(f"{path}: not a readable image ({error}); remove it, or pass skip_corrupt "
                                   "(--skip-corrupt) to leave such files out") from None
            skipped.append(path)
            continue
        if arrays and array.shape != arrays[0].shape:
            raise DatasetError(f"{path} is {array.shape[2]}x{array.shape[1]}, {files[0][0]} is "
                               f"{arrays[0].shape[2]}x{arrays[0].shape[1]}: give an image size (--image-size) "
                               "to resize them all")
        arrays.append(array)
        labels.append(label)
    if skipped:
        warnings.warn(f"left out {len(skipped)} unreadable image(s): {', '.join(skipped)}", stacklevel=3)
    if not arrays:
        raise DatasetError("no readable images")
    return torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64)


def _held_out(labels: List[int], train: bool) -> List[int]:
    """Indices of the training (or test) part when the folder has no test folder: a fixed
    :data:`TEST_FRACTION` of every class (at least one image when a class has two or more)."""
    rng = np.random.default_rng(0)
    chosen = []
    labels = np.asarray(labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = rng.permutation(members)
        n_test = int(round(TEST_FRACTION * len(members)))
        n_test = min(max(n_test, 1 if len(members) > 1 else 0), len(members) - 1)
        chosen += sorted(order[n_test:] if train else order[:n_test])
    return sorted(chosen)


def load_image_folder(folder: str, *, train: bool, channels: int = 3, image_size: Optional[int] = None,
                      skip_corrupt: bool = False) -> LabeledImages:
    """The training or test split of an image folder as :class:`~.labeled.LabeledImages`.

    Args:
        folder: ``<folder>/<class>/<image>``, or ``<folder>/train|test/<class>/<image>``.
        train: the training split, else the test split.
        channels: 3 (RGB) or 1 (grayscale).
        image_size: resize the shorter side to this and centre-crop a square (``None``: keep
            the images' own size, which must then be the same for all).
        skip_corrupt: leave out files Pillow cannot decode, with a warning naming them,
            instead of raising.

    Returns:
        ``uint8 (N, channels, S, S)`` images and ``int64 (N,)`` labels, the classes in the
        sorted order of their folder names.

    Raises:
        DatasetError: a missing folder, a class folder without images, an unreadable image,
            or images of different sizes without ``image_size``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    classes = image_folder_classes(folder)
    train_dir, test_dir = _class_folder(folder)
    if test_dir is not None:
        files = _files(train_dir if train else test_dir, classes)
    else:
        everything = _files(train_dir, classes)
        files = [everything[i] for i in _held_out([label for _, label in everything], train)]
        if not files:
            raise DatasetError(f"{folder} has too few images to hold out a test split; add images or give "
                               f"{folder}/train and {folder}/test folders")
    images, labels = _read(files, channels, image_size, skip_corrupt)
    return LabeledImages(images, labels, len(classes), "imagefolder")
