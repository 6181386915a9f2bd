"""Adversarial attacks on image classifiers and a robustness evaluation with gradient-masking checks.

Threat model: L-infinity perturbations of at most ``eps`` in [0, 1] pixel space, applied to
the image *before* input normalization. Every attacked function is therefore a
:class:`NormalizedModel`: ``[0, 1]`` images in, logits out, normalization inside.

- :func:`fgsm` and :func:`pgd` attack any such model, one batch at a time;
- :func:`evaluate_robustness` reports clean, FGSM and PGD accuracy of a classifier over a
  test set and two gradient-masking sanity checks (Athalye et al., 2018; Carlini et al.,
  2019): PGD accuracy must fall monotonically with eps and reach about zero at a large eps,
  and PGD must not be weaker than FGSM.

This module needs only torch: it does not import the free adversarial trainer
(:mod:`convnorm.experiments.robust`) or the data sets, so it can be used on any model.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DEFAULT_EPS_SWEEP", "NormalizedModel", "accuracy", "correct_predictions", "evaluate_robustness", "fgsm", "pgd",
           "pgd_correct", "pgd_eps_sweep", "sweep_checks", "unit_images"]

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
# The free adversarial trainer (robust.py) monitors its runs with the private helpers below, so
# that its per-epoch numbers are computed exactly as the final evaluation's.

def _pgd_sweep_step(eps: float, pgd_step: float, steps: int) -> float:
    """Step size of the sweep at ``eps``: the main step, or 2.5 eps / steps if larger (so that
    the attack can cross the whole ball at large eps, as Madry et al.'s rule)."""
    return max(pgd_step, 2.5 * eps / max(steps, 1))


def correct_predictions(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample correctness of ``model`` on ``(x, y)``, as a CPU bool tensor."""
    with torch.no_grad():
        return (model(x).argmax(1) == y).cpu()


def unit_images(images_uint8: Tensor, device: torch.device) -> Tensor:
    """uint8 images (0..255) as float images in [0, 1] on ``device``."""
    if images_uint8.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (pixel values 0..255), got {images_uint8.dtype}")
    return images_uint8.to(device).float().div_(255)


def pgd_correct(model, images, labels, *, eps, step, steps, restarts, seed, batch_size, device) -> Tensor:
    """Per-sample correctness under PGD over the whole set; one generator for all batches."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(images), batch_size):
        x = unit_images(images[start:start + batch_size], device)
        y = labels[start:start + batch_size].to(device)
        adv = pgd(model, x, y, eps, step, steps, restarts, generator=gen)
        out.append(correct_predictions(model, adv, y))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def pgd_eps_sweep(model: nn.Module, images_uint8: Tensor, labels: Tensor, eps_values: Sequence[float], *,
                  pgd_step: float, pgd_steps: int, restarts: int, seed: int, batch_size: int,
                  device) -> List[Dict[str, float]]:
    """PGD accuracy of ``model`` (a :class:`NormalizedModel` in eval mode) at each eps of ``eps_values``.

    At each ``e`` PGD takes ``pgd_steps`` steps of ``max(pgd_step, 2.5 e / pgd_steps)`` (so the
    attack can cross the whole ball at large eps), with ``restarts`` random starts from ``seed``.

    Returns:
        One ``{eps, eps_255, step, acc}`` per eps, in the order given (eps and step in [0, 1]
        pixel units).
    """
    sweep = []
    for e in eps_values:
        step_e = _pgd_sweep_step(e, pgd_step, pgd_steps)
        c = pgd_correct(model, images_uint8, labels, eps=e, step=step_e, steps=pgd_steps, restarts=restarts,
                         seed=seed, batch_size=batch_size, device=device)
        sweep.append(dict(eps=float(e), eps_255=round(float(e) * 255, 6), step=float(step_e), acc=accuracy(c)))
    return sweep


def sweep_checks(sweep: Sequence[Dict[str, float]], *, monotone_tolerance: float = 0.01,
                 zero_threshold: float = 0.05) -> Dict[str, Dict[str, Any]]:
    """The two gradient-masking checks on an eps sweep (:func:`pgd_eps_sweep`'s rows).

    ``sweep_monotone``: accuracy never rises by more than ``monotone_tolerance`` from one eps
    to the next larger. ``sweep_reaches_zero``: accuracy at the largest eps is at most
    ``zero_threshold``. A check that cannot run (too few rows) has ``passed: None``.
    """
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
    return checks


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
            x = unit_images(images_uint8[start:start + batch_size], dev)
            y = labels[start:start + batch_size].to(dev)
            clean.append(correct_predictions(attacked, x, y))
            under_fgsm.append(correct_predictions(attacked, fgsm(attacked, x, y, eps), y))
        clean_c = torch.cat(clean) if clean else torch.zeros(0, dtype=torch.bool)
        fgsm_c = torch.cat(under_fgsm) if under_fgsm else torch.zeros(0, dtype=torch.bool)
        pgd_c = pgd_correct(attacked, images_uint8, labels, eps=eps, step=pgd_step, steps=pgd_steps,
                             restarts=restarts, seed=seed, batch_size=batch_size, device=dev)

        m = n if sweep_samples is None else min(n, int(sweep_samples))
        sweep = pgd_eps_sweep(attacked, images_uint8[:m], labels[:m], eps_sweep or (), pgd_step=pgd_step,
                              pgd_steps=pgd_steps, restarts=restarts, seed=seed, batch_size=batch_size, device=dev)
    finally:
        model.train(was_training)

    violations = int((~fgsm_c & pgd_c).sum())
    checks = sweep_checks(sweep, monotone_tolerance=monotone_tolerance, zero_threshold=zero_threshold)
    pgd_acc, fgsm_acc = accuracy(pgd_c), accuracy(fgsm_c)
    rate = violations / n if n else 0.0
    checks["pgd_not_weaker_than_fgsm"] = dict(
        passed=bool(pgd_acc <= fgsm_acc and rate <= violation_tolerance), pgd_acc=pgd_acc, fgsm_acc=fgsm_acc,
        violations=violations, violation_rate=rate, violation_tolerance=violation_tolerance)
    ran = [c["passed"] for c in checks.values() if c["passed"] is not None]
    return dict(
        samples=n, clean_acc=accuracy(clean_c), fgsm_acc=fgsm_acc, pgd_acc=pgd_acc,
        fgsm_and_pgd_acc=accuracy(fgsm_c & pgd_c),
        attack=dict(norm="Linf", space="[0, 1] pixels, before normalization", eps=float(eps),
                    eps_255=round(float(eps) * 255, 6),
                    fgsm=dict(random_start=False),
                    pgd=dict(steps=int(pgd_steps), step=float(pgd_step), step_255=round(float(pgd_step) * 255, 6),
                             restarts=int(restarts), random_start=True, seed=int(seed)),
                    loss="cross-entropy (batch mean)", batch_size=int(batch_size),
                    sweep_samples=m if sweep else 0),
        eps_sweep=sweep, checks=checks, checks_passed=all(ran) if ran else None,
    )


def accuracy(correct: Tensor) -> float:
    """The fraction of true entries (an accuracy); NaN for no samples."""
    return float(correct.double().mean()) if correct.numel() else float("nan")
