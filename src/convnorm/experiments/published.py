"""Published numbers that this project's results are read against, in one place.

Tasks (to label their records) and reports (to print a column beside the measured one)
import them from here; nothing here is measured by this project.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

__all__ = ["PUBLISHED_FREE_AT", "PUBLISHED_GAN_RESULTS", "PUBLISHED_TRAIN_VS_TEST_FID", "PUBLISHED_FID_TOLERANCE",
           "PAPER_TRAINED_NORMS"]

#: The ConvNorm paper's free-AT table (ResNet-18, CIFAR-10, eps 8/255, mean of 4 seeds; its
#: published notebook), in percent: (method, label, FGSM, PGD-20); ``None`` where the paper gives
#: no number. The paper's "ConvNorm" is its whole block (``convnorm-paper`` here); the first
#: free-AT setting ran ``convnorm+bn`` in its place, under this key.
PUBLISHED_FREE_AT: Tuple[Tuple[str, str, float, Optional[float]], ...] = (
    ("convnorm+bn", "ConvNorm (with BN)", 52.87, 44.75),
    ("sn", "SN", 52.34, 44.47),
    ("bn", "BN", 51.72, None),
    ("oni", "ONI", 48.33, 41.08),
    ("ocnn", "OCNN", 52.49, None),
)

#: Published SN-GAN CIFAR-10 numbers (not run here), for orientation only.
PUBLISHED_GAN_RESULTS: List[Dict[str, str]] = [
    {"source": "SN-GAN paper (Miyato et al. 2018, ICLR), Table 2", "model": "SN-GAN, ResNet, hinge loss",
     "training": "see paper", "evaluation": "see paper", "is": "8.22", "fid": "21.7"},
    {"source": "Mimicry (Lee & Town 2020), README baselines", "model": "SNGAN, ResNet 32x32",
     "training": "100K G steps, n_dis 5, batch 64, Adam 2e-4 (0.0, 0.9), linear decay",
     "evaluation": "50K real (train) / 50K generated", "is": "7.97", "fid": "16.77"},
]

#: TensorFlow Inception FID between all 50,000 CIFAR-10 training images and all 10,000 test
#: images: the published figure that FID re-implementations reproduce to about ±0.01.
PUBLISHED_TRAIN_VS_TEST_FID = 3.1508
#: How far this project's figure may lie from the published one before the pipeline is suspect.
PUBLISHED_FID_TOLERANCE = 0.05

#: Ranges of per-layer spectral norms read off the ConvNorm paper's figure of a trained
#: ResNet-18 on CIFAR-10: (smallest, largest) over the conv layers, per kind of layer.
PAPER_TRAINED_NORMS: Dict[str, Tuple[float, float]] = {"vanilla conv (BN network)": (5.0, 18.7),
                                                       "ConvNorm": (3.2, 8.7)}
