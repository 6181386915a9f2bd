"""Statistics over seeds and their formatting, shared by the report sections.

The classification report (:mod:`convnorm.experiments.report`), the adversarial one
(:mod:`convnorm.experiments.robust_report`) and the GAN one
(:mod:`convnorm.experiments.gan_report`) all summarise runs as mean ± sample standard
deviation over seeds; they take the numbers and their text from here, so the tables agree.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

__all__ = ["METHOD_ORDER", "format_mean_std", "mean_std", "method_key", "noise_label", "noise_sort_key"]

#: The order methods appear in every table: baselines, then the ConvNorm variants, then the others.
METHOD_ORDER = ("plain", "bn", "convnorm", "convnorm+bn", "convnorm-paper", "sn", "oni", "ocnn")


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


def format_mean_std(values: Sequence[float], scale: float = 100.0) -> str:
    """``"84.12 ± 0.31"`` (in percent by default), or ``"84.12"`` for one value; ``"—"`` for none."""
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean * scale:.2f}" if math.isnan(std) else f"{mean * scale:.2f} ± {std * scale:.2f}"


def method_key(method: str) -> Tuple[int, str]:
    """Sort key that puts methods in :data:`METHOD_ORDER` (unknown ones last, by name)."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def noise_label(config: Dict[str, Any]) -> str:
    """A run's label condition as tables name it: ``"clean"``, ``"sym 40%"``, ``"asy 40%"``."""
    if config["noise"] == "none" or config["noise_rate"] == 0:
        return "clean"
    return f"{config['noise'][:3]} {config['noise_rate'] * 100:g}%"


def noise_sort_key(label: str) -> Tuple[int, float]:
    """Sort key for :func:`noise_label` labels: clean, then symmetric, then asymmetric, by rate."""
    if label == "clean":
        return (0, 0.0)
    kind, rate = label.split()
    return (1 if kind == "sym" else 2, float(rate.rstrip("%")))
