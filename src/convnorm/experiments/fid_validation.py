"""The FID pipeline's validation study: sanity checks on real CIFAR-10, and the published figure.

:func:`validate_fid` with every image of CIFAR-10 (``samples=25000`` and the whole test set,
``convnorm fid-validate --full``) computes the figure FID implementations are checked against:
all 50,000 training images against all 10,000 test images, published as
:data:`convnorm.experiments.published.PUBLISHED_TRAIN_VS_TEST_FID` for the TensorFlow
Inception FID. The features and the distances are :mod:`convnorm.experiments.fid`'s.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor

from convnorm.experiments.fid import (
    DEFAULT_CACHE_DIR,
    FEATURE_FILE,
    FEATURE_PACKAGE,
    PREPROCESSING,
    InceptionFeatures,
    cached_features,
    fid_from_features,
    file_sha256,
    kid,
)
from convnorm.experiments.published import PUBLISHED_FID_TOLERANCE, PUBLISHED_TRAIN_VS_TEST_FID
from convnorm.experiments.records import new_record, write_json

__all__ = ["published_comparison", "run_fid_validation", "validate_fid"]

_CIFAR10_TRAIN, _CIFAR10_TEST = 50000, 10000


def _comparison(a: Tensor, b: Tensor, *, kid_seed: int = 0) -> Dict[str, float]:
    kid_mean, kid_std = kid(a, b, seed=kid_seed)
    return {"fid": fid_from_features(a, b), "kid": kid_mean, "kid_std": kid_std, "n1": len(a), "n2": len(b)}


def validate_fid(train_images: Tensor, test_images: Optional[Tensor], *, samples: int,
                 extractor: Callable[[Tensor], Tensor], cache_dir: Optional[str],
                 log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """The sanity checks of an FID pipeline on real images.

    * ``self``: FID of ``train[:samples]`` against itself (0 up to rounding);
    * ``train_halves``: FID and KID between ``train[:samples]`` and the disjoint
      ``train[samples:2 samples]`` (two samples of one distribution: what is left is the
      finite-sample bias of FID at this ``samples``);
    * ``train_vs_test`` (when ``test_images`` is given): ``train[:samples]`` against
      ``test[:len(test_images)]``;
    * ``train_pooled_vs_test`` (when ``test_images`` is given): both halves together,
      ``train[:2 samples]``, against the test images; with every image of CIFAR-10 this is
      the published comparison (:func:`published_comparison`).

    Returns the results and the seconds spent computing features.
    """
    if samples < 2 or 2 * samples > len(train_images):
        raise ValueError(f"samples must be in [2, {len(train_images) // 2}], got {samples}")
    t0 = time.perf_counter()
    first = cached_features(train_images[:samples], extractor, cache_dir, log=log)
    second = cached_features(train_images[samples:2 * samples], extractor, cache_dir, log=log)
    test = cached_features(test_images, extractor, cache_dir, log=log) if test_images is not None else None
    feature_s = time.perf_counter() - t0
    results: Dict[str, Any] = {"self": {"fid": fid_from_features(first, first), "n1": samples, "n2": samples},
                               "train_halves": _comparison(first, second)}
    if test is not None:
        results["train_vs_test"] = _comparison(first, test)
        results["train_pooled_vs_test"] = _comparison(torch.cat([first, second]), test)
    return {"results": results, "feature_time_s": feature_s}


def published_comparison(results: Dict[str, Any], *, dataset: str) -> Optional[Dict[str, Any]]:
    """This project's FID beside the published one, when ``results`` used every CIFAR-10 image.

    ``results`` is :func:`validate_fid`'s ``"results"``. Returns None unless its
    ``train_pooled_vs_test`` compares all 50,000 training images with all 10,000 test images;
    otherwise the published figure, the tolerance, the difference (this project's minus the
    published) and whether it lies within the tolerance.
    """
    pooled = results.get("train_pooled_vs_test")
    if dataset != "cifar10" or pooled is None or (pooled["n1"], pooled["n2"]) != (_CIFAR10_TRAIN, _CIFAR10_TEST):
        return None
    difference = pooled["fid"] - PUBLISHED_TRAIN_VS_TEST_FID
    return {"comparison": "train_pooled_vs_test", "published_fid": PUBLISHED_TRAIN_VS_TEST_FID,
            "tolerance": PUBLISHED_FID_TOLERANCE, "fid": pooled["fid"], "difference": difference,
            "within_tolerance": abs(difference) <= PUBLISHED_FID_TOLERANCE}


def run_fid_validation(out_dir: str = os.path.join("results", "fid-validation"), *, samples: int = 2000,
                       data_root: Optional[str] = None, test_samples: Optional[int] = None,
                       cache_dir: Optional[str] = DEFAULT_CACHE_DIR, device: Optional[str] = None,
                       batch_size: int = 50, log: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
    """Run :func:`validate_fid` on CIFAR-10 and write the record (kind ``"fid-validation"``).

    Args:
        out_dir: where ``fid-validation-cifar10-n<samples>-t<test_samples>.json`` goes.
        samples: images per training-set half (``2 * samples`` training images are used).
        data_root: CIFAR-10 folder (see :func:`convnorm.experiments.data.load_dataset`).
        test_samples: test images for train-vs-test (default ``samples``; 0 skips it).
        cache_dir: feature cache (None: no cache).
        device: where to run Inception (default: CUDA when available, else CPU).
        batch_size: images per Inception forward.

    Returns:
        the record.
    """
    from convnorm.experiments.data import load_dataset

    test_samples = samples if test_samples is None else int(test_samples)
    if test_samples < 0:
        raise ValueError(f"test_samples must be non-negative, got {test_samples}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = InceptionFeatures(device=str(dev), batch_size=batch_size)
    train = load_dataset("cifar10", train=True, root=data_root)
    test = load_dataset("cifar10", train=False, root=data_root).images[:test_samples] if test_samples else None
    config = {"dataset": "cifar10", "samples": samples, "test_samples": test_samples,
              "features": f"{FEATURE_PACKAGE} {FEATURE_FILE}", "preprocessing": PREPROCESSING,
              "kid": {"subsets": 100, "subset_size": 1000, "seed": 0}}
    record = new_record("fid-validation", config, seed=None, device=dev)
    t0 = time.perf_counter()
    out = validate_fid(train.images, test, samples=samples, extractor=extractor, cache_dir=cache_dir, log=log)
    images = 2 * samples + test_samples
    record.update(out, wall_time_s=time.perf_counter() - t0, images=images,
                  feature_file_sha256=file_sha256(extractor.path),
                  seconds_per_image=out["feature_time_s"] / images)
    published = published_comparison(out["results"], dataset=config["dataset"])
    if published is not None:
        record["published"] = published
    path = os.path.join(out_dir, f"fid-validation-cifar10-n{samples}-t{test_samples}.json")
    write_json(path, record)
    if log:
        r = out["results"]
        log(f"FID self {r['self']['fid']:.3g}; train halves {r['train_halves']['fid']:.2f} "
            f"(KID {r['train_halves']['kid']:.5f})"
            + (f"; train vs test {r['train_vs_test']['fid']:.2f}" if "train_vs_test" in r else "")
            + (f"; all train vs all test {published['fid']:.4f} (published {published['published_fid']})"
               if published is not None else "")
            + f"; record {path}")
    return record
