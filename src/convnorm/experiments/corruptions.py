"""Label corruptions and sample selections for the noisy-label and scarce-data studies.

Every function is deterministic given ``seed``: it draws from its own
``torch.Generator().manual_seed(seed)`` on the CPU, never from the global random state,
and returns tensors on the device of the labels it was given. Counts are exact, not
expected values: where a fraction of ``n`` samples is meant, exactly ``round(fraction * n)``
samples are chosen (Python's ``round``).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

__all__ = [
    "ASYMMETRIC_NOISE_MAPS", "asymmetric_noise", "per_class_subset", "realised_noise_rate",
    "symmetric_noise", "train_val_split",
]

#: Class-conditional ("asymmetric") noise: source class -> the class its flipped samples get.
#:
#: * ``cifar10``: the standard map of Patrini et al. (2017, loss correction), used
#:   throughout the noisy-label literature: truck -> automobile, bird -> airplane,
#:   cat <-> dog, deer -> horse.
#: * ``fashion-mnist``: the map used for this set in the same literature (Zhang & Sabuncu
#:   2018, generalized cross entropy; Kim et al. 2019, NLNL), so results can be compared:
#:   ankle boot -> sneaker, sneaker -> sandal, pullover -> shirt, coat <-> dress. Like the
#:   CIFAR-10 map it corrupts five classes, with one swapped pair, each into a class that
#:   a clean classifier confuses it with (footwear with footwear, upper-body garments with
#:   upper-body garments).
#: * ``cifar100``: the map of Patrini et al.'s code: the 100 fine classes in 20 blocks of
#:   five consecutive indices, each class flipped to the next one in its block
#:   (cyclically). The blocks are index blocks, not CIFAR-100's semantic superclasses.
ASYMMETRIC_NOISE_MAPS: Dict[str, Dict[int, int]] = {
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},
    "fashion-mnist": {9: 7, 7: 5, 2: 6, 4: 3, 3: 4},
    "cifar100": {c: (c // 5) * 5 + (c % 5 + 1) % 5 for c in range(100)},
}


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _check_labels(labels: torch.Tensor, num_classes: int = None) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype not in (
            torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be a 1-D integer tensor, got "
                         f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}")
    labels = labels.to(torch.int64)
    if num_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def _check_rate(rate: float, name: str = "rate") -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {rate}")
    return rate


def _check_fraction(fraction: float, name: str) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"{name} must lie in (0, 1], got {fraction}")
    return fraction


def _canonical_dataset(dataset: str) -> str:
    key = str(dataset).lower().replace("-", "").replace("_", "")
    for name in ASYMMETRIC_NOISE_MAPS:
        if name.replace("-", "") == key:
            return name
    raise ValueError(f"dataset must be one of {', '.join(ASYMMETRIC_NOISE_MAPS)} for asymmetric noise, "
                     f"got {dataset!r}")


def symmetric_noise(labels: torch.Tensor, rate: float, num_classes: int, *, seed: int,
                    variant: str = "uniform") -> torch.Tensor:
    """Class-independent ("symmetric") label noise.

    Exactly ``m = round(rate * N)`` samples, chosen uniformly without replacement, are
    relabelled:

    * ``variant="uniform"`` (the ConvNorm paper's public code, and most of the noisy-label
      literature): each chosen sample gets a label drawn uniformly from all ``K`` classes,
      which may be its own, so the realised flip rate is about ``rate * (1 - 1/K)``.
    * ``variant="flip"``: each chosen sample gets a label drawn uniformly from the ``K - 1``
      *other* classes, so exactly ``m`` labels change (realised rate ``m / N``).

    Args:
        labels: clean labels, integer tensor ``(N,)`` in ``[0, num_classes)``.
        rate: fraction of samples relabelled, in [0, 1].
        num_classes: number of classes ``K`` (at least 2).
        seed: seed of the private generator (chosen samples, then new labels).
        variant: ``"uniform"`` or ``"flip"``.

    Returns:
        Noisy labels, ``int64 (N,)`` on the device of ``labels`` (a new tensor).
    """
    if variant not in ("uniform", "flip"):
        raise ValueError(f"variant must be 'uniform' or 'flip', got {variant!r}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes}")
    num_classes = int(num_classes)
    clean = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    g = _generator(seed)
    n = clean.numel()
    chosen = torch.randperm(n, generator=g)[:round(rate * n)]
    noisy = clean.cpu().clone()
    if variant == "uniform":
        noisy[chosen] = torch.randint(0, num_classes, (chosen.numel(),), generator=g)
    else:
        shift = torch.randint(1, num_classes, (chosen.numel(),), generator=g)
        noisy[chosen] = (noisy[chosen] + shift) % num_classes
    return noisy.to(labels.device)


def asymmetric_noise(labels: torch.Tensor, rate: float, *, dataset: str, seed: int) -> torch.Tensor:
    """Class-dependent ("asymmetric") label noise from :data:`ASYMMETRIC_NOISE_MAPS`.

    For each source class ``s`` of the data set's map (in increasing order), exactly
    ``round(rate * N_s)`` of its ``N_s`` samples, chosen uniformly without replacement
    among the samples whose *clean* label is ``s``, get the label ``map[s]``. Classes not
    in the map are untouched. With a swapped pair (CIFAR-10's cat <-> dog) both directions
    are drawn from the clean labels, so the realised rate within each class is exact.

    Args:
        labels: clean labels, integer tensor ``(N,)``.
        rate: fraction of each source class relabelled, in [0, 1].
        dataset: ``"cifar10"``, ``"fashion-mnist"`` or ``"cifar100"``.
        seed: seed of the private generator.

    Returns:
        Noisy labels, ``int64 (N,)`` on the device of ``labels`` (a new tensor).
    """
    mapping = ASYMMETRIC_NOISE_MAPS[_canonical_dataset(dataset)]
    num_classes = 100 if len(mapping) == 100 else 10
    clean = _check_labels(labels, num_classes).cpu()
    rate = _check_rate(rate)
    g = _generator(seed)
    noisy = clean.clone()
    for source in sorted(mapping):
        members = torch.nonzero(clean == source).flatten()
        chosen = members[torch.randperm(members.numel(), generator=g)[:round(rate * members.numel())]]
        noisy[chosen] = mapping[source]
    return noisy.to(labels.device)


def realised_noise_rate(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """Fraction of samples whose noisy label differs from the clean one.

    Args:
        clean, noisy: integer tensors ``(N,)``, ``N > 0``.
    """
    clean, noisy = _check_labels(clean), _check_labels(noisy)
    if clean.shape != noisy.shape:
        raise ValueError(f"clean and noisy must have the same shape, got {tuple(clean.shape)} and "
                         f"{tuple(noisy.shape)}")
    if clean.numel() == 0:
        raise ValueError("clean and noisy are empty")
    return (clean != noisy.to(clean.device)).double().mean().item()


def per_class_subset(labels: torch.Tensor, fraction: float, *, seed: int) -> torch.Tensor:
    """Indices of a class-balanced random subset (the scarce-data setting).

    From each class present, with ``N_c`` samples, exactly ``max(1, round(fraction * N_c))``
    samples are chosen uniformly without replacement (at least one, so no class vanishes).

    Args:
        labels: integer tensor ``(N,)``.
        fraction: fraction of each class kept, in (0, 1].
        seed: seed of the private generator (classes are visited in increasing order).

    Returns:
        Sorted indices, ``int64 (M,)`` on the device of ``labels``.
    """
    clean = _check_labels(labels).cpu()
    fraction = _check_fraction(fraction, "fraction")
    g = _generator(seed)
    keep = []
    for c in torch.unique(clean).tolist():
        members = torch.nonzero(clean == c).flatten()
        count = max(1, round(fraction * members.numel()))
        keep.append(members[torch.randperm(members.numel(), generator=g)[:count]])
    indices = torch.cat(keep) if keep else torch.empty(0, dtype=torch.int64)
    return indices.sort().values.to(labels.device)


def train_val_split(labels: torch.Tensor, val_fraction: float, *, seed: int,
                    stratified: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into disjoint training and validation sets that cover all samples.

    Stratified (default): exactly ``round(val_fraction * N_c)`` samples of each class ``c``
    go to validation. Otherwise exactly ``round(val_fraction * N)`` samples, chosen
    uniformly, do.

    Args:
        labels: integer tensor ``(N,)``.
        val_fraction: fraction held out for validation, in (0, 1).
        seed: seed of the private generator.
        stratified: keep the class proportions in both parts.

    Returns:
        ``(train_idx, val_idx)``: sorted ``int64`` index tensors on the device of ``labels``.
    """
    clean = _check_labels(labels).cpu()
    val_fraction = float(val_fraction)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    g = _generator(seed)
    n = clean.numel()
    in_val = torch.zeros(n, dtype=torch.bool)
    if stratified:
        for c in torch.unique(clean).tolist():
            members = torch.nonzero(clean == c).flatten()
            in_val[members[torch.randperm(members.numel(), generator=g)[:round(val_fraction * members.numel())]]] = True
    else:
        in_val[torch.randperm(n, generator=g)[:round(val_fraction * n)]] = True
    train_idx, val_idx = torch.nonzero(~in_val).flatten(), torch.nonzero(in_val).flatten()
    return train_idx.to(labels.device), val_idx.to(labels.device)
