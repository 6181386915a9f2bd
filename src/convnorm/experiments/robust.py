"""Adversarial robustness: free adversarial training, FGSM and PGD evaluation, gradient-masking checks.

Threat model: L-infinity perturbations of at most ``eps`` in [0, 1] pixel space, applied to
the image *before* input normalization. Every attacked function is therefore a
:class:`NormalizedModel`: ``[0, 1]`` images in, logits out, normalization inside.

Training is "free" adversarial training (Shafahi et al., 2019, *Adversarial Training for
Free!*): each minibatch is replayed ``m`` times; every replay makes one SGD step on the
perturbed batch and, from the same backward pass, one FGSM ascent step
``delta <- clip(delta + step * sign(grad_delta), -eps, eps)`` on the perturbation. The
perturbed input is ``clamp(x + delta, 0, 1)``. Two ways to start each minibatch's delta
(``perturbation_reset``):

- ``"batch"``: delta starts at zero for every minibatch (the ConvNorm paper's public code);
- ``"carry"``: delta carries over from the previous minibatch, across epochs too (Shafahi
  et al.'s method and code). One ``(batch_size, C, H, W)`` buffer is kept; a smaller last
  batch uses (and updates) its first rows. The buffer is part of the checkpoint.

Epoch counting (``epoch_counting``):

- ``"passes"`` (default, the ConvNorm public code): an epoch is one pass over the training
  set with each minibatch replayed ``m`` times, so an epoch makes ``m`` times the SGD
  steps of a standard epoch; the step schedule's milestones are in these epochs. The
  paper's 30 epochs with milestones 10/20 and ``m = 4`` are 120 standard epochs' worth of
  gradient computations.
- ``"divide-by-replays"`` (Shafahi et al.'s public code): ``epochs`` counts standard
  epochs of gradient computations, so the run makes ``ceil(epochs / m)`` passes, and each
  milestone ``t`` becomes pass ``ceil(t / m)``.

Files of a run named ``<name>`` (see :func:`adv_run_name`): ``<out>/<name>.json`` (the record,
kind ``"robust"``, rewritten atomically after every epoch and after the final evaluation)
and ``<checkpoints>/<name>.pt`` (model, optimizer, carried perturbation, history; written
atomically after every epoch). :func:`train_free_at` resumes from the checkpoint; every
random draw comes from ``(seed, epoch)``, so an interrupted and resumed run equals an
uninterrupted one. Single process only (no DDP).

Evaluation (:func:`evaluate_robustness`) reports clean, FGSM and PGD accuracy and two
gradient-masking sanity checks (Athalye et al., 2018; Carlini et al., 2019): PGD accuracy
must fall monotonically with eps and reach about zero at a large eps, and PGD must not be
weaker than FGSM.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convnorm.experiments.augment import random_crop_flip
from convnorm.experiments.corruptions import per_class_subset
from convnorm.experiments.data import dataset_stats, load_dataset
from convnorm.experiments.methods import METHODS, apply_method
from convnorm.experiments.models import build_model
from convnorm.experiments.records import config_digest, config_from_preset, config_identity, save_checkpoint, iter_records, new_record, read_json, write_json
from convnorm.experiments.train import _epoch_generator, validate_common

__all__ = [
    "ADV_PRESETS", "AdvConfig", "DEFAULT_EPS_SWEEP", "NormalizedModel", "PUBLISHED_FREE_AT", "adv_preset",
    "adv_run_name", "evaluate_checkpoint", "evaluate_robustness", "fgsm", "free_at_batch", "load_checkpoint_model",
    "pgd", "prepare_adv_data", "report_section", "train_free_at",
]

#: The eps values (in [0, 1] pixel units) of the gradient-masking sweep: 0, 2, 4, 8, 16, 32, 64 / 255.
DEFAULT_EPS_SWEEP: Tuple[float, ...] = tuple(k / 255 for k in (0, 2, 4, 8, 16, 32, 64))


# -- the attacked function ----------------------------------------------------------------

class NormalizedModel(nn.Module):
    """``model((x - mean) / std)``: takes images in [0, 1], so attacks work in pixel space.

    Args:
        model: a classifier of normalized images.
        mean, std: per-channel statistics in [0, 1] pixel units (``C`` numbers).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


# -- attacks --------------------------------------------------------------------------------

def _input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Gradient of the mean cross-entropy with respect to the input only (parameters untouched)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """FGSM (Goodfellow et al., 2015): ``clamp(x + eps * sign(grad_x CE(model(x), y)), 0, 1)``.

    One step from ``x`` itself (no random start). ``model`` takes images in [0, 1] (wrap a
    classifier of normalized images in :class:`NormalizedModel`); it is used in whatever mode
    it is in. The loss is the batch-mean cross-entropy, as in ``torchattacks.FGSM``.

    Args:
        model: images ``(N, C, H, W)`` in [0, 1] -> logits ``(N, K)``.
        x: float images in [0, 1]; y: int64 labels ``(N,)``.
        eps: L-inf radius in [0, 1] pixel units.

    Returns:
        Adversarial images, detached, within ``eps`` of ``x`` and in [0, 1].
    """
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    grad = _input_gradient(model, x, y)
    return torch.clamp(x.detach() + eps * grad.sign(), 0, 1)


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, step: float, steps: int, restarts: int = 1,
        seed: int = 0, *, random_start: bool = True, generator: Optional[torch.Generator] = None) -> Tensor:
    """L-inf PGD (Madry et al., 2018) with random restarts, keeping each sample's worst case.

    Each restart starts at ``clamp(x + u, 0, 1)`` with ``u ~ Uniform[-eps, eps]`` (or at ``x``
    if ``random_start`` is false) and takes ``steps`` steps
    ``x' <- clamp(x + clip(x' + step * sign(grad) - x, -eps, eps), 0, 1)`` of the batch-mean
    cross-entropy, exactly as ``torchattacks.PGD``. Over restarts, each sample keeps the
    result of the restart that fools the model, else the one with the highest loss.

    Args:
        model: images in [0, 1] -> logits (see :func:`fgsm`); used in its current mode.
        x, y: images in [0, 1] and labels.
        eps: L-inf radius; step: step size (both in [0, 1] pixel units); steps: iterations
            (0 gives the start point).
        restarts: number of runs (>= 1).
        seed: seeds a private CPU generator for the random starts (unless ``generator``).
        random_start: start at a uniform point in the eps ball (the standard PGD).
        generator: a CPU generator to draw the starts from instead (it advances).

    Returns:
        Adversarial images, detached, within ``eps`` of ``x`` and in [0, 1].
    """
    if eps < 0 or step < 0:
        raise ValueError(f"eps and step must be non-negative, got eps={eps}, step={step}")
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    x = x.detach()
    if random_start and generator is None:
        generator = torch.Generator().manual_seed(seed)
    best = best_loss = best_fooled = None
    for _ in range(restarts):
        adv = x.clone()
        if random_start:
            noise = torch.empty(x.shape, dtype=x.dtype).uniform_(-eps, eps, generator=generator)
            adv = torch.clamp(adv + noise.to(x.device), 0, 1)
        for _ in range(steps):
            grad = _input_gradient(model, adv, y)
            adv = adv + step * grad.sign()
            adv = torch.clamp(x + torch.clamp(adv - x, -eps, eps), 0, 1)
        if restarts == 1:
            return adv
        with torch.no_grad():
            logits = model(adv)
            loss = F.cross_entropy(logits, y, reduction="none")
            fooled = logits.argmax(1) != y
        if best is None:
            best, best_loss, best_fooled = adv, loss, fooled
            continue
        better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
        best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), adv, best)
        best_loss = torch.where(better, loss, best_loss)
        best_fooled = best_fooled | fooled
    return best


# -- evaluation -----------------------------------------------------------------------------

def _pgd_sweep_step(eps: float, pgd_step: float, steps: int) -> float:
    """Step size of the sweep at ``eps``: the main step, or 2.5 eps / steps if larger (so that
    the attack can cross the whole ball at large eps, as Madry et al.'s rule)."""
    return max(pgd_step, 2.5 * eps / max(steps, 1))


def _correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return (model(x).argmax(1) == y).cpu()


def _to_float(images_uint8: Tensor, device: torch.device) -> Tensor:
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (pixel values 0..255), got {images_uint8.dtype}")
    return images_uint8.to(device).float().div_(255)


def _pgd_correct(model, images, labels, *, eps, step, steps, restarts, seed, batch_size, device) -> Tensor:
    """Per-sample correctness under PGD over the whole set; one generator for all batches."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(images), batch_size):
        x = _to_float(images[start:start + batch_size], device)
        y = labels[start:start + batch_size].to(device)
        adv = pgd(model, x, y, eps, step, steps, restarts, generator=gen)
        out.append(_correct(model, adv, y))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def evaluate_robustness(
    model: nn.Module,
    images_uint8: Tensor,
    labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    eps: float = 8 / 255,
    pgd_steps: int = 20,
    pgd_step: float = 2 / 255,
    restarts: int = 1,
    batch_size: int = 500,
    seed: int = 0,
    eps_sweep: Optional[Sequence[float]] = DEFAULT_EPS_SWEEP,
    sweep_samples: Optional[int] = 1000,
    monotone_tolerance: float = 0.01,
    zero_threshold: float = 0.05,
    violation_tolerance: float = 0.01,
    device: Optional[str] = None,
) -> Dict[str, Any]:
    """Clean, FGSM and PGD accuracy of ``model`` in eval mode, and gradient-masking checks.

    Args:
        model: a classifier of *normalized* images; it is wrapped in :class:`NormalizedModel`
            so the attacks perturb [0, 1] pixels. Put in eval mode; its mode is restored after.
        images_uint8: ``uint8 (N, C, H, W)`` test images; labels: ``int64 (N,)``.
        mean, std: the normalization statistics the model was trained with.
        eps: L-inf radius of FGSM and PGD ([0, 1] pixel units).
        pgd_steps, pgd_step, restarts: PGD-K settings (random start; each sample keeps its
            worst restart).
        batch_size: images per attack batch. Results are deterministic given ``seed`` and
            ``batch_size``.
        seed: seeds PGD's random starts.
        eps_sweep: eps values for the sweep check (``None`` or empty: no sweep). At each
            ``e`` the sweep runs PGD with ``pgd_steps`` steps of ``max(pgd_step, 2.5 e / pgd_steps)``.
        sweep_samples: the sweep uses the first this many images (``None``: all).
        monotone_tolerance: the sweep accuracy may rise by at most this much (absolute)
            from one eps to the next and still count as falling.
        zero_threshold: the accuracy at the largest sweep eps must be at most this.
        violation_tolerance: at most this fraction of samples may be fooled by FGSM but not
            by PGD (aggregate PGD accuracy must also be at most FGSM accuracy).
        device: where to compute (default: the model's device).

    Returns:
        A JSON-ready dict: ``samples``, ``clean_acc``, ``fgsm_acc``, ``pgd_acc``,
        ``fgsm_and_pgd_acc`` (correct under both), ``attack`` (the settings), ``eps_sweep``
        (list of ``{eps, eps_255, step, acc}``), ``checks`` (``sweep_monotone``,
        ``sweep_reaches_zero``, ``pgd_not_weaker_than_fgsm``, each with ``passed`` and its
        numbers; a check that cannot run has ``passed: None``) and ``checks_passed``
        (all checks that ran passed).
    """
    if images_uint8.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_uint8.shape[0]} images but {labels.shape[0]} labels")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    first = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    was_training = model.training
    attacked = NormalizedModel(model, mean, std).to(dev).eval()
    try:
        n = len(labels)
        clean, under_fgsm = [], []
        for start in range(0, n, batch_size):
            x = _to_float(images_uint8[start:start + batch_size], dev)
            y = labels[start:start + batch_size].to(dev)
            clean.append(_correct(attacked, x, y))
            under_fgsm.append(_correct(attacked, fgsm(attacked, x, y, eps), y))
        clean_c = torch.cat(clean) if clean else torch.zeros(0, dtype=torch.bool)
        fgsm_c = torch.cat(under_fgsm) if under_fgsm else torch.zeros(0, dtype=torch.bool)
        pgd_c = _pgd_correct(attacked, images_uint8, labels, eps=eps, step=pgd_step, steps=pgd_steps,
                             restarts=restarts, seed=seed, batch_size=batch_size, device=dev)

        sweep = []
        m = n if sweep_samples is None else min(n, int(sweep_samples))
        for e in (eps_sweep or ()):
            step_e = _pgd_sweep_step(e, pgd_step, pgd_steps)
            c = _pgd_correct(attacked, images_uint8[:m], labels[:m], eps=e, step=step_e, steps=pgd_steps,
                             restarts=restarts, seed=seed, batch_size=batch_size, device=dev)
            sweep.append(dict(eps=float(e), eps_255=round(float(e) * 255, 6), step=float(step_e),
                              acc=_mean(c)))
    finally:
        model.train(was_training)

    violations = int((~fgsm_c & pgd_c).sum())
    checks: Dict[str, Dict[str, Any]] = {}
    ordered = sorted(sweep, key=lambda r: r["eps"])
    if len(ordered) >= 2:
        rise = max(b["acc"] - a["acc"] for a, b in zip(ordered, ordered[1:]))
        checks["sweep_monotone"] = dict(passed=bool(rise <= monotone_tolerance), max_rise=rise,
                                        tolerance=monotone_tolerance)
    else:
        checks["sweep_monotone"] = dict(passed=None, max_rise=None, tolerance=monotone_tolerance)
    if ordered:
        last = ordered[-1]
        checks["sweep_reaches_zero"] = dict(passed=bool(last["acc"] <= zero_threshold), largest_eps=last["eps"],
                                            largest_eps_255=last["eps_255"], acc_at_largest_eps=last["acc"],
                                            threshold=zero_threshold)
    else:
        checks["sweep_reaches_zero"] = dict(passed=None, largest_eps=None, largest_eps_255=None,
                                            acc_at_largest_eps=None, threshold=zero_threshold)
    pgd_acc, fgsm_acc = _mean(pgd_c), _mean(fgsm_c)
    rate = violations / n if n else 0.0
    checks["pgd_not_weaker_than_fgsm"] = dict(
        passed=bool(pgd_acc <= fgsm_acc and rate <= violation_tolerance), pgd_acc=pgd_acc, fgsm_acc=fgsm_acc,
        violations=violations, violation_rate=rate, violation_tolerance=violation_tolerance)
    ran = [c["passed"] for c in checks.values() if c["passed"] is not None]
    return dict(
        samples=n, clean_acc=_mean(clean_c), fgsm_acc=fgsm_acc, pgd_acc=pgd_acc,
        fgsm_and_pgd_acc=_mean(fgsm_c & pgd_c),
        attack=dict(norm="Linf", space="[0, 1] pixels, before normalization", eps=float(eps),
                    eps_255=round(float(eps) * 255, 6),
                    fgsm=dict(random_start=False),
                    pgd=dict(steps=int(pgd_steps), step=float(pgd_step), step_255=round(float(pgd_step) * 255, 6),
                             restarts=int(restarts), random_start=True, seed=int(seed)),
                    loss="cross-entropy (batch mean)", batch_size=int(batch_size),
                    sweep_samples=m if sweep else 0),
        eps_sweep=sweep, checks=checks, checks_passed=all(ran) if ran else None,
    )


def _mean(correct: Tensor) -> float:
    return float(correct.double().mean()) if correct.numel() else float("nan")


# -- configuration --------------------------------------------------------------------------

@dataclass
class AdvConfig:
    """Everything that defines a free-adversarial-training run (its name and its record).

    Units: ``eps`` and ``step`` in [0, 1] pixel units (``8 / 255``); ``epochs`` as set by
    ``epoch_counting`` (see the module docstring); ``milestones`` in the same epochs;
    ``lr`` per SGD step (every replay is a step).
    """

    dataset: str = "cifar10"
    model: str = "resnet18"
    method: str = "bn"
    model_options: Dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4          # on weights only (not on 1-d parameters), as train.py
    schedule: str = "step"              # "step" (per epoch) or "cosine" (per step)
    milestones: Sequence[int] = (10, 20)
    gamma: float = 0.1
    augment: bool = True                # 4-px zero-padded random crop + horizontal flip, in [0, 1] pixels
    train_fraction: float = 1.0         # per-class fraction of the training set kept (no validation split)
    ocnn_weight: float = 0.1            # weight of the OCNN loss term (method "ocnn" only)
    replays: int = 4                    # m: SGD steps (and FGSM steps on delta) per minibatch
    eps: float = 8 / 255                # training perturbation radius (L-inf)
    step: float = 8 / 255               # FGSM step on delta per replay
    perturbation_reset: str = "batch"   # "batch" (ConvNorm public code) or "carry" (Shafahi et al.)
    epoch_counting: str = "passes"      # "passes" (ConvNorm public code) or "divide-by-replays" (Shafahi et al.)
    eval_eps: Optional[float] = None    # attack radius at evaluation (default: eps)
    eval_pgd_steps: int = 20
    eval_pgd_step: float = 2 / 255
    eval_restarts: int = 1
    eval_samples: Optional[int] = None  # first N test images for the final evaluation (None: all)
    eval_batch_size: int = 500
    sweep_eps: Sequence[float] = DEFAULT_EPS_SWEEP
    sweep_samples: Optional[int] = 1000
    monitor_samples: int = 500          # per-epoch PGD accuracy on the first N test images (0: off)
    monitor_pgd_steps: int = 10
    seed: int = 0
    data_root: Optional[str] = field(default=None, metadata={"identity": False})

    def validate(self) -> None:
        validate_common(self)
        if self.perturbation_reset not in ("batch", "carry"):
            raise ValueError(f"perturbation_reset must be 'batch' or 'carry', got {self.perturbation_reset!r}")
        if self.epoch_counting not in ("passes", "divide-by-replays"):
            raise ValueError(f"epoch_counting must be 'passes' or 'divide-by-replays', got {self.epoch_counting!r}")
        for name in ("replays", "eval_batch_size", "eval_restarts"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("eps", "step", "eval_pgd_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.eval_eps is not None and self.eval_eps < 0:
            raise ValueError(f"eval_eps must be non-negative, got {self.eval_eps}")
        for name in ("eval_pgd_steps", "monitor_samples", "monitor_pgd_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if any(e < 0 for e in self.sweep_eps):
            raise ValueError(f"sweep_eps must be non-negative, got {list(self.sweep_eps)}")

    def identity(self) -> Dict[str, Any]:
        """The fields that define the result (not where the data happens to live)."""
        return config_identity(self)

    @property
    def attack_eps(self) -> float:
        return self.eps if self.eval_eps is None else self.eval_eps

    def passes(self) -> int:
        """Passes over the training set the run makes."""
        if self.epoch_counting == "passes":
            return self.epochs
        return math.ceil(self.epochs / self.replays)

    def pass_milestones(self) -> List[int]:
        """The step schedule's milestones in passes."""
        if self.epoch_counting == "passes":
            return [int(t) for t in self.milestones]
        return [math.ceil(t / self.replays) for t in self.milestones]


ADV_PRESETS: Dict[str, Dict[str, Any]] = {
    # The ConvNorm paper's free-AT setting (public code, config_robust_train.json): CIFAR-10,
    # ResNet-18, 30 epochs of m = 4 replays, lr 0.1 dropping x0.1 at epochs 10 and 20,
    # batch 128, weight decay 1e-4, eps = step = 8/255, delta reset per minibatch.
    "paper-free-at": dict(dataset="cifar10", model="resnet18", epochs=30, batch_size=128, lr=0.1, momentum=0.9,
                          weight_decay=1e-4, schedule="step", milestones=(10, 20), gamma=0.1, augment=True,
                          train_fraction=1.0, replays=4, eps=8 / 255, step=8 / 255, perturbation_reset="batch",
                          epoch_counting="passes", eval_pgd_steps=20, eval_pgd_step=2 / 255, eval_samples=None,
                          sweep_samples=1000, monitor_samples=500),
    # Small ResNet on a CIFAR-10 subset, sized for 2 CPU cores (see docs/robustness.md).
    # The paper's recipe scaled down: 10% of the training set, 12 epochs with the milestones at
    # 1/3 and 2/3 as in the paper, attacks on the first 1000 test images.
    "cpu-free-at": dict(dataset="cifar10", model="small_resnet", epochs=12, batch_size=128, lr=0.1, momentum=0.9,
                        weight_decay=1e-4, schedule="step", milestones=(4, 8), gamma=0.1, augment=True,
                        train_fraction=0.1, replays=4, eps=8 / 255, step=8 / 255, perturbation_reset="batch",
                        epoch_counting="passes", eval_pgd_steps=20, eval_pgd_step=2 / 255, eval_samples=1000,
                        sweep_samples=200, monitor_samples=200),
    # Tests: tiny synthetic data, seconds.
    "test": dict(dataset="synthetic", model="small_resnet", model_options={"widths": (4, 8, 8)}, epochs=2,
                 batch_size=32, lr=0.05, schedule="step", milestones=(1,), augment=True, train_fraction=0.04,
                 replays=2, eps=8 / 255, step=8 / 255, eval_pgd_steps=3, eval_samples=64, eval_batch_size=64,
                 sweep_eps=(0.0, 8 / 255, 64 / 255), sweep_samples=32, monitor_samples=32, monitor_pgd_steps=2),
}


def adv_preset(name: str, **overrides) -> AdvConfig:
    """An :class:`AdvConfig` from preset ``name`` (see :data:`ADV_PRESETS`) with overrides
    (``None`` values are ignored, so unset command-line options keep the preset's)."""
    return config_from_preset(AdvConfig, ADV_PRESETS, name, overrides)


def adv_run_name(config: AdvConfig) -> str:
    """A readable, unique file stem: key settings plus a short hash of the whole config."""
    frac = "" if config.train_fraction == 1 else f"-frac{config.train_fraction:g}"
    digest = config_digest(config)
    method = config.method.replace("+", "_")
    return (f"robust-{config.dataset}-{config.model}-{method}-free{config.replays}-eps{config.eps * 255:g}-"
            f"{config.perturbation_reset}{frac}-s{config.seed}-{digest}")


# -- data -----------------------------------------------------------------------------------

@dataclass
class AdvData:
    """uint8 ``(N, C, H, W)`` images and int64 labels of a run (clean labels, no validation split)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    info: Dict[str, Any]


def prepare_adv_data(config: AdvConfig) -> AdvData:
    """The training subset exactly as :func:`convnorm.experiments.train.prepare_data` draws it
    (``per_class_subset`` with the run's seed), without label noise or a validation split
    (the whole subset is trained on, as in the paper's code), and the full test split."""
    train = load_dataset(config.dataset, train=True, root=config.data_root)
    test = load_dataset(config.dataset, train=False, root=config.data_root)
    images, labels = train.images, train.labels
    if config.train_fraction < 1:
        keep = per_class_subset(labels, config.train_fraction, seed=config.seed)
        images, labels = images[keep], labels[keep]
    mean, std = dataset_stats(config.dataset)
    info = dict(train_size=len(labels), test_size=len(test))
    return AdvData(images, labels, test.images, test.labels, train.num_classes, tuple(mean), tuple(std), info)


# -- training -------------------------------------------------------------------------------

def _learning_rate(config: AdvConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """lr at SGD step ``step`` (counting replays) of pass ``epoch`` (0-based)."""
    if config.schedule == "step":
        return config.lr * config.gamma ** sum(epoch >= m for m in config.pass_milestones())
    progress = (epoch * steps_per_epoch + step) / (config.passes() * steps_per_epoch)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


def _build(model: str, method: str, in_channels: int, num_classes: int, model_options: Dict[str, Any]):
    net = build_model(model, in_channels=in_channels, num_classes=num_classes, **model_options)
    return apply_method(net, method)


def free_at_batch(model: nn.Module, x: Tensor, y: Tensor, delta: Tensor, optimizer: torch.optim.Optimizer, *,
                  eps: float, step: float, lrs: Sequence[float],
                  regularizer: Optional[Callable[[], Tensor]] = None) -> Tensor:
    """Free adversarial training on one minibatch: ``len(lrs)`` replays (``m``).

    Replay ``r`` sets the learning rate to ``lrs[r]``, computes
    ``loss = CE(model(clamp(x + delta, 0, 1)), y) (+ regularizer())``, and from its one
    backward pass takes an SGD step on the parameters and an FGSM ascent step on the
    perturbation, ``delta <- clip(delta + step * sign(grad_delta), -eps, eps)``.

    Args:
        model: images in [0, 1] -> logits (a :class:`NormalizedModel`), in the mode wanted.
        x: images in [0, 1]; y: labels.
        delta: the perturbation, shape of ``x``, updated **in place** (pass zeros for the
            per-minibatch reset, or a view of the carried buffer to carry it over).
        optimizer: steps the model's parameters.
        eps, step: radius and FGSM step, [0, 1] pixel units.
        lrs: learning rate of each replay.
        regularizer: an extra loss term of the parameters (OCNN), already weighted.

    Returns:
        float64 ``[sum of loss * batch size, correct predictions, samples]`` over the replays.
    """
    sums = torch.zeros(3, dtype=torch.float64)
    nb = len(y)
    for lr in lrs:
        for group in optimizer.param_groups:
            group["lr"] = lr
        d = delta.detach().clone().requires_grad_(True)
        logits = model(torch.clamp(x + d, 0, 1))
        loss = F.cross_entropy(logits, y)
        if regularizer is not None:
            loss = loss + regularizer()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # the FGSM step on delta reuses this backward pass
            delta.copy_(torch.clamp(delta + step * d.grad.sign(), -eps, eps))
        optimizer.step()
        sums += torch.tensor([loss.item() * nb, float((logits.detach().argmax(1) == y).sum()), nb],
                             dtype=torch.float64)
    return sums


def train_free_at(
    config: AdvConfig,
    *,
    out_dir: str = os.path.join("results", "robust"),
    checkpoint_dir: str = os.path.join("checkpoints", "robust"),
    device: Optional[str] = None,
    stop_after_epoch: Optional[int] = None,
    log=print,
) -> Dict[str, Any]:
    """Free adversarial training of ``config``, then its evaluation; returns the record.

    Resumes from ``<checkpoint_dir>/<name>.pt`` when present; a finished (or diverged) run
    returns its record at once. The final evaluation (:func:`evaluate_robustness` on the test set with
    the config's ``eval_*`` and ``sweep_*`` settings) runs after the last epoch, on the final
    weights, and is written into the record (``status`` becomes ``"complete"``).

    Args:
        config: the run.
        out_dir: where the JSON record goes.
        checkpoint_dir: where the resumable state goes.
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        stop_after_epoch: return after this many epochs (passes) in total, as an
            interruption would (the record stays ``"running"``; a later call resumes).
        log: one line per epoch (``None``: silent).

    Raises:
        ValueError: an existing record or checkpoint of the same name holds another config.
    """
    config.validate()
    say = log or (lambda *_: None)
    name = adv_run_name(config)
    record_path = os.path.join(out_dir, f"{name}.json")
    state_path = os.path.join(checkpoint_dir, f"{name}.pt")
    if os.path.exists(record_path):
        existing = read_json(record_path)
        if existing.get("config") != config.identity():
            raise ValueError(f"{record_path} holds a different config; remove it or change the output folder")
        if existing.get("status") == "complete":
            say(f"{name}: complete, clean {existing['clean_acc']:.4f} FGSM {existing['fgsm_acc']:.4f} "
                f"PGD {existing['pgd_acc']:.4f} (record {record_path})")
            return existing
        if existing.get("status") == "diverged":
            say(f"{name}: diverged at epoch {existing['epochs_done']} (record {record_path}); not resumed")
            return existing

    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    data = prepare_adv_data(config)
    in_channels = data.train_images.shape[1]
    torch.manual_seed(config.seed)
    method = _build(config.model, config.method, in_channels, data.num_classes, config.model_options)
    net = method.model.to(dev)
    model = NormalizedModel(net, data.mean, data.std).to(dev)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
                                 {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum)
    shape = (config.batch_size,) + tuple(data.train_images.shape[1:])
    carried = torch.zeros(shape, device=dev)  # the carried perturbation ("carry" mode)

    passes = config.passes()
    record = new_record("robust", config.identity(), seed=config.seed, device=dev)
    record.update(name=name, status="running", data=data.info, epochs=[], wall_time_s=0.0, passes=passes,
                  sgd_steps=0, method_options=method.options)
    start_epoch = 0
    if os.path.exists(state_path):
        state = torch.load(state_path, map_location=dev, weights_only=False)
        if state["config"]["identity"] != config.identity():
            raise ValueError(f"checkpoint {state_path} belongs to a different config")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        carried = state["perturbation"].to(dev)
        start_epoch = state["epoch"]
        record.update(epochs=state["epochs"], wall_time_s=state["wall_time_s"], sgd_steps=state["sgd_steps"])
        say(f"{name}: resuming after epoch {start_epoch}/{passes}")

    regularizer = None
    if method.regularizer is not None:
        regularizer = lambda: config.ocnn_weight * method.regularizer()  # noqa: E731
    n = len(data.train_labels)
    end_epoch = passes if stop_after_epoch is None else min(passes, stop_after_epoch)
    monitor = min(config.monitor_samples, len(data.test_labels))
    n_eval = len(data.test_labels) if config.eval_samples is None else min(config.eval_samples, len(data.test_labels))
    record["data"].update(eval_samples=n_eval, monitor_samples=monitor)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        gen = _epoch_generator(config.seed, epoch)
        order = torch.randperm(n, generator=gen)
        batches = [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
        steps_per_epoch = len(batches) * config.replays
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss * samples, correct, samples (over all replays)
        lr = config.lr
        for b_index, b in enumerate(batches):
            x = data.train_images[b].float().div_(255)
            if config.augment:
                x = random_crop_flip(x, padding=4, generator=gen)
            x, y = x.to(dev), data.train_labels[b].to(dev)
            nb = len(b)
            delta = carried[:nb] if config.perturbation_reset == "carry" else torch.zeros_like(x)
            lrs = [_learning_rate(config, epoch, b_index * config.replays + r, steps_per_epoch)
                   for r in range(config.replays)]
            sums += free_at_batch(model, x, y, delta, optimizer, eps=config.eps, step=config.step, lrs=lrs,
                                  regularizer=regularizer)
            lr = lrs[-1]
        record["sgd_steps"] += steps_per_epoch
        train_time = time.perf_counter() - t0
        model.eval()
        test_acc = _mean(torch.cat([_correct(model, _to_float(data.test_images[i:i + config.eval_batch_size], dev),
                                             data.test_labels[i:i + config.eval_batch_size].to(dev))
                                    for i in range(0, n_eval, config.eval_batch_size)]))
        monitor_acc = None
        if monitor and config.monitor_pgd_steps:
            c = _pgd_correct(model, data.test_images[:monitor], data.test_labels[:monitor], eps=config.attack_eps,
                             step=config.eval_pgd_step, steps=config.monitor_pgd_steps, restarts=1,
                             seed=config.seed * 1_000_003 + epoch, batch_size=config.eval_batch_size, device=dev)
            monitor_acc = _mean(c)
        epoch_time = time.perf_counter() - t0
        row = dict(epoch=epoch + 1, lr=lr, train_loss=float(sums[0] / sums[2]), train_adv_acc=float(sums[1] / sums[2]),
                   test_acc=test_acc, monitor_pgd_acc=monitor_acc, train_time_s=train_time, time_s=epoch_time)
        record["epochs"].append(row)
        record["wall_time_s"] += epoch_time
        if not math.isfinite(row["train_loss"]):
            record["status"] = "diverged"
        record["epochs_done"] = len(record["epochs"])
        save_checkpoint(state_path, {"config": _checkpoint_config(config, in_channels, data.num_classes, data),
                           "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                           "perturbation": carried.cpu(), "epoch": epoch + 1, "epochs": record["epochs"],
                           "wall_time_s": record["wall_time_s"], "sgd_steps": record["sgd_steps"]})
        write_json(record_path, record)
        mon = "" if monitor_acc is None else f" PGD-{config.monitor_pgd_steps}@{monitor} {monitor_acc:.4f}"
        say(f"{name} epoch {epoch + 1}/{passes}: loss {row['train_loss']:.4f} train-adv {row['train_adv_acc']:.4f} "
            f"test {test_acc:.4f}{mon} ({epoch_time:.1f} s)")
        if record["status"] == "diverged":
            return record

    if len(record["epochs"]) < passes or record["status"] == "diverged":
        return record
    t0 = time.perf_counter()
    evaluation = evaluate_robustness(
        net, data.test_images[:n_eval], data.test_labels[:n_eval], data.mean, data.std, eps=config.attack_eps,
        pgd_steps=config.eval_pgd_steps, pgd_step=config.eval_pgd_step, restarts=config.eval_restarts,
        batch_size=config.eval_batch_size, seed=config.seed, eps_sweep=config.sweep_eps,
        sweep_samples=config.sweep_samples, device=str(dev))
    eval_time = time.perf_counter() - t0
    record.update(evaluation=evaluation, eval_time_s=eval_time, wall_time_s=record["wall_time_s"] + eval_time,
                  clean_acc=evaluation["clean_acc"], fgsm_acc=evaluation["fgsm_acc"], pgd_acc=evaluation["pgd_acc"],
                  checks_passed=evaluation["checks_passed"], status="complete")
    write_json(record_path, record)
    say(f"{name}: clean {record['clean_acc']:.4f} FGSM {record['fgsm_acc']:.4f} PGD-{config.eval_pgd_steps} "
        f"{record['pgd_acc']:.4f}; gradient-masking checks {'passed' if record['checks_passed'] else 'FAILED'} "
        f"({eval_time:.1f} s)")
    return record


def _checkpoint_config(config: AdvConfig, in_channels: int, num_classes: int, data: AdvData) -> Dict[str, Any]:
    return dict(model=config.model, method=config.method, in_channels=in_channels, num_classes=num_classes,
                model_options=config.model_options, dataset=config.dataset, mean=list(data.mean),
                std=list(data.std), identity=config.identity())


# -- evaluating a saved model ---------------------------------------------------------------

def load_checkpoint_model(path: str, device: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model of a checkpoint of :func:`train_free_at` or of ``convnorm train``, in eval mode.

    Returns ``(model, info)``: the classifier of normalized images and a dict with
    ``dataset``, ``mean``, ``std``, ``method``, ``model`` and the run's ``identity``.
    """
    state = torch.load(path, map_location=device or "cpu", weights_only=False)
    cfg = state["config"]
    method = _build(cfg["model"], cfg["method"], cfg["in_channels"], cfg["num_classes"], cfg.get("model_options") or {})
    net = method.model
    net.load_state_dict(state["model"])
    if device is not None:
        net = net.to(device)
    dataset = cfg.get("dataset") or cfg["identity"]["dataset"]
    if "mean" in cfg:
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    else:
        mean, std = dataset_stats(dataset)
    info = dict(dataset=dataset, mean=list(mean), std=list(std), method=cfg["method"], model=cfg["model"],
                identity=cfg.get("identity"), epoch=state.get("epoch"))
    return net.eval(), info


def evaluate_checkpoint(path: str, *, data_root: Optional[str] = None, device: Optional[str] = None,
                        samples: Optional[int] = None, out: Optional[str] = None, **settings) -> Dict[str, Any]:
    """Attack the model saved at ``path`` on its data set's test split.

    Works on checkpoints of :func:`train_free_at` (their ``eval_*``/``sweep_*`` settings are
    the defaults) and of ``convnorm train`` (a standard-training baseline; the defaults of
    :func:`evaluate_robustness` apply, with eps 8/255).

    Args:
        path: the ``.pt`` file.
        data_root: data folder (default as :func:`convnorm.experiments.data.load_dataset`).
        device: where to compute.
        samples: attack the first this many test images (default: the run's
            ``eval_samples``, else all).
        out: if given, write the result there as a record of kind ``"attack"``.
        **settings: keyword arguments of :func:`evaluate_robustness` (``eps``,
            ``pgd_steps``, ``pgd_step``, ``restarts``, ``batch_size``, ``seed``, ``eps_sweep``,
            ``sweep_samples``...) overriding the defaults.

    Returns:
        The evaluation dict, plus ``checkpoint`` (path, epoch, dataset, model, method).
    """
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    net, info = load_checkpoint_model(path, dev)
    identity = info.get("identity") or {}
    defaults: Dict[str, Any] = {}
    if "replays" in identity:  # a free-AT run: its own evaluation settings
        defaults = dict(eps=identity["eps"] if identity.get("eval_eps") is None else identity["eval_eps"],
                        pgd_steps=identity["eval_pgd_steps"], pgd_step=identity["eval_pgd_step"],
                        restarts=identity["eval_restarts"], batch_size=identity["eval_batch_size"],
                        seed=identity["seed"], eps_sweep=tuple(identity["sweep_eps"]),
                        sweep_samples=identity["sweep_samples"])
        if samples is None:
            samples = identity.get("eval_samples")
    defaults.update(settings)
    test = load_dataset(info["dataset"], train=False, root=data_root)
    count = len(test) if samples is None else min(int(samples), len(test))
    result = evaluate_robustness(net, test.images[:count], test.labels[:count], info["mean"], info["std"],
                                 device=dev, **defaults)
    result["checkpoint"] = dict(path=os.path.abspath(path), epoch=info["epoch"], dataset=info["dataset"],
                                model=info["model"], method=info["method"])
    if out is not None:
        record = new_record("attack", dict(checkpoint=os.path.abspath(path), samples=count, **{
            k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()}),
            seed=defaults.get("seed", 0), device=torch.device(dev))
        record.update(result=result)
        write_json(out, record)
    return result


# -- report ---------------------------------------------------------------------------------

#: The paper's free-AT table (ResNet-18, CIFAR-10, eps 8/255, mean of 4 seeds), in percent:
#: (method, label, FGSM, PGD-20); ``None`` where the paper gives no number.
PUBLISHED_FREE_AT: Tuple[Tuple[str, str, float, Optional[float]], ...] = (
    ("convnorm+bn", "ConvNorm (with BN)", 52.9, 44.8),
    ("sn", "SN", 52.3, 44.5),
    ("bn", "BN", 51.7, None),
    ("oni", "ONI", 48.3, 41.1),
    ("ocnn", "OCNN", 52.5, None),
)

_SETTING_EXCLUDE = ("method", "seed")


def _eps_text(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def _setting_key(cfg: Dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in _SETTING_EXCLUDE}, sort_keys=True)


def _setting_title(cfg: Dict[str, Any]) -> str:
    fraction = cfg["train_fraction"]
    frac = "full training set" if fraction == 1 else f"{fraction * 100:g}% of the training set"
    unit = "passes" if cfg["epoch_counting"] == "passes" else "epochs of gradient computations"
    return (f"{cfg['dataset']}, {cfg['model']}, {frac}, {cfg['epochs']} {unit} of free AT "
            f"(m={cfg['replays']}, eps {_eps_text(cfg['eps'])}, step {_eps_text(cfg['step'])}, "
            f"delta reset: {cfg['perturbation_reset']})")


def _differences(cfg: Dict[str, Any]) -> str:
    """A sentence naming how ``cfg`` differs from the published setting (``paper-free-at``)."""
    paper = AdvConfig(**ADV_PRESETS["paper-free-at"]).identity()

    def pct(f):
        return f"{f * 100:g}%"

    fields = [
        ("dataset", "data set", str), ("model", "model", str), ("train_fraction", "training data", pct),
        ("epochs", "epochs", str), ("epoch_counting", "epoch counting", str), ("replays", "replays m", str),
        ("batch_size", "batch size", str), ("lr", "lr", lambda v: f"{v:g}"),
        ("milestones", "lr milestones", lambda v: "/".join(str(t) for t in v) or "none"),
        ("schedule", "schedule", str), ("weight_decay", "weight decay", lambda v: f"{v:g}"),
        ("eps", "training eps", _eps_text), ("step", "FGSM step", _eps_text),
        ("perturbation_reset", "delta reset", str), ("augment", "augmentation", str),
        ("eval_pgd_steps", "PGD steps", str), ("eval_pgd_step", "PGD step", _eps_text),
        ("eval_restarts", "PGD restarts", str),
    ]
    diffs = [f"{label} {fmt(cfg[key])} (published: {fmt(paper[key])})" for key, label, fmt in fields
             if key in cfg and cfg[key] != paper[key]]
    samples = cfg.get("eval_samples")
    test = "the whole test set" if samples is None else f"the first {samples} test images"
    if not diffs:
        return f"These runs use the published setting (preset `paper-free-at`); attacks on {test}."
    return ("These runs differ from the published setting (preset `paper-free-at`) in: " + "; ".join(diffs)
            + f". Attacks on {test}.")


def _check_cell(check: Dict[str, Any], text: str) -> str:
    if check.get("passed") is None:
        return "not run"
    return ("yes" if check["passed"] else "**NO**") + f" ({text})"


def _published_order_lines(runs: List[Dict[str, Any]]) -> List[str]:
    """Generated: does the ranking of methods here match the published one, pair by pair?

    A pair of methods with published numbers is "ordered as published" when the sign of
    the difference of mean accuracies is the same here; a disagreement is "beyond the seed
    spread" when it exceeds twice the larger seed standard deviation of the two methods,
    judged only when both have two or more seeds. Only for settings attacked as published
    (eps 8/255, PGD-20).
    """
    from convnorm.experiments.report import mean_std  # lazily: report may import this module

    cfg = runs[0]["config"]
    eval_eps = cfg["eps"] if cfg.get("eval_eps") is None else cfg["eval_eps"]
    if abs(eval_eps - 8 / 255) > 1e-9 or cfg["eval_pgd_steps"] != 20:
        return []  # the published numbers are for eps 8/255 and PGD-20
    out = []
    for column, key in (("FGSM", "fgsm_acc"), ("PGD", "pgd_acc")):
        published = {m: fg if column == "FGSM" else pg for m, _, fg, pg in PUBLISHED_FREE_AT}
        published = {m: v for m, v in published.items() if v is not None}
        here = {m: [r[key] for r in runs if r["config"]["method"] == m] for m in published}
        here = {m: v for m, v in here.items() if v}
        if len(here) < 2:
            continue
        stats = {m: mean_std(v) for m, v in here.items()}
        ranked = sorted(here, key=lambda m: -stats[m][0])
        pairs = agree = beyond = unjudged = 0
        for i, a in enumerate(ranked):
            for b in ranked[i + 1:]:
                if published[a] == published[b]:
                    continue
                pairs += 1
                if published[a] > published[b]:
                    agree += 1
                elif len(here[a]) < 2 or len(here[b]) < 2:
                    unjudged += 1
                else:
                    beyond += stats[a][0] - stats[b][0] > 2 * max(stats[a][1], stats[b][1])
        order_here = " > ".join(f"{m} {stats[m][0] * 100:.1f}" for m in ranked)
        order_pub = " > ".join(f"{m} {published[m]:.1f}" for m in sorted(here, key=lambda m: -published[m]))
        out.append(f"- {column}, ranked here: {order_here}; published: {order_pub}. Pairs ordered as published: "
                   f"{agree} of {pairs}; of the others, {beyond} differ here by more than twice the larger seed "
                   "standard deviation" + (f" ({unjudged} with a single seed on a side, not judged)"
                                           if unjudged else "") + ".")
    if not out:
        return []
    return ["Reading (generated), against the published ranking (the published gaps are small too, "
            "about a point or less between the top methods):", ""] + out + [""]


def report_section(folder: str) -> List[str]:
    """Markdown lines from the records of kind ``"robust"`` under ``folder``.

    Per setting (every config field but method and seed): a table of method -> clean, FGSM
    and PGD-K test accuracy (%, mean ± std over seeds), a sentence on how the setting
    differs from the published one, and each run's gradient-masking checks; then, once, the
    published table. Deterministic: the same records give the same lines.
    """
    from convnorm.experiments.report import format_mean_std  # lazily: report may import this module

    records = [r for _, r in iter_records(folder, kind="robust")]
    if not records:
        return []
    complete = [r for r in records if r.get("status") == "complete" and "evaluation" in r]
    lines = ["## Adversarial robustness (free adversarial training)", ""]
    pending = len(records) - len(complete)
    if pending:
        lines += [f"{pending} robust run(s) not complete are left out of the tables.", ""]
    groups: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in complete:
        groups[_setting_key(r["config"])].append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    method_key = lambda m: (order.get(m, len(order)), m)  # noqa: E731
    for key in sorted(groups):
        runs = sorted(groups[key], key=lambda r: (method_key(r["config"]["method"]), r["config"]["seed"], r["name"]))
        cfg = runs[0]["config"]
        eps = _eps_text(cfg["eps"] if cfg.get("eval_eps") is None else cfg["eval_eps"])
        k = cfg["eval_pgd_steps"]
        lines += [f"### {_setting_title(cfg)}", "",
                  f"Test accuracy (%) of the final model, L-inf eps {eps}: clean, FGSM, PGD-{k} "
                  f"(step {_eps_text(cfg['eval_pgd_step'])}, {cfg['eval_restarts']} restart(s), random start); "
                  "mean ± std over seeds.", "",
                  f"| method | seeds | clean | FGSM | PGD-{k} | gradient-masking checks passed |",
                  "|---|---|---|---|---|---|"]
        for m in sorted({r["config"]["method"] for r in runs}, key=method_key):
            rs = [r for r in runs if r["config"]["method"] == m]
            passed = sum(1 for r in rs if r.get("checks_passed"))
            lines.append(f"| {m} | {len(rs)} | {format_mean_std([r['clean_acc'] for r in rs])} | "
                         f"{format_mean_std([r['fgsm_acc'] for r in rs])} | "
                         f"{format_mean_std([r['pgd_acc'] for r in rs])} | {passed}/{len(rs)} |")
        lines += ["", _differences(cfg), ""]
        lines += _published_order_lines(runs)
        sweep_eps = [_eps_text(s["eps"]) for s in runs[0]["evaluation"]["eps_sweep"]]
        lines += [f"Gradient-masking checks per run: PGD accuracy (%) over the eps sweep ({', '.join(sweep_eps)}) "
                  "must fall (up to the tolerance) and reach about zero; PGD must not be weaker than FGSM "
                  "(violations: samples fooled by FGSM but not by PGD).", "",
                  "| run | method | seed | PGD accuracy over the sweep | falls | ≈ 0 at largest eps | PGD ≥ FGSM |",
                  "|---|---|---|---|---|---|---|"]
        for r in runs:
            ev = r["evaluation"]
            checks = ev["checks"]
            sweep = ", ".join(f"{s['acc'] * 100:.1f}" for s in ev["eps_sweep"]) or "—"
            mono, zero, pf = checks["sweep_monotone"], checks["sweep_reaches_zero"], checks["pgd_not_weaker_than_fgsm"]
            mono_cell = _check_cell(mono, "max rise " + ("—" if mono.get("max_rise") is None else
                                                         f"{mono['max_rise'] * 100:.1f}") +
                                    f" ≤ {mono['tolerance'] * 100:g}")
            zero_cell = _check_cell(zero, "—" if zero.get("acc_at_largest_eps") is None else
                                    f"{zero['acc_at_largest_eps'] * 100:.1f} ≤ {zero['threshold'] * 100:g} at "
                                    f"{_eps_text(zero['largest_eps'])}")
            pf_cell = _check_cell(pf, f"{pf['violations']} violations of {ev['samples']}")
            lines.append(f"| {r['name']} | {r['config']['method']} | {r['config']['seed']} | {sweep} | "
                         f"{mono_cell} | {zero_cell} | {pf_cell} |")
        lines.append("")
    lines += ["Published (ResNet-18, CIFAR-10, free AT, mean of 4 seeds), not run here: test accuracy (%) "
              "under FGSM and PGD-20, eps 8/255.", "",
              "| method | FGSM | PGD-20 |", "|---|---|---|"]
    for _, label, fg, pg in PUBLISHED_FREE_AT:
        lines.append(f"| {label} | {fg:.1f} | {'not given' if pg is None else f'{pg:.1f}'} |")
    lines.append("")
    return lines
