"""Free adversarial training: configs, presets, the resumable trainer, and attacking saved models.

The attacks and the robustness evaluation (FGSM, PGD, the gradient-masking checks) live in
:mod:`convnorm.experiments.attacks`, which has the threat model: L-infinity perturbations of
at most ``eps`` in [0, 1] pixel space, applied *before* input normalization, so the trained
network is wrapped in a :class:`~convnorm.experiments.attacks.NormalizedModel`. The report
section on these runs is :mod:`convnorm.experiments.robust_report`.

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

After the last epoch the run is evaluated with
:func:`~convnorm.experiments.attacks.evaluate_robustness` (clean, FGSM and PGD accuracy and
the gradient-masking checks); :func:`evaluate_checkpoint` does the same for a saved model.
"""
from __future__ import annotations

import inspect
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# fgsm and pgd are only re-exported: the attacks lived here before attacks.py, and old imports
# keep working. The private helpers make the per-epoch monitor compute as the final evaluation.
from convnorm.experiments.attacks import (
    DEFAULT_EPS_SWEEP,
    NormalizedModel,
    correct_predictions,
    accuracy,
    pgd_correct,
    unit_images,
    evaluate_robustness,
    fgsm,
    pgd,
)
from convnorm.experiments.attack_suite import attack_suite
from convnorm.experiments.augment import random_crop_flip
from convnorm.experiments.corruptions import per_class_subset
from convnorm.experiments.data import dataset_stats, load_dataset
from convnorm.experiments.methods import apply_method
from convnorm.experiments.models import build_model
from convnorm.experiments.progress import progress_bar
from convnorm.experiments.records import (
    config_digest,
    config_from_preset,
    config_identity,
    new_record,
    read_json,
    save_checkpoint,
    write_json,
)
from convnorm.experiments.runs import Run, choose_device, epoch_generator, learning_rate, model_description, processes
from convnorm.experiments.train import validate_common

__all__ = [
    "ADV_PRESETS", "AdvConfig", "DEFAULT_EPS_SWEEP", "NormalizedModel", "adv_preset",
    "adv_run_name", "evaluate_checkpoint", "evaluate_robustness", "fgsm", "free_at_batch", "load_checkpoint_model",
    "pgd", "prepare_adv_data", "train_free_at",
]


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
    # "standard": evaluate_robustness (clean, FGSM, PGD on the eval images). "suite": the attack
    # suite (attack_suite.py): clean on the whole test set; FGSM, PGD-20, PGD-100 x 5, APGD-CE,
    # APGD-T and Square on the first eval_samples images; the worst case per image.
    evaluation: str = field(default="standard", metadata={"identity": "unless-default"})
    square_queries: int = field(default=5000, metadata={"identity": "unless-default"})

    def validate(self) -> None:
        validate_common(self)
        if self.evaluation not in ("standard", "suite"):
            raise ValueError(f"evaluation must be 'standard' or 'suite', got {self.evaluation!r}")
        if self.square_queries <= 0:
            raise ValueError(f"square_queries must be positive, got {self.square_queries}")
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
    # The study network (ResNet-18 at widths 16-32-64-128, as the memorisation study) on the
    # whole CIFAR-10 training set, with the paper's recipe over fewer passes (milestones at 1/3
    # and 2/3 of them, as the paper's 10 and 20 of 30): the regime of the robustness pilot and
    # study (docs/robustness.md). Clean, FGSM and PGD-20 on all 10,000 test images.
    "cpu-robust": dict(dataset="cifar10", model="resnet18", model_options={"widths": (16, 32, 64, 128)}, epochs=12,
                       batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(4, 8),
                       gamma=0.1, augment=True, train_fraction=1.0, replays=4, eps=8 / 255, step=8 / 255,
                       perturbation_reset="batch", epoch_counting="passes", eval_pgd_steps=20,
                       eval_pgd_step=2 / 255, eval_samples=None, sweep_samples=200, monitor_samples=500),
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
    return learning_rate(config.lr, config.schedule, epoch=epoch, step=step, steps_per_epoch=steps_per_epoch,
                         epochs=config.passes(), milestones=config.pass_milestones(), gamma=config.gamma)


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


#: The fields of a complete free-AT record.
HEADLINE = ("clean_acc", "fgsm_acc", "pgd_acc", "evaluation", "epochs")


def train_free_at(
    config: AdvConfig,
    *,
    out_dir: str = os.path.join("results", "robust"),
    checkpoint_dir: str = os.path.join("checkpoints", "robust"),
    device: Optional[str] = None,
    stop_after_epoch: Optional[int] = None,
    checkpoint_every_s: Optional[float] = 300.0,
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
        checkpoint_every_s: also save the checkpoint inside an epoch, after the first
            minibatch that ends this many seconds after the last save (0: after every
            minibatch; ``None``: at epoch ends only). A run killed mid-epoch resumes from that
            minibatch and trains exactly as if never stopped (the epoch's shuffle and
            augmentation generator is saved with it); the record is written at epoch ends.
        log: one line per epoch (``None``: silent).

    Raises:
        ValueError: an existing record or checkpoint of the same name holds another config.
    """
    config.validate()
    say = log or (lambda *_: None)
    name = adv_run_name(config)
    run = Run(name, config.identity(), out_dir, checkpoint_dir, HEADLINE)
    record_path, state_path = run.record_path, run.checkpoint_path
    existing = run.finished_record(log)
    if existing is not None:
        if existing["status"] == "complete":
            say(f"{name}: complete, clean {existing['clean_acc']:.4f} FGSM {existing['fgsm_acc']:.4f} "
                f"PGD {existing['pgd_acc']:.4f} (record {record_path})")
        else:
            say(f"{name}: diverged at epoch {existing.get('epochs_done')} (record {record_path}); not resumed")
        return existing

    dev = choose_device(device)
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
    start_epoch, within_epoch = 0, None
    state = run.load_checkpoint(dev, log)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        carried = state["perturbation"].to(dev)
        start_epoch = state["epoch"]
        record.update(epochs=state["epochs"], wall_time_s=state["wall_time_s"], sgd_steps=state["sgd_steps"])
        run.keep_earlier_provenance(record, state)
        within_epoch = state.get("within_epoch")  # absent in checkpoints saved at an epoch's end
        done = "" if within_epoch is None else f" and minibatch {within_epoch['batches_done']} of epoch {start_epoch + 1}"
        say(f"{name}: resuming after epoch {start_epoch}/{passes}{done}")

    regularizer = None
    if method.regularizer is not None:
        regularizer = lambda: config.ocnn_weight * method.regularizer()  # noqa: E731
    n = len(data.train_labels)
    end_epoch = passes if stop_after_epoch is None else min(passes, stop_after_epoch)
    monitor = min(config.monitor_samples, len(data.test_labels))
    n_eval = len(data.test_labels) if config.eval_samples is None else min(config.eval_samples, len(data.test_labels))
    record["data"].update(eval_samples=n_eval, monitor_samples=monitor)

    def save_state(epochs_done: int, within: Optional[Dict[str, Any]] = None) -> None:
        state = {"config": model_description(config, in_channels, data.num_classes, dataset=config.dataset,
                                             mean=list(data.mean), std=list(data.std)),
                 "model": net.state_dict(), "optimizer": optimizer.state_dict(), "perturbation": carried.cpu(),
                 "epoch": epochs_done, "epochs": record["epochs"], "wall_time_s": record["wall_time_s"],
                 "sgd_steps": record["sgd_steps"], "processes": processes(record)}
        if within is not None:
            state["within_epoch"] = within
        save_checkpoint(state_path, state)

    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        gen = epoch_generator(config.seed, epoch)
        order = torch.randperm(n, generator=gen)
        batches = [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
        steps_per_epoch = len(batches) * config.replays
        model.train()
        sums = torch.zeros(3, dtype=torch.float64)  # loss * samples, correct, samples (over all replays)
        lr, first_batch = config.lr, 0
        if within_epoch is not None:  # resumed mid-epoch: pick up the epoch where its checkpoint left it
            first_batch = within_epoch["batches_done"]
            # Kept as plain numbers (older checkpoints: tensors), so the device the checkpoint
            # is loaded onto never reaches the CPU generator or the CPU sums.
            gen.set_state(torch.as_tensor(within_epoch["generator"], dtype=torch.uint8).cpu())
            sums = torch.as_tensor(within_epoch["sums"], dtype=torch.float64).cpu().clone()
            t0 -= within_epoch["time_s"]
            within_epoch = None
        last_save = time.perf_counter()
        bar = progress_bar(len(batches), f"epoch {epoch + 1}/{config.epochs}", log is not None, initial=first_batch)
        for b_index in range(first_batch, len(batches)):
            b = batches[b_index]
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
            bar.update(1)
            now = time.perf_counter()
            if (checkpoint_every_s is not None and b_index + 1 < len(batches)
                    and now - last_save >= checkpoint_every_s):
                save_state(epoch, dict(batches_done=b_index + 1, generator=gen.get_state().tolist(),
                                       sums=sums.tolist(), time_s=now - t0))
                last_save = now
        bar.close()
        record["sgd_steps"] += steps_per_epoch
        train_time = time.perf_counter() - t0
        model.eval()
        test_acc = accuracy(torch.cat([correct_predictions(model, unit_images(data.test_images[i:i + config.eval_batch_size], dev),
                                             data.test_labels[i:i + config.eval_batch_size].to(dev))
                                    for i in range(0, n_eval, config.eval_batch_size)]))
        monitor_acc = None
        if monitor and config.monitor_pgd_steps:
            c = pgd_correct(model, data.test_images[:monitor], data.test_labels[:monitor], eps=config.attack_eps,
                             step=config.eval_pgd_step, steps=config.monitor_pgd_steps, restarts=1,
                             seed=config.seed * 1_000_003 + epoch, batch_size=config.eval_batch_size, device=dev)
            monitor_acc = accuracy(c)
        epoch_time = time.perf_counter() - t0
        row = dict(epoch=epoch + 1, lr=lr, train_loss=float(sums[0] / sums[2]), train_adv_acc=float(sums[1] / sums[2]),
                   test_acc=test_acc, monitor_pgd_acc=monitor_acc, train_time_s=train_time, time_s=epoch_time)
        record["epochs"].append(row)
        record["wall_time_s"] += epoch_time
        if not math.isfinite(row["train_loss"]):
            record["status"] = "diverged"
        record["epochs_done"] = len(record["epochs"])
        save_state(epoch + 1)
        write_json(record_path, record)
        mon = "" if monitor_acc is None else f" PGD-{config.monitor_pgd_steps}@{monitor} {monitor_acc:.4f}"
        say(f"{name} epoch {epoch + 1}/{passes}: loss {row['train_loss']:.4f} train-adv {row['train_adv_acc']:.4f} "
            f"test {test_acc:.4f}{mon} ({epoch_time:.1f} s)")
        if record["status"] == "diverged":
            return record

    if len(record["epochs"]) < passes or record["status"] == "diverged":
        return record
    t0 = time.perf_counter()
    stages_path = None
    if config.evaluation == "suite":
        evaluation, stages_path = _evaluate_suite(config, net, data, n_eval, dev, state_path, say)
        # A resumed suite counts the time of the attacks it had already finished.
        eval_time, pgd_acc = evaluation["seconds_total"], evaluation["pgd20_acc"]
    else:
        evaluation = evaluate_robustness(
            net, data.test_images[:n_eval], data.test_labels[:n_eval], data.mean, data.std, eps=config.attack_eps,
            pgd_steps=config.eval_pgd_steps, pgd_step=config.eval_pgd_step, restarts=config.eval_restarts,
            batch_size=config.eval_batch_size, seed=config.seed, eps_sweep=config.sweep_eps,
            sweep_samples=config.sweep_samples, device=str(dev))
        eval_time, pgd_acc = time.perf_counter() - t0, evaluation["pgd_acc"]
    record.update(evaluation=evaluation, eval_time_s=eval_time, wall_time_s=record["wall_time_s"] + eval_time,
                  clean_acc=evaluation["clean_acc"], fgsm_acc=evaluation["fgsm_acc"], pgd_acc=pgd_acc,
                  checks_passed=evaluation["checks_passed"], status="complete")
    if stages_path is not None:
        record["robust_acc"] = evaluation["robust_acc"]
    write_json(record_path, record)
    if stages_path is not None:
        os.remove(stages_path)  # the record now holds every attack's result
    robust = f" worst case {record['robust_acc']:.4f};" if "robust_acc" in record else ";"
    say(f"{name}: clean {record['clean_acc']:.4f} FGSM {record['fgsm_acc']:.4f} PGD-{config.eval_pgd_steps} "
        f"{record['pgd_acc']:.4f}{robust} gradient-masking checks {'passed' if record['checks_passed'] else 'FAILED'} "
        f"({eval_time:.1f} s)")
    return record


def _evaluate_suite(config: AdvConfig, net: nn.Module, data: AdvData, n_eval: int, dev: torch.device,
                    state_path: str, say: Callable[[str], None]) -> Tuple[Dict[str, Any], str]:
    """The attack suite on the final weights, resumable per attack: finished attacks are kept in
    ``<checkpoint>.suite.json`` beside the checkpoint until the record is written."""
    stages_path = os.path.splitext(state_path)[0] + ".suite.json"
    stages: Dict[str, Any] = {}
    if os.path.exists(stages_path):
        try:
            stages = read_json(stages_path)
        except ValueError as error:
            say(f"{stages_path}: unreadable ({error}); the evaluation starts over")
            stages = {}
        if not isinstance(stages, dict) or stages.get("identity") != config.identity():
            stages = {}
        else:
            say(f"{stages_path}: resuming the attack suite after {', '.join(sorted(stages.get('stages', {})))}")
    finished = stages.setdefault("stages", {})
    stages["identity"] = config.identity()
    evaluation = attack_suite(
        net, data.test_images, data.test_labels, data.mean, data.std, samples=n_eval, eps=config.attack_eps,
        pgd_step=config.eval_pgd_step, pgd_steps=config.eval_pgd_steps, square_queries=config.square_queries,
        eps_sweep=config.sweep_eps, sweep_samples=config.sweep_samples, batch_size=config.eval_batch_size,
        seed=config.seed, device=str(dev), stages=finished, on_stage=lambda _: write_json(stages_path, stages),
        log=lambda line: say(f"  {line}"))
    evaluation["seconds_total"] = sum(evaluation["seconds"].values())
    return evaluation, stages_path


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
                        samples: Optional[int] = None, out: Optional[str] = None, suite: bool = False,
                        **settings) -> Dict[str, Any]:
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
        suite: run the attack suite (:func:`convnorm.experiments.attack_suite.attack_suite`:
            clean accuracy on the whole test split, the attacks on the first ``samples``
            images, default 1000) instead of :func:`evaluate_robustness`.
        **settings: keyword arguments of :func:`evaluate_robustness` (``eps``,
            ``pgd_steps``, ``pgd_step``, ``restarts``, ``batch_size``, ``seed``, ``eps_sweep``,
            ``sweep_samples``...) or, with ``suite``, of ``attack_suite``, overriding the
            defaults (a run's ``restarts`` does not apply to the suite).

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
    if suite:
        if "square_queries" in identity and "square_queries" not in settings:
            defaults["square_queries"] = identity["square_queries"]
        accepted = inspect.signature(attack_suite).parameters
        defaults = {k: v for k, v in defaults.items() if k in accepted}  # a run's PGD restarts do not apply
        count = min(1000 if samples is None else int(samples), len(test))
        result = attack_suite(net, test.images, test.labels, info["mean"], info["std"], samples=count, device=dev,
                              **defaults)
    else:
        count = len(test) if samples is None else min(int(samples), len(test))
        result = evaluate_robustness(net, test.images[:count], test.labels[:count], info["mean"], info["std"],
                                     device=dev, **defaults)
    result["checkpoint"] = dict(path=os.path.abspath(path), epoch=info["epoch"], dataset=info["dataset"],
                                model=info["model"], method=info["method"])
    if out is not None:
        record = new_record("attack", dict(checkpoint=os.path.abspath(path), samples=count, suite=suite, **{
            k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()}),
            seed=defaults.get("seed", 0), device=torch.device(dev))
        record.update(result=result)
        write_json(out, record)
    return result


