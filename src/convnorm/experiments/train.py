"""Resumable supervised training under label noise and data scarcity, one record per run.

A run is fully described by a :class:`TrainConfig`. Everything random is derived from its
``seed``: the data subset, the split, the label noise (shared by all methods with the same
seed, so they see the same corrupted labels), the initialization, and each epoch's shuffle
and augmentation (seeded by ``(seed, epoch)``, so a resumed run replays exactly the epochs an
uninterrupted run would).

Files of a run named ``<name>``:

- ``<out>/<name>.json``: the record, rewritten atomically after every epoch
  (``status`` is ``"running"`` until the last epoch, then ``"complete"``);
- ``<checkpoints>/<name>.pt``: the latest state (model, optimizer, schedule, history),
  written atomically after every epoch; ``<name>.best.pt``: the best-validation weights.

Calling :func:`train` again with the same config resumes from the checkpoint, or returns the
finished record at once. Under ``torchrun`` the same call trains with DDP.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from convnorm.experiments.corruptions import (
    asymmetric_noise,
    per_class_subset,
    realised_noise_rate,
    symmetric_noise,
    train_val_split,
)
from convnorm.experiments.augment import normalize, random_crop_flip
from convnorm.experiments.data import dataset_stats, image_statistics, load_dataset
from convnorm.experiments.methods import METHODS, apply_method
from convnorm.experiments.models import MODELS, build_model
from convnorm.experiments.progress import progress_bar
from convnorm.experiments.records import (
    config_digest,
    config_from_preset,
    config_identity,
    new_record,
    save_checkpoint,
    write_json,
)
from convnorm.experiments.runs import Run, choose_device, epoch_generator, learning_rate, model_description

__all__ = ["TrainConfig", "PRESETS", "preset", "train", "run_name", "prepare_data"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (and so its name and its record).

    Units: ``lr`` per step for SGD; ``epochs`` full passes over the (noisy) training split;
    ``noise_rate`` and the fractions in [0, 1].
    """

    dataset: str = "fashion-mnist"
    model: str = "small_resnet"
    method: str = "bn"
    model_options: Dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"            # "cosine" or "step"
    milestones: Sequence[int] = ()       # epochs where a step schedule multiplies lr by gamma
    gamma: float = 0.1
    augment: bool = False               # random crop (4-px zero padding) + horizontal flip
    noise: str = "none"                 # "none", "symmetric" or "asymmetric"
    noise_rate: float = 0.0
    noise_variant: str = "uniform"      # symmetric noise: "uniform" (public code) or "flip"
    train_fraction: float = 1.0         # per-class fraction of the training set kept
    val_fraction: float = 0.1           # held out from the (noisy) training set
    ocnn_weight: float = 0.1            # weight of the OCNN loss term (method "ocnn" only)
    seed: int = 0
    # Per-epoch test accuracy on a fixed, class-balanced part of the test set of this many
    # images (0: all of it); the last epoch is always scored on the whole test set as well.
    test_subset: int = field(default=0, metadata={"identity": "unless-default"})
    data_root: Optional[str] = field(default=None, metadata={"identity": False})
    # dataset "imagefolder": the user's folder of class subfolders (part of the identity: the
    # folder is the data), the side images are resized and centre-cropped to (0: their own
    # size), and whether undecodable files are left out (with a warning) rather than an error.
    image_folder: Optional[str] = field(default=None, metadata={"identity": "unless-default"})
    image_size: int = field(default=0, metadata={"identity": "unless-default"})
    skip_corrupt: bool = field(default=False, metadata={"identity": "unless-default"})

    def validate(self) -> None:
        validate_common(self)
        if self.noise not in ("none", "symmetric", "asymmetric"):
            raise ValueError(f"noise must be 'none', 'symmetric' or 'asymmetric', got {self.noise!r}")
        if self.noise == "none" and self.noise_rate != 0:
            raise ValueError("noise_rate is set but noise is 'none'")
        if not 0 <= self.noise_rate <= 1:
            raise ValueError(f"noise_rate must be in [0, 1], got {self.noise_rate}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if (self.dataset == "imagefolder") != (self.image_folder is not None):
            raise ValueError("dataset 'imagefolder' and image_folder go together: give the folder of class "
                             "subfolders with --image-folder (and --dataset imagefolder)")
        if self.image_size < 0:
            raise ValueError(f"image_size must be 0 (the images' own size) or positive, got {self.image_size}")
        if self.test_subset < 0:
            raise ValueError(f"test_subset must be 0 (the whole test set) or positive, got {self.test_subset}")

    def identity(self) -> Dict[str, Any]:
        """The fields that define the result (not where the data happens to live)."""
        return config_identity(self)


def validate_common(config) -> None:
    """Checks shared by every training config: method, model, schedule, data fraction, sizes."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; valid methods are {', '.join(METHODS)}")
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; valid models are {', '.join(MODELS)}")
    if config.schedule not in ("cosine", "step"):
        raise ValueError(f"schedule must be 'cosine' or 'step', got {config.schedule!r}")
    if not 0 < config.train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {config.train_fraction}")
    for name in ("epochs", "batch_size"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(config, name)}")


# Presets: the paper's settings by name, and settings sized for 2 CPU cores.
PRESETS: Dict[str, Dict[str, Any]] = {
    # The paper's CIFAR-10 ResNet-18 setting (public code defaults).
    "paper-cifar10-resnet18": dict(dataset="cifar10", model="resnet18", method="convnorm-paper", epochs=120,
                                   batch_size=128, lr=0.1, schedule="step", milestones=(40, 80),
                                   weight_decay=1e-4, augment=True),
    # Fashion-MNIST, small ResNet, minutes per run on 2 CPU cores.
    "cpu-fashion-mnist": dict(dataset="fashion-mnist", model="small_resnet", epochs=15, batch_size=128,
                              lr=0.05, schedule="cosine", weight_decay=5e-4, augment=False),
    # CIFAR-10, small ResNet, 20% of the training set, on 2 CPU cores.
    "cpu-cifar10": dict(dataset="cifar10", model="small_resnet", epochs=30, batch_size=128, lr=0.05,
                        schedule="cosine", weight_decay=5e-4, augment=True, train_fraction=0.2),
    # The out-of-the-box demo (`make demo`): measured in README.md, under 5 minutes on 2 CPU cores.
    "demo": dict(dataset="fashion-mnist", model="small_resnet", epochs=4, batch_size=128, lr=0.05,
                 schedule="cosine", weight_decay=5e-4, augment=False, train_fraction=0.2, test_subset=2000),
    # Long training that memorises noisy labels, sized for 2 CPU cores (docs/experiments.md):
    # a narrow ResNet-18 on 20% of CIFAR-10, small batches, the paper's lr 0.1 with step decay,
    # no augmentation; the test set's fixed 2,000-image part scored every epoch.
    "cpu-memorisation": dict(dataset="cifar10", model="resnet18", model_options={"widths": (16, 32, 64, 128)},
                             epochs=50, batch_size=32, lr=0.1, schedule="step", milestones=(20, 35),
                             weight_decay=1e-4, augment=False, train_fraction=0.2, test_subset=2000),
    # Tests: tiny synthetic data.
    "test": dict(dataset="synthetic", model="small_resnet", model_options={"widths": (4, 8, 8)}, epochs=2,
                 batch_size=32, lr=0.05, schedule="cosine", weight_decay=5e-4, augment=True, train_fraction=0.1),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from preset ``name`` (see :data:`PRESETS`) with overrides."""
    return config_from_preset(TrainConfig, PRESETS, name, overrides)


def run_name(config: TrainConfig) -> str:
    """A readable, unique file stem: key settings plus a short hash of the whole config."""
    noise = "clean" if config.noise == "none" else f"{config.noise[:3]}{config.noise_rate:g}"
    frac = "" if config.train_fraction == 1 else f"-frac{config.train_fraction:g}"
    digest = config_digest(config)
    method = config.method.replace("+", "_")
    return f"{config.dataset}-{config.model}-{method}-{noise}{frac}-s{config.seed}-{digest}"


# -- data -------------------------------------------------------------------------------

@dataclass
class PreparedData:
    """Tensors of one run: uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``."""

    train_images: Tensor
    train_labels: Tensor        # possibly noisy: what the model is trained on
    train_clean: Tensor         # the true labels of the same images
    val_images: Tensor
    val_labels: Tensor
    val_clean: Tensor
    test_images: Tensor
    test_labels: Tensor
    test_part: Tensor           # indices of the test images scored every epoch
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    info: Dict[str, Any]

    @property
    def mean_t(self) -> Tensor:
        return torch.tensor(self.mean).view(1, -1, 1, 1)

    @property
    def std_t(self) -> Tensor:
        return torch.tensor(self.std).view(1, -1, 1, 1)


def prepare_data(config: TrainConfig) -> PreparedData:
    """Load, subsample, corrupt and split the data of a run, deterministically from its seed."""
    if config.dataset == "imagefolder":
        folder = dict(root=os.path.abspath(config.image_folder), image_size=config.image_size or None,
                      skip_corrupt=config.skip_corrupt)
        train, test = (load_dataset("imagefolder", train=split, **folder) for split in (True, False))
    else:
        train = load_dataset(config.dataset, train=True, root=config.data_root)
        test = load_dataset(config.dataset, train=False, root=config.data_root)
    images, clean = train.images, train.labels
    if config.train_fraction < 1:
        keep = per_class_subset(clean, config.train_fraction, seed=config.seed)
        images, clean = images[keep], clean[keep]
    if config.noise == "symmetric":
        noisy = symmetric_noise(clean, config.noise_rate, train.num_classes, seed=config.seed,
                                variant=config.noise_variant)
    elif config.noise == "asymmetric":
        noisy = asymmetric_noise(clean, config.noise_rate, dataset=config.dataset, seed=config.seed)
    else:
        noisy = clean.clone()
    # Validation comes from the noisy training set, as it would in practice.
    tr, va = train_val_split(noisy, config.val_fraction, seed=config.seed)
    # An image folder has no published statistics: those of its training part (after the split).
    mean, std = image_statistics(images[tr]) if config.dataset == "imagefolder" else dataset_stats(config.dataset)
    part = torch.arange(len(test))
    if 0 < config.test_subset < len(test):
        # One fixed part for every run (seed 0), so all runs' curves score the same images.
        part = per_class_subset(test.labels, config.test_subset / len(test), seed=0)
    info = dict(train_size=len(tr), val_size=len(va), test_size=len(test),
                realised_noise_rate=realised_noise_rate(clean, noisy),
                realised_noise_rate_train=realised_noise_rate(clean[tr], noisy[tr]))
    if len(part) < len(test):
        info["test_part_size"] = len(part)
    return PreparedData(images[tr], noisy[tr], clean[tr], images[va], noisy[va], clean[va],
                        test.images, test.labels, part, train.num_classes, tuple(mean), tuple(std), info)


# -- distributed ------------------------------------------------------------------------

def _dist_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed() -> bool:
    """Join the process group when launched by ``torchrun``; True if this call created it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        return True
    return False


def _all_sum(values: Tensor) -> Tensor:
    if _dist_info()[1] > 1:
        dist.all_reduce(values)
    return values


# -- training ---------------------------------------------------------------------------

def _learning_rate(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    return learning_rate(config.lr, config.schedule, epoch=epoch, step=step, steps_per_epoch=steps_per_epoch,
                         epochs=config.epochs, milestones=config.milestones, gamma=config.gamma)


def _batches(n: int, batch_size: int, order: Tensor, rank: int, world: int) -> List[Tensor]:
    """This rank's batches of one epoch: equal shards of a shared permutation (tail dropped
    so every rank runs the same number of steps, as DistributedSampler(drop_last=True))."""
    per_rank = n // world
    mine = order[rank * per_rank:(rank + 1) * per_rank] if world > 1 else order
    local = max(1, batch_size // world)
    return [mine[i:i + local] for i in range(0, len(mine), local)]


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Sequence[Tensor], mean, std, *, device: torch.device,
             batch_size: int = 500) -> List[float]:
    """Accuracy of ``model`` (eval mode) against each label tensor in ``labels``; under DDP
    every rank scores a shard and the counts are summed."""
    rank, world = _dist_info()
    model.eval()
    idx = torch.arange(len(images))[rank::world]
    correct = torch.zeros(len(labels) + 1, dtype=torch.float64)
    for start in range(0, len(idx), batch_size):
        b = idx[start:start + batch_size]
        pred = model(normalize(images[b], mean, std).to(device)).argmax(1).cpu()
        for k, lab in enumerate(labels):
            correct[k] += (pred == lab[b]).sum()
        correct[-1] += len(b)
    correct = _all_sum(correct.to(device)).cpu()
    return [float(c / correct[-1]) for c in correct[:-1]]


def train(
    config: TrainConfig,
    *,
    out_dir: str = os.path.join("results", "runs"),
    checkpoint_dir: str = "checkpoints",
    device: Optional[str] = None,
    stop_after_epoch: Optional[int] = None,
    log=print,
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Train (or resume, or return the finished run of) ``config``; returns the record.

    Args:
        config: the run.
        out_dir: where the JSON record goes.
        checkpoint_dir: where the resumable state goes (not meant for version control).
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available (under DDP, the local
            rank's GPU).
        stop_after_epoch: return after this many epochs in total, as an interruption would
            (the record stays ``"running"``; a later call resumes).
        log: where the log goes (rank 0 only): a line per epoch, and one when the run is complete.
        on_epoch: called (rank 0 only) with each epoch's row of the record as it finishes
            (``epoch``, ``time_s``, accuracies...), for progress displays.
    """
    config.validate()
    created_group = _maybe_init_distributed()
    rank, world = _dist_info()
    try:
        return _train(config, out_dir, checkpoint_dir, device, stop_after_epoch, log if rank == 0 else None,
                      rank, world, on_epoch if rank == 0 else None)
    finally:
        if created_group:
            dist.destroy_process_group()


#: The fields of a complete training record.
HEADLINE = ("final_test_acc", "best_val_acc", "best_val_epoch", "best_val_test_acc", "epochs")


def _train(config, out_dir, checkpoint_dir, device, stop_after_epoch, log, rank, world, on_epoch=None):
    name = run_name(config)
    run = Run(name, config.identity(), out_dir, checkpoint_dir, HEADLINE)
    record_path, state_path = run.record_path, run.checkpoint_path
    finished = run.finished_record(log)
    if finished is not None:
        _log_finished(log, name, finished, record_path)
        return finished

    dev = choose_device(device)
    data = prepare_data(config)

    torch.manual_seed(config.seed)
    in_channels = data.train_images.shape[1]
    net = build_model(config.model, in_channels=in_channels, num_classes=data.num_classes, **config.model_options)
    method = apply_method(net, config.method)
    model = method.model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    # Weight decay on weights only, not on BN/affine biases and scales (1-d parameters).
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=config.lr, momentum=config.momentum)

    record = new_record("train", config.identity(), seed=config.seed, device=dev)
    record.update(name=name, status="running", data=data.info, epochs=[], wall_time_s=0.0, world_size=world,
                  method_options=method.options)
    start_epoch, best_val = 0, -1.0
    state = run.load_checkpoint(dev, log)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_val = state["epoch"], state["best_val"]
        run.keep_earlier_provenance(record)
        record.update(epochs=state["epochs"], wall_time_s=state["wall_time_s"])
        if record["epochs"]:
            # The headline numbers of the epochs done: a finished checkpoint completes the record.
            _summarize(record, config)
        if log:
            log(f"{name}: resuming after epoch {start_epoch}/{config.epochs}")

    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    n = len(data.train_images)
    noisy_mask = data.train_labels != data.train_clean
    end_epoch = config.epochs if stop_after_epoch is None else min(config.epochs, stop_after_epoch)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        gen = epoch_generator(config.seed, epoch)
        order = torch.randperm(n, generator=gen)
        batches = _batches(n, config.batch_size, order, rank, world)
        ddp_model.train()
        sums = torch.zeros(6, dtype=torch.float64)  # loss, seen, fit-given, fit-clean, noisy seen, noisy fit-given
        bar = progress_bar(len(batches), f"epoch {epoch + 1}/{config.epochs}", log is not None)
        for step, b in enumerate(batches):
            lr = _learning_rate(config, epoch, step, len(batches))
            for group in optimizer.param_groups:
                group["lr"] = lr
            if config.augment:
                # Pad with black before standardizing, as the usual RandomCrop -> Normalize pipeline does.
                x = random_crop_flip(data.train_images[b].float().div_(255), padding=4, generator=gen)
                x = (x - data.mean_t) / data.std_t
            else:
                x = normalize(data.train_images[b], data.mean, data.std)
            x = x.to(dev)
            y = data.train_labels[b].to(dev)
            logits = ddp_model(x)
            loss = F.cross_entropy(logits, y)
            if method.regularizer is not None:
                loss = loss + config.ocnn_weight * method.regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
            with torch.no_grad():
                pred = logits.argmax(1).cpu()
                nm = noisy_mask[b]
                sums += torch.tensor([loss_value * len(b), len(b), (pred == data.train_labels[b]).sum(),
                                      (pred == data.train_clean[b]).sum(), nm.sum(),
                                      (pred[nm] == data.train_labels[b][nm]).sum()], dtype=torch.float64)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
        bar.close()
        sums = _all_sum(sums.to(dev)).cpu()
        val_acc, val_clean_acc = evaluate(model, data.val_images, [data.val_labels, data.val_clean],
                                          data.mean, data.std, device=dev)
        part = data.test_part
        whole = len(part) == len(data.test_images)
        images, labels = (data.test_images, data.test_labels) if whole else (data.test_images[part],
                                                                            data.test_labels[part])
        (test_acc,) = evaluate(model, images, [labels], data.mean, data.std, device=dev)
        extra = {}
        if not whole and epoch + 1 == config.epochs:
            (extra["test_acc_full"],) = evaluate(model, data.test_images, [data.test_labels], data.mean, data.std,
                                                 device=dev)
        epoch_time = time.perf_counter() - t0
        row = dict(epoch=epoch + 1, lr=lr, train_loss=float(sums[0] / sums[1]),
                   train_acc=float(sums[2] / sums[1]), train_acc_true_labels=float(sums[3] / sums[1]),
                   memorized_noisy=float(sums[5] / sums[4]) if sums[4] > 0 else None,
                   val_acc=val_acc, val_acc_true_labels=val_clean_acc, test_acc=test_acc, time_s=epoch_time,
                   **extra)
        record["epochs"].append(row)
        record["wall_time_s"] += epoch_time
        improved = val_acc > best_val
        best_val = max(best_val, val_acc)
        if not math.isfinite(row["train_loss"]):
            record["status"] = "diverged"
        _summarize(record, config)
        if rank == 0:
            if improved:
                save_checkpoint(os.path.join(checkpoint_dir, f"{name}.best.pt"),
                      {"config": model_description(config, in_channels, data.num_classes), "model": model.state_dict(),
                       "epoch": epoch + 1})
            save_checkpoint(state_path, {"config": model_description(config, in_channels, data.num_classes),
                               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "epoch": epoch + 1, "best_val": best_val, "epochs": record["epochs"],
                               "wall_time_s": record["wall_time_s"]})
            write_json(record_path, record)
        if log:
            mem = "" if row["memorized_noisy"] is None else f" memorized-noisy {row['memorized_noisy']:.3f}"
            log(f"{name} epoch {epoch + 1}/{config.epochs}: loss {row['train_loss']:.4f} "
                f"train {row['train_acc']:.4f}{mem} val {val_acc:.4f} test {test_acc:.4f} ({epoch_time:.1f} s)")
        if on_epoch is not None:
            on_epoch(row)
        if record["status"] == "diverged":
            break
    if rank == 0 and start_epoch >= end_epoch and record["epochs"]:
        write_json(record_path, record)  # nothing trained now: the record of the checkpoint
    if record["status"] in ("complete", "diverged"):
        _log_finished(log, name, record, record_path)
    if world > 1:
        dist.barrier()
    return record


def _log_finished(log, name: str, record: Dict[str, Any], record_path: str) -> None:
    if not log:
        return
    if record["status"] == "diverged":
        log(f"{name}: diverged at epoch {record.get('epochs_done')} (record {record_path}); not resumed")
    else:
        log(f"{name}: complete, test accuracy {record['final_test_acc']:.4f}, best-validation test accuracy "
            f"{record['best_val_test_acc']:.4f} (record {record_path})")


def _summarize(record: Dict[str, Any], config: TrainConfig) -> None:
    """Headline numbers: final test accuracy (on the whole test set), and test accuracy at the
    best-validation epoch (on the part of the test set scored every epoch)."""
    rows = record["epochs"]
    best = max(rows, key=lambda r: r["val_acc"])  # first epoch reaching the best val accuracy
    record.update(final_test_acc=rows[-1].get("test_acc_full", rows[-1]["test_acc"]), best_val_acc=best["val_acc"], best_val_epoch=best["epoch"],
                  best_val_test_acc=best["test_acc"], epochs_done=len(rows))
    if len(rows) == config.epochs and record["status"] == "running":
        record["status"] = "complete"
