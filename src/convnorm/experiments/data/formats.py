"""Readers of the standard data set file formats: IDX, CIFAR binary, CIFAR python pickles, PNG.

Each reader returns numpy arrays exactly as the file holds them, and raises
:class:`DatasetError` naming the file (and, through ``help``, how to get good data) on a
missing, truncated or corrupt file. Pickles are read with an unpickler that only builds
numpy arrays, so a tampered file cannot run code; PNG is decoded with Pillow.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import zlib
from typing import Dict, Tuple

import numpy as np

__all__ = ["CIFAR10_BINARY_MD5", "CIFAR_RECORD_BYTES", "DatasetError", "check_official_md5", "decode_png",
           "file_md5", "read_cifar_binary", "read_cifar_pickle", "read_idx", "verify_cifar10_binary"]


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


CIFAR_RECORD_BYTES = 3 * 32 * 32


class DatasetError(ValueError):
    """A data set is missing, incomplete or corrupt; the message says how to get it."""


def read_idx(path: str, *, ndim: int, help: str) -> np.ndarray:
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


def file_md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: Dict[Tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) of files that matched


def check_official_md5(path: str, help: str) -> None:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    expected = CIFAR10_BINARY_MD5[os.path.basename(path)]
    actual = file_md5(path)
    if actual != expected:
        raise DatasetError(f"{path} has the official size but MD5 {actual}, not the official {expected}: "
                           f"the file is corrupt. Remove it, then: {help}")
    _VERIFIED[key] = True


def read_cifar_binary(path: str, help: str) -> Tuple[np.ndarray, np.ndarray]:
    """Records of 1 label byte + 3072 image bytes (R, G, B planes of 32x32, row-major).

    A file of the official size (30,730,000 bytes) named as an official batch must also
    match the official MD5; other sizes (e.g. subsets) only need to be whole records.
    """
    size = os.path.getsize(path)
    record = 1 + CIFAR_RECORD_BYTES
    if size == 0 or size % record:
        raise DatasetError(f"{path}: {size} bytes is not a whole number of {record}-byte CIFAR records "
                           f"(the official files have 10000 records, {_CIFAR10_OFFICIAL_BYTES} bytes): the file "
                           f"is truncated or not CIFAR binary data. {help}")
    if size == _CIFAR10_OFFICIAL_BYTES and os.path.basename(path) in CIFAR10_BINARY_MD5:
        check_official_md5(path, help)
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
        actual = file_md5(path)
        if actual != expected:
            raise DatasetError(f"{path}: MD5 {actual} differs from the official {expected}")


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


def read_cifar_pickle(path: str, *, label_key: bytes, num_classes: int, help: str) -> Tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path, help)
    key = label_key.decode()
    if "data" not in batch or key not in batch:
        raise DatasetError(f"{path} lacks the 'data' or '{key}' entry of a CIFAR python batch. {help}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_RECORD_BYTES:
        raise DatasetError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, {CIFAR_RECORD_BYTES}). {help}")
    if labels.shape != (data.shape[0],):
        raise DatasetError(f"{path}: {labels.size} labels for {data.shape[0]} images. {help}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(f"{path}: '{key}' outside 0..{num_classes - 1}. {help}")
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), labels


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
