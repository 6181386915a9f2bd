"""Resumable SN-GAN training with FID/KID over iterations, one record per run.

A run is fully described by a :class:`GANConfig`: architecture pair (``"cnn"`` or
``"resnet"``, see :mod:`convnorm.experiments.models.sngan`), where normalization goes
(``d_norm``, ``g_norm``), and the SN-GAN training setting: hinge loss, Adam
(lr 2e-4, betas (0.0, 0.9)), batch 64, ``n_dis = 5`` discriminator steps per generator
step, linear learning-rate decay to 0 (Mimicry's CIFAR-10 setting), optional generator EMA.
Images are scaled to [-1, 1]; there is no augmentation.

Everything random comes from the ``seed``: the initialization, and for generator step ``t``
a generator seeded by ``(seed, t)`` that draws all noise of that step; real batches come
from a per-epoch permutation seeded by ``(seed, epoch)``. So an interrupted run that resumes
from its checkpoint computes exactly what an uninterrupted one does.

Files of a run named ``<name>``:

- ``<out>/<name>.json``: the record (kind ``"gan"``), rewritten at every checkpoint,
  ``status`` ``"running"`` until the last iteration, then ``"complete"``;
- ``<out>/<name>/samples-<iteration>.png``: 8x8 grids of samples from fixed noise;
- ``<checkpoints>/<name>.pt``: the resumable state (networks, optimizers, EMA, curves),
  written atomically every ``checkpoint_every`` iterations, after each FID evaluation and
  at the end.

FID and KID (see :mod:`convnorm.experiments.fid`) compare generated images (fixed noise,
generator in eval mode, or its EMA) with the first ``fid_reference_samples`` training
images, whose features are cached: ``fid_curve_samples`` images along the way and
``fid_samples`` at the last iteration, where the first ``fid_curve_samples`` of them are
also scored, so the record's ``fid_curve`` has two rows at the last iteration, told apart
by their ``samples``; ``final_fid``/``final_kid`` are the ``fid_samples`` row. FID is
biased upward at small sample counts: compare runs only at equal counts.

The report section on these runs is :mod:`convnorm.experiments.gan_report`.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convnorm.experiments.models.sngan import ARCHS, D_NORMS, G_NORMS, build_sngan
from convnorm.experiments.progress import progress_bar
from convnorm.experiments.records import atomic_write_bytes, config_digest, config_identity, new_record, save_checkpoint, write_json
from convnorm.experiments.runs import Run, choose_device

__all__ = ["GANConfig", "GAN_PRESETS", "gan_config_from_args", "run_name", "train_gan", "hinge_loss_discriminator",
           "hinge_loss_generator", "encode_png", "image_grid", "sample_diversity",
           "BASELINE_NORMS"]

# The SN-GAN paper's placement (D norm, G norm): what every other placement is compared with.
BASELINE_NORMS = ("sn", "bn")


@dataclass
class GANConfig:
    """Everything that defines a GAN run (and so its name and its record).

    ``iterations`` counts generator steps (each preceded by ``n_dis`` discriminator steps).
    ``fid_every`` and ``sample_every`` are in generator steps; FID is also computed at the
    last iteration (``fid_samples=0`` turns FID off). The last evaluation scores
    ``fid_samples`` images; the ones along the way score ``fid_curve_samples`` (0: the same
    count), and the last evaluation then also scores the first ``fid_curve_samples`` of its
    images, so the whole curve is at one sample count (FID's bias depends on it).
    ``g_width``/``d_width`` None: the paper's widths.
    """

    arch: str = "cnn"
    d_norm: str = "sn"
    g_norm: str = "bn"
    iterations: int = 100_000
    n_dis: int = 5
    batch_size: int = 64
    lr: float = 2e-4
    betas: Tuple[float, float] = (0.0, 0.9)
    lr_decay: str = "linear"            # "linear" (to 0 at the last iteration) or "none"
    ema: bool = False                   # evaluate and sample an EMA of the generator
    ema_decay: float = 0.9999           # with warm-up: min(ema_decay, (1 + t) / (10 + t))
    z_dim: int = 128
    g_width: Optional[int] = None
    d_width: Optional[int] = None
    seed: int = 0
    fid_every: int = 5000
    fid_samples: int = 5000
    fid_curve_samples: int = 0          # 0: fid_samples
    fid_reference_samples: int = 10000  # the first training images
    dataset: str = "cifar10"            # "cifar10" or "synthetic"
    sample_every: int = field(default=1000, metadata={"identity": False})
    checkpoint_every: int = field(default=500, metadata={"identity": False})
    data_root: Optional[str] = field(default=None, metadata={"identity": False})

    def validate(self) -> None:
        for name, valid in (("arch", ARCHS), ("d_norm", D_NORMS), ("g_norm", G_NORMS),
                            ("lr_decay", ("linear", "none")), ("dataset", ("cifar10", "synthetic"))):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}; got {getattr(self, name)!r}")
        for name in ("iterations", "n_dis", "batch_size", "z_dim", "sample_every", "checkpoint_every"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("fid_every", "fid_samples", "fid_curve_samples", "fid_reference_samples"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.fid_samples and (self.fid_samples < 2 or self.fid_reference_samples < 2):
            raise ValueError("fid_samples and fid_reference_samples must be at least 2 when FID is on")
        if not self.fid_samples and self.fid_curve_samples:
            raise ValueError("fid_curve_samples needs FID on (fid_samples > 0); set it to 0")
        if self.fid_samples and not (self.fid_curve_samples == 0 or 2 <= self.fid_curve_samples <= self.fid_samples):
            raise ValueError(f"fid_curve_samples must be 0 or between 2 and fid_samples ({self.fid_samples}), "
                             f"got {self.fid_curve_samples}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")

    def identity(self) -> Dict[str, Any]:
        """The fields that define the result (not where data lives or how often files are written)."""
        return config_identity(self)


#: Named settings: the papers' and ones sized for 2 CPU cores.
GAN_PRESETS: Dict[str, Dict[str, Any]] = {
    # SN-GAN / Mimicry CIFAR-10 setting: 100K generator steps, n_dis 5, linear decay.
    "paper-cnn": dict(arch="cnn", iterations=100_000, fid_every=10_000, fid_samples=10_000),
    "paper-resnet": dict(arch="resnet", iterations=100_000, fid_every=10_000, fid_samples=10_000),
    # A short CPU comparison of normalization placements (docs/gan.md): the standard CNN at a
    # quarter of the paper's widths, 1000 generator steps, FID of 5000 samples against
    # train[:5000] at the end and of 1000 samples along the way (Inception is the cost on a CPU).
    "cpu-cnn": dict(arch="cnn", g_width=128, d_width=128, iterations=1000, fid_every=500, fid_samples=5000,
                    fid_curve_samples=1000, fid_reference_samples=5000, sample_every=100, checkpoint_every=25),
    # The same comparison with the ResNet pair (the SN-GAN paper's and Mimicry's CIFAR-10 model) at
    # an eighth of the paper's generator width and a quarter of its discriminator width: the
    # CNN pair collapses at CPU widths (docs/gan.md), this one does not. 600 generator steps.
    "cpu-resnet": dict(arch="resnet", g_width=32, d_width=32, iterations=600, fid_every=200, fid_samples=5000,
                       fid_curve_samples=1000, fid_reference_samples=5000, sample_every=50, checkpoint_every=10),
    # Tests: tiny networks on synthetic data.
    "test": dict(arch="cnn", dataset="synthetic", iterations=3, n_dis=1, batch_size=8, g_width=16, d_width=16,
                 z_dim=8, fid_every=0, fid_samples=0, sample_every=2, checkpoint_every=1),
}


def gan_config_from_args(preset: Optional[str] = None, **kwargs) -> GANConfig:
    """A validated :class:`GANConfig` from an optional preset (:data:`GAN_PRESETS`) and overrides.

    Overrides that are ``None`` are ignored (so CLI options left unset keep the defaults);
    ``betas`` may be a sequence or a string ``"0.0,0.9"``.
    """
    values: Dict[str, Any] = {}
    if preset is not None:
        if preset not in GAN_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; valid presets are {', '.join(GAN_PRESETS)}")
        values.update(GAN_PRESETS[preset])
    names = {f.name for f in dataclasses.fields(GANConfig)}
    for key, value in kwargs.items():
        if value is None:
            continue
        if key not in names:
            raise ValueError(f"unknown GANConfig field {key!r}; fields are {', '.join(sorted(names))}")
        values[key] = value
    if "betas" in values:
        betas = values["betas"]
        if isinstance(betas, str):
            betas = [float(b) for b in betas.split(",")]
        values["betas"] = tuple(float(b) for b in betas)
    config = GANConfig(**values)
    config.validate()
    return config


def run_name(config: GANConfig) -> str:
    """A readable, unique file stem: key settings plus a short hash of the whole config."""
    digest = config_digest(config)
    ema = "-ema" if config.ema else ""
    return (f"gan-{config.dataset}-{config.arch}-d_{config.d_norm.replace('+', '_')}-"
            f"g_{config.g_norm.replace('+', '_')}-it{config.iterations}{ema}-s{config.seed}-{digest}")


# -- losses ---------------------------------------------------------------------------------

def hinge_loss_discriminator(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))``."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_loss_generator(fake_logits: Tensor) -> Tensor:
    """``-mean(D(G(z)))``."""
    return -fake_logits.mean()


# -- images ---------------------------------------------------------------------------------

def _to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images to uint8 0..255 (round to nearest)."""
    return ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _to_float(images: Tensor) -> Tensor:
    """uint8 images to [-1, 1] float32."""
    return images.float() / 127.5 - 1.0


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> Tensor:
    """uint8 ``(N, C, H, W)`` to one uint8 ``(H', W', C)`` grid, ``nrow`` per row, black gaps."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.zeros(padding + rows * (h + padding), padding + nrow * (w + padding), c, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + k * (w + padding)
        grid[y:y + h, x:x + w] = images[i].permute(1, 2, 0)
    return grid


def encode_png(image: Tensor) -> bytes:
    """A PNG file (8-bit, RGB or grey, written by Pillow) of a uint8 ``(H, W, 3)`` or ``(H, W)`` image."""
    if image.dtype != torch.uint8 or image.dim() not in (2, 3) or (image.dim() == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be uint8 (H, W, 3) or (H, W), got {image.dtype} {tuple(image.shape)}")
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.contiguous().numpy()).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def sample_diversity(images: Tensor) -> float:
    """Mean over pixels of the standard deviation across images, in [0, 1] pixel units.

    ``images``: uint8 ``(N, C, H, W)``, N >= 2. About 0.25 for CIFAR-10 images; near 0 when
    a generator maps every noise vector to nearly the same image (mode collapse).
    """
    if images.dim() != 4 or len(images) < 2:
        raise ValueError(f"images must be (N >= 2, C, H, W), got {tuple(images.shape)}")
    return float((images.double() / 255).std(0).mean())


# -- training -------------------------------------------------------------------------------

def _step_generator(seed: int, t: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + t + 1)


def _fixed_noise(seed: int, n: int, z_dim: int, stream: int) -> Tensor:
    """Noise that depends only on the seed (``stream`` 1: sample grids, 2: FID)."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed * 7919 + 104_729 * stream))


class _RealBatches:
    """Batch ``k`` of the run: batches of a per-epoch permutation seeded by (seed, epoch), tail dropped."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n < batch_size:
            raise ValueError(f"the training set has {n} images, fewer than batch_size {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._order = -1, None

    def __call__(self, k: int) -> Tensor:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 500_009 + epoch)
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=g)
        return self._order[j * self.batch_size:(j + 1) * self.batch_size]


@torch.no_grad()
def _generate(g: nn.Module, z: Tensor, device: torch.device, batch: int = 500) -> Tensor:
    """uint8 images of ``g`` (eval mode) for noise ``z``."""
    was_training = g.training
    g.eval()
    try:
        return torch.cat([_to_uint8(g(z[i:i + batch].to(device))) for i in range(0, len(z), batch)])
    finally:
        g.train(was_training)


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1.0 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


_LOADED: Dict[Tuple[str, Optional[str]], Tensor] = {}


def _training_images(dataset: str, root: Optional[str]) -> Tensor:
    """uint8 training images, kept for the next run in the same process (one data set at a time)."""
    key = (dataset, root)
    if key not in _LOADED:
        from convnorm.experiments.data import load_dataset

        _LOADED.clear()
        _LOADED[key] = load_dataset(dataset, train=True, root=root).images
    return _LOADED[key]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


#: The fields of a complete GAN record.
HEADLINE = ("final_fid", "final_kid", "fid_curve", "loss_curve", "iterations_done")


def train_gan(
    config: GANConfig,
    *,
    out_dir: str = os.path.join("results", "gan"),
    checkpoint_dir: str = os.path.join("checkpoints", "gan"),
    device: Optional[str] = None,
    stop_after: Optional[int] = None,
    log: Optional[Callable[[str], None]] = print,
    feature_extractor: Optional[Callable[[Tensor], Tensor]] = None,
    fid_cache_dir: Optional[str] = None,
) -> Dict[str, Any]:
    """Train (or resume, or return the finished run of) ``config``; returns the record.

    Args:
        config: the run.
        out_dir: where the record and the sample grids go.
        checkpoint_dir: where the resumable state goes (not meant for version control).
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
        stop_after: return after this many generator steps in total, as an interruption
            would (the record stays ``"running"``; a later call resumes).
        log: where progress lines go (None: silent).
        feature_extractor: FID features of uint8 images (default: Inception-v3 pool3,
            :class:`convnorm.experiments.fid.InceptionFeatures`, on ``device``).
        fid_cache_dir: cache of the reference features (default
            :data:`convnorm.experiments.fid.DEFAULT_CACHE_DIR`).
    """
    config.validate()
    name = run_name(config)
    run = Run(name, config.identity(), out_dir, checkpoint_dir, HEADLINE)
    record_path, state_path = run.record_path, run.checkpoint_path
    say = log or (lambda message: None)
    existing = run.finished_record(log)
    if existing is not None:
        say(f"{name}: {existing['status']}, FID {existing.get('final_fid')} (record {record_path})")
        return existing

    dev = choose_device(device)
    wall0 = time.perf_counter()
    train_images = _training_images(config.dataset, config.data_root)
    if tuple(train_images.shape[1:]) != (3, 32, 32):
        raise ValueError(f"SN-GAN needs 3x32x32 images, {config.dataset} has {tuple(train_images.shape[1:])}")
    reals = train_images.to(dev)
    batches = _RealBatches(len(reals), config.batch_size, config.seed)

    torch.manual_seed(config.seed)
    g, d = build_sngan(config.arch, d_norm=config.d_norm, g_norm=config.g_norm, z_dim=config.z_dim,
                       g_width=config.g_width, d_width=config.d_width)
    g, d = g.to(dev), d.to(dev)
    ema = copy.deepcopy(g) if config.ema else None
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=tuple(config.betas))
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr, betas=tuple(config.betas))

    record = new_record("gan", config.identity(), seed=config.seed, device=dev)
    record["real_diversity"] = sample_diversity(train_images[:64])
    record.update(name=name, status="running", iterations_done=0, fid_curve=[], loss_curve=[], samples=[],
                  wall_time_s=0.0, train_time_s=0.0, iterations_per_s=None, final_fid=None, final_kid=None,
                  parameters={"generator": _count(g), "discriminator": _count(d)},
                  fid_reference={"dataset": config.dataset, "split": "train",
                                 "samples": min(config.fid_reference_samples, len(train_images))})
    start, sums = 0, [0.0, 0.0, 0]  # d loss, g loss, steps since the last loss_curve entry
    state = run.load_checkpoint(dev, log, identity_of=lambda state: state["identity"])
    if state is not None:
        g.load_state_dict(state["generator"])
        d.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, sums = state["iteration"], state["loss_sums"]
        record.update(state["record"])
        run.keep_earlier_provenance(record)
        say(f"{name}: resuming after iteration {start}/{config.iterations}")

    evaluator = g if ema is None else ema
    fixed_z = _fixed_noise(config.seed, 64, config.z_dim, stream=1)
    reference = None

    curve_samples = config.fid_curve_samples or config.fid_samples

    def evaluate_fid(t: int) -> List[Dict[str, Any]]:
        """FID/KID rows at iteration ``t``: the curve's count, and at the end also ``fid_samples``."""
        nonlocal reference, feature_extractor
        from convnorm.experiments import fid as fidlib

        t0 = time.perf_counter()
        if feature_extractor is None:
            feature_extractor = fidlib.InceptionFeatures(device=str(dev))
        if reference is None:
            ref_images = train_images[:config.fid_reference_samples]
            cache = fidlib.DEFAULT_CACHE_DIR if fid_cache_dir is None else fid_cache_dir
            reference = fidlib.reference_statistics(ref_images, cache, extractor=feature_extractor, log=say)
        n = config.fid_samples if t == config.iterations else curve_samples
        # The first images of every evaluation come from the same noise, whatever the count.
        z = _fixed_noise(config.seed, config.fid_samples, config.z_dim, stream=2)[:n]
        feats = feature_extractor(_generate(evaluator, z, dev)).double()
        rows = []
        for count in sorted({curve_samples, n}):
            mu, sigma = fidlib.feature_statistics(feats[:count])
            kid_mean, kid_std = fidlib.kid(feats[:count], reference.features, seed=0)
            rows.append({"iteration": t, "fid": fidlib.frechet_distance(mu, sigma, reference.mu, reference.sigma),
                         "kid": kid_mean, "kid_std": kid_std, "samples": count,
                         "reference_samples": reference.count, "seconds": time.perf_counter() - t0})
        return rows

    def write_samples(t: int) -> None:
        rel = os.path.join(name, f"samples-{t:06d}.png")
        images = _generate(evaluator, fixed_z, dev)
        atomic_write_bytes(os.path.join(out_dir, rel), encode_png(image_grid(images)))
        record["samples"] = [s for s in record["samples"] if s["iteration"] != t]
        record["samples"].append({"iteration": t, "path": rel, "diversity": sample_diversity(images)})

    def checkpoint(t: int) -> None:
        record["iterations_done"] = t
        record["status"] = "complete" if t == config.iterations else "running"
        record["iterations_per_s"] = t / record["train_time_s"] if record["train_time_s"] > 0 else None
        final = [row for row in record["fid_curve"]
                 if row["iteration"] == config.iterations and row["samples"] == config.fid_samples]
        if final:
            record["final_fid"], record["final_kid"] = final[0]["fid"], final[0]["kid"]
        state = {"identity": config.identity(), "iteration": t, "loss_sums": sums, "generator": g.state_dict(),
                 "discriminator": d.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                 "ema": ema.state_dict() if ema is not None else None,
                 "record": {k: record[k] for k in ("fid_curve", "loss_curve", "samples", "wall_time_s",
                                                     "train_time_s")}}
        save_checkpoint(state_path, state)
        write_json(record_path, record)

    end = config.iterations if stop_after is None else min(config.iterations, int(stop_after))
    bsz = config.batch_size
    g.train()
    d.train()
    d_params = list(d.parameters())
    bar = progress_bar(end - start, "iterations", log is not None)
    for t in range(start, end):
        bar.update(1)
        t0 = time.perf_counter()
        gen = _step_generator(config.seed, t)
        lr = config.lr * (1.0 - t / config.iterations) if config.lr_decay == "linear" else config.lr
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        for k in range(config.n_dis):
            real = _to_float(reals[batches(t * config.n_dis + k)])
            z = torch.randn(bsz, config.z_dim, generator=gen).to(dev)
            with torch.no_grad():
                fake = g(z)
            logits = d(torch.cat([real, fake]))  # one pass (no batch statistics in D)
            d_loss = hinge_loss_discriminator(logits[:bsz], logits[bsz:])
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        z = torch.randn(bsz, config.z_dim, generator=gen).to(dev)
        for p in d_params:
            p.requires_grad_(False)
        g_loss = hinge_loss_generator(d(g(z)))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        for p in d_params:
            p.requires_grad_(True)
        if ema is not None:
            _ema_update(ema, g, min(config.ema_decay, (1.0 + t) / (10.0 + t)))
        sums = [sums[0] + d_loss.item(), sums[1] + g_loss.item(), sums[2] + 1]
        record["train_time_s"] += time.perf_counter() - t0

        done = t + 1
        save = done % config.checkpoint_every == 0 or done == end
        if done % config.sample_every == 0 or done == config.iterations:
            record["loss_curve"].append({"iteration": done, "d_loss": sums[0] / sums[2], "g_loss": sums[1] / sums[2]})
            sums = [0.0, 0.0, 0]
            write_samples(done)
            rate = done / record["train_time_s"]
            say(f"{name}: iteration {done}/{config.iterations}, D loss {record['loss_curve'][-1]['d_loss']:.3f}, "
                f"G loss {record['loss_curve'][-1]['g_loss']:.3f}, {rate:.2f} it/s")
        fid_due = config.fid_samples > 0 and (done == config.iterations
                                              or (config.fid_every > 0 and done % config.fid_every == 0))
        if fid_due and not any(row["iteration"] == done for row in record["fid_curve"]):
            for row in evaluate_fid(done):
                record["fid_curve"].append(row)
                say(f"{name}: iteration {done}, FID {row['fid']:.2f}, KID {row['kid']:.4f} "
                    f"({row['samples']} samples, {row['seconds']:.0f} s)")
            save = True
        if save:
            record["wall_time_s"] += time.perf_counter() - wall0
            wall0 = time.perf_counter()
            checkpoint(done)
    bar.close()
    if end == start:
        # Nothing trained now: write the record of the checkpoint (complete if it is finished).
        checkpoint(start)
    return json.loads(json.dumps(record))
