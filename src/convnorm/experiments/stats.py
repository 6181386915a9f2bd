"""Statistics over seeds and their formatting, shared by the report sections.

The classification report (:mod:`convnorm.experiments.report`), the memorisation view
(:mod:`convnorm.experiments.memorisation_report`), the adversarial one
(:mod:`convnorm.experiments.robust_report`) and the GAN one
(:mod:`convnorm.experiments.gan_report`) all summarise runs as mean ± sample standard
deviation over seeds; they take the numbers and their text from here, so the tables agree.
The classification and memorisation readings also share one rule for when a difference
between two methods counts (:func:`judge_difference`).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

__all__ = ["CONVNORM_METHODS", "METHOD_ORDER", "SPREAD_FACTOR", "SPREAD_FLOOR", "format_mean_std", "judge_difference",
           "mean_std", "method_key", "noise_label", "noise_sort_key"]

#: The order methods appear in every table: baselines, then the ConvNorm variants, then the others.
METHOD_ORDER = ("plain", "bn", "convnorm", "convnorm+bn", "convnorm-paper", "sn", "oni", "ocnn")


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std


#: The methods the paper's claims are about: ConvNorm alone, before BN, and the paper's block.
CONVNORM_METHODS = ("convnorm", "convnorm+bn", "convnorm-paper")

#: Two methods' means differ when they are further apart than this many times the larger of
#: their seed standard deviations...
SPREAD_FACTOR = 2.0
#: ...that standard deviation taken as at least this (a fraction: 0.1 percentage points).
SPREAD_FLOOR = 0.001


def judge_difference(base: Sequence[float], other: Sequence[float],
                     floor: float = SPREAD_FLOOR) -> Tuple[str, float]:
    """Whether ``other`` reads above or below ``base`` (non-empty values over seeds), and by how much.

    Returns ``(verdict, mean(other) - mean(base))`` with verdict ``"higher"`` or ``"lower"``
    when the means differ by more than :data:`SPREAD_FACTOR` times the larger sample std of
    the two sides (at least ``floor``, in the values' unit: :data:`SPREAD_FLOOR` for
    accuracies), ``"within spread"`` otherwise, and ``"one seed"`` when either side has a
    single value (no spread to judge against). With two or three seeds a side this is a
    screen, not a significance test.
    """
    (mb, sb), (mo, so) = mean_std(base), mean_std(other)
    diff = mo - mb
    if len(base) < 2 or len(other) < 2:
        return "one seed", diff
    if abs(diff) > SPREAD_FACTOR * max(sb, so, floor):
        return ("higher" if diff > 0 else "lower"), diff
    return "within spread", diff


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"84.12 ± 0.31"`` (in percent by default, ``digits`` decimals), or ``"84.12"`` for one
    value; ``"—"`` for none."""
    if not values:
        return "—"
    mean, std = mean_std(values)
    return f"{mean * scale:.{digits}f}" + ("" if math.isnan(std) else f" ± {std * scale:.{digits}f}")


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
