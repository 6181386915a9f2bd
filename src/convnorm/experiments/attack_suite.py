"""The robustness study's evaluation: a suite of attacks, the worst case per image, and the
checks that tell a robust model from one that hides its gradients.

Threat model as :mod:`convnorm.experiments.attacks`: L-infinity perturbations of at most
``eps`` in [0, 1] pixel units, before input normalization, on the model in eval mode.
Clean accuracy is measured on every image given; the attacks run on the first ``samples``
of them (a fixed part of the test set), and only on the images the model classifies
correctly clean (an image it gets wrong clean counts as wrong under every attack).

The suite, in order (each white-box attack runs on every clean-correct image unless said):

- ``fgsm``: one step of ``eps`` from the image;
- ``pgd20``: PGD, 20 steps of 2/255, random start (as the paper's table);
- ``pgd100``: PGD, 100 steps of 2/255, 5 random restarts. An image counts as fooled when any
  restart fools it, so a restart runs only on the images no earlier restart fooled (running
  it on the others could not change the count);
- ``apgd_ce``: AutoAttack's APGD with the cross-entropy loss (Croce & Hein, 2020), 100 steps;
- ``apgd_t``: AutoAttack's targeted APGD on the difference-of-logits-ratio loss, 100 steps
  against each of the 9 most likely wrong classes, on the images ``apgd_ce`` left standing
  (AutoAttack's own cascade);
- ``square``: the Square attack (Andriushchenko et al., 2020), black box, on the images every
  white-box attack left standing.

APGD-CE, APGD-T and Square are ``torchattacks``' implementations (``pip install --no-deps
torchattacks==3.5.1``: its declared torchvision requirement would replace a CPU torch).

``robust_acc`` is the accuracy under the worst attack per image: correct clean and under all
six. The checks against gradient masking (Athalye et al., 2018; Carlini et al., 2019):

- ``stronger_not_weaker``: for each pair (weaker, stronger) in :data:`STRENGTH_ORDER` the
  stronger attack's accuracy is at most the weaker's, and at most ``tolerance`` of the
  attacked images (those right clean) are fooled by the weaker attack but not by the stronger;
- ``black_box_not_stronger``: among the images every white-box attack left standing, Square
  fools at most ``tolerance`` of the attacked images' count;
- ``sweep_monotone`` and ``sweep_reaches_zero``: PGD-20 accuracy falls as eps grows and is
  about zero at 64/255 (:func:`convnorm.experiments.attacks.sweep_checks`).

The suite can resume: ``stages`` (a dict the caller keeps, e.g. saved beside a checkpoint)
receives each finished attack's per-image result, and a later call with the same dict skips
the attacks already in it. Every attack draws its randomness from ``seed`` and its own
stage number, so a resumed evaluation equals an uninterrupted one.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from convnorm.experiments.attacks import (
    DEFAULT_EPS_SWEEP,
    NormalizedModel,
    accuracy,
    correct_predictions,
    fgsm,
    pgd,
    pgd_eps_sweep,
    sweep_checks,
    unit_images,
)

__all__ = ["ATTACKS", "STRENGTH_ORDER", "attack_suite", "correct_mask_from_text", "correct_mask_text",
           "load_torchattacks"]

#: The suite's attacks, in the order they run.
ATTACKS: Tuple[str, ...] = ("fgsm", "pgd20", "pgd100", "apgd_ce", "apgd_t", "square")

#: (weaker, stronger) pairs the ``stronger_not_weaker`` check compares on the same images.
STRENGTH_ORDER: Tuple[Tuple[str, str], ...] = (("fgsm", "pgd20"), ("pgd20", "pgd100"), ("pgd20", "apgd_ce"))

_TORCHATTACKS_HINT = ("the attack suite needs torchattacks 3.5.1 for APGD-CE, APGD-T and Square: "
                      "pip install --no-deps torchattacks==3.5.1 (--no-deps: its declared torchvision "
                      "requirement would replace a CPU build of torch)")


def load_torchattacks():
    """The ``torchattacks`` module, or an ImportError that says how to install it."""
    try:
        import torchattacks
    except ImportError as error:
        raise ImportError(f"{_TORCHATTACKS_HINT} ({error})") from error
    return torchattacks


def correct_mask_text(mask: Tensor) -> str:
    """A bool vector as a string of ``'1'`` (correct) and ``'0'`` (wrong), for JSON records."""
    return "".join("1" if bool(v) else "0" for v in mask.tolist())


def correct_mask_from_text(text: str) -> Tensor:
    """The inverse of :func:`correct_mask_text`."""
    if set(text) - {"0", "1"}:
        raise ValueError("a correctness mask is a string of '0' and '1'")
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def _keep_global_rng(attack):
    """``attack`` run inside ``torch.random.fork_rng``: torchattacks' APGD, APGD-T and Square
    reseed the global generators on every call, which would leave the caller's draws changed."""
    def run(x: Tensor, y: Tensor) -> Tensor:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            return attack(x, y)
    return run


def _batched_correct(model: nn.Module, images_uint8: Tensor, labels: Tensor, index: Tensor, attack, *,
                     batch_size: int, device) -> Tensor:
    """Correctness under ``attack(x, y) -> adversarial x`` of the images at ``index``."""
    out = []
    for start in range(0, len(index), batch_size):
        rows = index[start:start + batch_size]
        x = unit_images(images_uint8[rows], device)
        y = labels[rows].to(device)
        out.append(correct_predictions(model, attack(x, y), y))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def attack_suite(
    model: nn.Module,
    images_uint8: Tensor,
    labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    samples: Optional[int] = 1000,
    eps: float = 8 / 255,
    pgd_step: float = 2 / 255,
    pgd_steps: int = 20,
    strong_steps: int = 100,
    strong_restarts: int = 5,
    apgd_steps: int = 100,
    apgd_targets: int = 9,
    square_queries: int = 5000,
    eps_sweep: Optional[Sequence[float]] = DEFAULT_EPS_SWEEP,
    sweep_samples: Optional[int] = 500,
    tolerance: float = 0.01,
    monotone_tolerance: float = 0.01,
    zero_threshold: float = 0.05,
    batch_size: int = 250,
    seed: int = 0,
    device: Optional[str] = None,
    stages: Optional[Dict[str, Any]] = None,
    on_stage: Optional[Callable[[Dict[str, Any]], None]] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Run the attack suite (module docstring) on ``model`` and return a JSON-ready record.

    Args:
        model: a classifier of *normalized* images (wrapped in :class:`NormalizedModel`
            here); evaluated in eval mode, its mode restored after.
        images_uint8: ``uint8 (N, C, H, W)`` test images (clean accuracy on all N);
            labels: ``int64 (N,)``.
        mean, std: the normalization statistics the model was trained with.
        samples: the attacks use the first this many images (``None``: all).
        eps: L-inf radius in [0, 1] pixel units; pgd_step: PGD's step (same units).
        pgd_steps: steps of the weaker PGD; strong_steps, strong_restarts: the stronger PGD.
        apgd_steps: APGD-CE's and APGD-T's iterations; apgd_targets: APGD-T's target classes
            (at most the number of classes minus one).
        square_queries: Square's query budget per image.
        eps_sweep, sweep_samples: the PGD sweep of the masking check, on the first
            ``sweep_samples`` images (right or wrong clean; ``None`` or empty: no sweep).
        tolerance: the fraction of the attacked images (those right clean) a check allows
            to violate it.
        monotone_tolerance, zero_threshold: the sweep checks' thresholds.
        batch_size: images per attack batch (results are deterministic given it and ``seed``).
        seed: seeds every attack (each stage from ``seed`` and its position).
        device: where to compute (default: the model's device).
        stages: finished attacks' per-image results, updated in place (see module docstring).
        on_stage: called with ``stages`` after every finished attack (to save it).
        log: one line per attack (``None``: silent).

    Returns:
        ``samples``, ``clean_acc`` (all images), ``clean_acc_attacked`` (the attacked part),
        ``<attack>_acc`` for each of :data:`ATTACKS` (``apgd_t_acc`` and ``square_acc`` are
        the cascade's: correct under it and every attack before it), ``white_box_acc``,
        ``robust_acc``, ``attack`` (every setting), ``seconds`` per attack, ``eps_sweep``,
        ``checks``, ``checks_passed``, and ``correct`` (per-image masks of the attacked part as
        :func:`correct_mask_text` strings).

    Raises:
        ValueError: mismatched images and labels, or a bad setting.
        ImportError: torchattacks is not installed (the message says how).
    """
    if images_uint8.shape[0] != labels.shape[0]:
        raise ValueError(f"{images_uint8.shape[0]} images but {labels.shape[0]} labels")
    for name, value in (("batch_size", batch_size), ("pgd_steps", pgd_steps), ("strong_steps", strong_steps),
                        ("strong_restarts", strong_restarts), ("apgd_steps", apgd_steps),
                        ("apgd_targets", apgd_targets), ("square_queries", square_queries)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if eps < 0 or pgd_step < 0:
        raise ValueError(f"eps and pgd_step must be non-negative, got eps={eps}, pgd_step={pgd_step}")
    torchattacks = load_torchattacks()
    say = log or (lambda *_: None)
    stages = {} if stages is None else stages
    first = next(model.parameters(), None)
    dev = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    was_training = model.training
    attacked = NormalizedModel(model, mean, std).to(dev).eval()
    n_all = len(labels)
    n = n_all if samples is None else min(int(samples), n_all)
    num_classes = None

    def run_stage(name: str, index: Tensor, attack) -> Tensor:
        """Correctness (over the n attacked images) after ``attack`` on the images at ``index``."""
        if name not in stages:
            t0 = time.perf_counter()
            correct = torch.zeros(n, dtype=torch.bool)
            correct[index] = _batched_correct(attacked, images_uint8, labels, index, attack,
                                              batch_size=batch_size, device=dev)
            stages[name] = dict(correct=correct_mask_text(correct), attacked=len(index),
                                seconds=time.perf_counter() - t0)
            if on_stage is not None:
                on_stage(stages)
            say(f"{name}: {accuracy(correct):.4f} on {len(index)} attacked images "
                f"({stages[name]['seconds']:.1f} s)")
        return correct_mask_from_text(stages[name]["correct"])

    try:
        if "clean" not in stages:
            t0 = time.perf_counter()
            clean_all = torch.cat([correct_predictions(attacked, unit_images(images_uint8[i:i + batch_size], dev),
                                                       labels[i:i + batch_size].to(dev))
                                   for i in range(0, n_all, batch_size)])
            stages["clean"] = dict(correct=correct_mask_text(clean_all), seconds=time.perf_counter() - t0)
            if on_stage is not None:
                on_stage(stages)
        clean_all = correct_mask_from_text(stages["clean"]["correct"])
        clean = clean_all[:n]
        with torch.no_grad():
            num_classes = int(attacked(unit_images(images_uint8[:1], dev)).shape[1])
        if num_classes < 4:  # APGD-T's difference-of-logits-ratio loss reads the 4th largest logit
            raise ValueError(f"the attack suite's APGD-T needs at least 4 classes, the model has {num_classes}")
        if apgd_targets > num_classes - 1:
            raise ValueError(f"apgd_targets must be at most {num_classes - 1} for {num_classes} classes, "
                             f"got {apgd_targets}")
        standing = clean.nonzero().flatten()

        def generator(stage: int) -> torch.Generator:
            return torch.Generator().manual_seed(seed * 1_000_003 + stage)

        correct: Dict[str, Tensor] = {}
        correct["fgsm"] = run_stage("fgsm", standing, lambda x, y: fgsm(attacked, x, y, eps))
        gen20 = generator(1)
        correct["pgd20"] = run_stage("pgd20", standing,
                                     lambda x, y: pgd(attacked, x, y, eps, pgd_step, pgd_steps, generator=gen20))
        # PGD-100 with restarts: each restart attacks only what the earlier ones left standing.
        survivors = clean.clone()
        for r in range(strong_restarts):
            gen_r = generator(10 + r)
            survivors = survivors & run_stage(
                f"pgd100_restart{r}", survivors.nonzero().flatten(),
                lambda x, y, g=gen_r: pgd(attacked, x, y, eps, pgd_step, strong_steps, generator=g))
        correct["pgd100"] = survivors
        apgd_ce = _keep_global_rng(torchattacks.APGD(attacked, norm="Linf", eps=eps, steps=apgd_steps, n_restarts=1,
                                                     seed=seed * 1_000_003 + 20, loss="ce"))
        correct["apgd_ce"] = run_stage("apgd_ce", standing, apgd_ce)
        apgd_t = _keep_global_rng(torchattacks.APGDT(attacked, norm="Linf", eps=eps, steps=apgd_steps, n_restarts=1,
                                                     seed=seed * 1_000_003 + 21, n_classes=apgd_targets + 1))
        correct["apgd_t"] = correct["apgd_ce"] & run_stage("apgd_t", correct["apgd_ce"].nonzero().flatten(), apgd_t)
        white_box = clean.clone()
        for name in ("fgsm", "pgd20", "pgd100", "apgd_ce", "apgd_t"):
            white_box &= correct[name]
        square = _keep_global_rng(torchattacks.Square(attacked, norm="Linf", eps=eps, n_queries=square_queries,
                                                      n_restarts=1, seed=seed * 1_000_003 + 22))
        correct["square"] = white_box & run_stage("square", white_box.nonzero().flatten(), square)
        robust = correct["square"]

        if "sweep" not in stages:
            t0 = time.perf_counter()
            m = n if sweep_samples is None else min(n, int(sweep_samples))
            rows = pgd_eps_sweep(attacked, images_uint8[:m], labels[:m], eps_sweep or (), pgd_step=pgd_step,
                                 pgd_steps=pgd_steps, restarts=1, seed=seed, batch_size=batch_size, device=dev)
            stages["sweep"] = dict(rows=rows, samples=m if rows else 0, seconds=time.perf_counter() - t0)
            if on_stage is not None:
                on_stage(stages)
        sweep = stages["sweep"]["rows"]
    finally:
        model.train(was_training)

    checks = sweep_checks(sweep, monotone_tolerance=monotone_tolerance, zero_threshold=zero_threshold)
    attacked_count = int(clean.sum())
    pairs = []
    for weak, strong in STRENGTH_ORDER:
        violations = int((~correct[weak] & correct[strong]).sum())
        rate = violations / attacked_count if attacked_count else 0.0
        pairs.append(dict(weaker=weak, stronger=strong, weaker_acc=accuracy(correct[weak]),
                          stronger_acc=accuracy(correct[strong]), violations=violations, violation_rate=rate,
                          passed=bool(accuracy(correct[strong]) <= accuracy(correct[weak]) and rate <= tolerance)))
    checks["stronger_not_weaker"] = dict(passed=all(p["passed"] for p in pairs), pairs=pairs, tolerance=tolerance)
    square_fooled = int((white_box & ~robust).sum())
    square_rate = square_fooled / attacked_count if attacked_count else 0.0
    checks["black_box_not_stronger"] = dict(
        passed=bool(square_rate <= tolerance), white_box_standing=int(white_box.sum()),
        fooled_by_square=square_fooled, fooled_rate=square_rate, tolerance=tolerance)
    ran = [c["passed"] for c in checks.values() if c["passed"] is not None]
    seconds = {name: stages[name]["seconds"] for name in ("clean", "fgsm", "pgd20", "apgd_ce", "apgd_t", "square",
                                                         "sweep")}
    seconds["pgd100"] = sum(stages[f"pgd100_restart{r}"]["seconds"] for r in range(strong_restarts))
    record: Dict[str, Any] = dict(samples=n, test_images=n_all, attacked_images=attacked_count,
                                  clean_acc=accuracy(clean_all), clean_acc_attacked=accuracy(clean))
    for name in ATTACKS:
        record[f"{name}_acc"] = accuracy(correct[name])
    record.update(
        white_box_acc=accuracy(white_box), robust_acc=accuracy(robust),
        attack=dict(norm="Linf", space="[0, 1] pixels, before normalization", eps=float(eps),
                    eps_255=round(float(eps) * 255, 6), seed=int(seed), batch_size=int(batch_size),
                    fgsm=dict(random_start=False),
                    pgd20=dict(steps=int(pgd_steps), step=float(pgd_step), step_255=round(float(pgd_step) * 255, 6),
                               restarts=1, random_start=True),
                    pgd100=dict(steps=int(strong_steps), step=float(pgd_step),
                                step_255=round(float(pgd_step) * 255, 6), restarts=int(strong_restarts),
                                random_start=True),
                    apgd_ce=dict(implementation="torchattacks.APGD", steps=int(apgd_steps), loss="ce", restarts=1),
                    apgd_t=dict(implementation="torchattacks.APGDT", steps=int(apgd_steps),
                                target_classes=int(apgd_targets), restarts=1, runs_on="images apgd_ce left standing"),
                    square=dict(implementation="torchattacks.Square", queries=int(square_queries), p_init=0.8,
                                loss="margin", restarts=1, runs_on="images every white-box attack left standing"),
                    torchattacks=getattr(torchattacks, "__version__", "unknown")),
        seconds=seconds, eps_sweep=sweep, sweep_samples=stages["sweep"]["samples"], checks=checks,
        checks_passed=all(ran) if ran else None,
        correct={name: correct_mask_text(mask) for name, mask in
                 [("clean", clean)] + [(a, correct[a]) for a in ATTACKS]},
    )
    return record
