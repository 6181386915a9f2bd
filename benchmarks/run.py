"""ConvNorm speed benchmark: per layer (ResNet-18 CIFAR shapes), whole networks (ResNet-18,
the memorisation study's narrow ResNet-18 at one and two threads), and the SN-GAN
discriminator step.

Usage:
    python -m benchmarks.run                 # CPU, and CUDA too when present
    python -m benchmarks.run --device cuda   # one device
    python -m benchmarks.run --quick         # fewer repeats, for a smoke test

Variants are timed side by side in one process, round-robin within each repeat, and
reported as medians and as ratios to Conv+BN measured in the same run. Records go to
``benchmarks/results/<device>.json`` and ``benchmarks/README.md`` is regenerated from all
records there (``python -m benchmarks.report``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.public_algorithm import PublicConvNorm2d, convert_public
from convnorm import ConvNorm2d, autotune, dft, fuse_for_inference
from convnorm.experiments.methods import PAPER_BLOCK, apply_method
from convnorm.experiments.models import cifar_resnet18
from convnorm.experiments.models.sngan import build_discriminator
from convnorm.experiments.provenance import provenance

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# (in, out, kernel, stride, input size): every distinct conv of the CIFAR ResNet-18.
RESNET18_LAYERS = [
    (3, 64, 3, 1, 32),
    (64, 64, 3, 1, 32),
    (64, 128, 3, 2, 32),
    (64, 128, 1, 2, 32),
    (128, 128, 3, 1, 16),
    (128, 256, 3, 2, 16),
    (256, 256, 3, 1, 8),
    (256, 512, 3, 2, 8),
    (512, 512, 3, 1, 4),
]


#: The memorisation study's network: ResNet-18 at a quarter of the standard widths.
STUDY_WIDTHS = (16, 32, 64, 128)
STUDY_LAYERS = [(cin // 4 if cin > 3 else 3, cout // 4, k, s, size) for cin, cout, k, s, size in RESNET18_LAYERS]
STUDY_THREADS = (1, 2)
#: The SN-GAN discriminator of `convnorm gan-train --preset cpu-resnet`: its width, and
#: the images of one discriminator step (a real and a generated batch of 64).
GAN_WIDTH, GAN_BATCH = 32, 64


def layer_variants(cin, cout, k, stride) -> Dict[str, Callable[[], nn.Module]]:
    pad = k // 2

    def convnorm(**options):
        return lambda: ConvNorm2d(cin, cout, k, stride, pad, **options)

    return {
        "conv+bn": lambda: nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout)),
        "public": lambda: PublicConvNorm2d(cin, cout, k, stride, pad),
        "convnorm": convnorm(),
        "convnorm+bn": lambda: nn.Sequential(convnorm()(), nn.BatchNorm2d(cout)),
        "convnorm-paper": lambda: nn.Sequential(convnorm(**PAPER_BLOCK)(), nn.BatchNorm2d(cout)),
        "convnorm[spatial]": convnorm(algorithm="spatial"),
        "convnorm[fourier]": convnorm(algorithm="fourier"),
    }


def fft_floor_step(batch, cout, k, stride, size, train: bool, device) -> Callable[[], None]:
    """The FFT pair alone on the layer's output grid: rfft2 + irfft2 of a (B, C_out,
    H_out + k - 1, W_out + k - 1) tensor; in training its backward (another pair) too."""
    out = (size + 2 * (k // 2) - k) // stride + 1
    grid = out + k - 1
    y = torch.randn(batch, cout, grid, grid, device=device, requires_grad=train)

    def step():
        z = torch.fft.irfft2(torch.fft.rfft2(y), s=(grid, grid))
        if train:
            z.sum().backward()

    return step


def products_floor_step(batch, cin, cout, k, stride, size, train: bool, device) -> Callable[[], None]:
    """The Fourier path's per-frequency products alone: one complex (B x C_in) @ (C_in x C_out)
    product at every frequency of the layer's full grid (stride 1, so N = H + k - 1 with
    N (N/2 + 1) one-sided frequencies), as four real batched GEMMs; in training also the
    eight of its backward (input and kernel gradients)."""
    grid = size + k - 1
    n_freq = grid * (grid // 2 + 1)
    x = torch.randn(2, n_freq, batch, cin, device=device)
    w = torch.randn(2, n_freq, cin, cout, device=device)
    y = torch.empty(2, n_freq, batch, cout, device=device)
    gx, gw = torch.empty_like(x), torch.empty_like(w)

    def step():
        dft._mix_into(y, x, w)
        if train:
            dft._mix_into(gx, y, w.transpose(2, 3), conj_b=True)
            dft._mix_into(gw, x.transpose(2, 3), y, conj_a=True)

    return step


def model_variants() -> Dict[str, Callable[[], nn.Module]]:
    def method(name, **options):
        return lambda: apply_method(cifar_resnet18(), name, **options).model

    return {
        "conv+bn": cifar_resnet18,
        "public": lambda: convert_public(cifar_resnet18()),
        "convnorm": method("convnorm"),
        "convnorm+bn": method("convnorm+bn"),
        "convnorm-paper": method("convnorm-paper"),
        "convnorm+bn[spatial]": method("convnorm+bn", algorithm="spatial"),
        "convnorm+bn[fourier]": method("convnorm+bn", algorithm="fourier"),
    }


def study_variants() -> Dict[str, Callable[[], nn.Module]]:
    return {name: (lambda name=name: apply_method(cifar_resnet18(widths=STUDY_WIDTHS), name).model)
            for name in ("bn", "convnorm+bn", "convnorm-paper")}


def gan_variants() -> Dict[str, Callable[[], nn.Module]]:
    return {name: (lambda name=name: build_discriminator("resnet", norm=name, width=GAN_WIDTH))
            for name in ("sn", "convnorm", "convnorm+sn")}


def saved_activation_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of tensors autograd saves for backward during ``fn`` (distinct storages)."""
    seen = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            seen[key] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int, device) -> Dict[str, List[float]]:
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def peak_cuda_bytes(fn, device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _autotune_picks(shape) -> Dict[str, str]:
    """What algorithm='auto' chose for inputs of ``shape``: {'train' or 'eval': path}."""
    picks = {}
    for key, path in autotune.choices().items():
        if key[0] == tuple(shape):
            picks["train" if key[-1] else "eval"] = path
    return picks


def bench_layers(device, batch, repeats, warmup, layers=RESNET18_LAYERS, network="resnet18") -> List[dict]:
    rows = []
    for cin, cout, k, stride, size in layers:
        torch.manual_seed(0)
        autotune.clear_cache()
        x = torch.randn(batch, cin, size, size, device=device)
        modules = {name: make().to(device) for name, make in layer_variants(cin, cout, k, stride).items()}
        for mode in ("train", "eval"):
            steps = {}
            for name, m in modules.items():
                m.train(mode == "train")
                if mode == "train":
                    xg = x.clone().requires_grad_(True)

                    def step(m=m, xg=xg):
                        m(xg).sum().backward()

                else:

                    def step(m=m):
                        with torch.no_grad():
                            m(x)

                steps[name] = step
            steps["floor"] = fft_floor_step(batch, cout, k, stride, size, mode == "train", device)
            if k > 1:
                steps["products"] = products_floor_step(batch, cin, cout, k, stride, size, mode == "train", device)
            times = time_round_robin(steps, repeats, warmup, device)
            base = statistics.median(times["conv+bn"])
            picks = _autotune_picks(x.shape)
            for name in steps:
                med = statistics.median(times[name])
                row = dict(network=network, layer=f"{cin}->{cout} k{k} s{stride} @{size}", mode=mode, variant=name,
                           median_ms=1e3 * med, ratio=med / base, repeats=len(times[name]))
                if name in ("convnorm", "convnorm+bn", "convnorm-paper") and mode in picks:
                    row["auto_choice"] = picks[mode]
                if mode == "train" and name not in ("floor", "products"):
                    row["saved_activation_mb"] = saved_activation_bytes(lambda m=modules[name]: m(x.clone().requires_grad_(True))) / 2**20
                if device.type == "cuda":
                    row["peak_memory_mb"] = peak_cuda_bytes(steps[name], device) / 2**20
                rows.append(row)
                print(f"  {row['layer']:>24} {mode:5} {name:18} {row['median_ms']:9.2f} ms  x{row['ratio']:.2f}", flush=True)
    return rows


def _classifier_step(m, opt, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return step


def _discriminator_step(d, opt, x, half):
    """One SN-GAN discriminator step: hinge loss on a real and a generated half-batch."""
    def step():
        opt.zero_grad(set_to_none=True)
        logits = d(x)
        (F.relu(1 - logits[:half]).mean() + F.relu(1 + logits[half:]).mean()).backward()
        opt.step()
    return step


def bench_network(device, variants, x, make_train_step, baseline, repeats, warmup, *, fused=(), tag=None) -> List[dict]:
    """Train step and eval forward of every variant, round-robin; ratios to ``baseline``.

    ``fused``: variants also timed in eval after :func:`convnorm.fuse_for_inference`.
    """
    tag = tag or {}
    rows = []
    torch.manual_seed(0)
    models = {name: make().to(device) for name, make in variants.items()}
    for mode in ("train", "eval"):
        steps = {}
        for name, m in models.items():
            m.train(mode == "train")
            if mode == "train":
                steps[name] = make_train_step(m)
            else:
                steps[name] = _no_grad(m, x)
                if name in fused:
                    steps[f"{name} fused"] = _no_grad(fuse_for_inference(copy.deepcopy(m)), x)
        times = time_round_robin(steps, repeats, warmup, device)
        base = statistics.median(times[baseline])
        for name in steps:
            med = statistics.median(times[name])
            row = dict(tag, mode=mode, variant=name, batch=x.shape[0], median_ms=1e3 * med, ratio=med / base,
                       repeats=len(times[name]))
            if mode == "train":
                row["saved_activation_mb"] = saved_activation_bytes(lambda m=models[name]: m(x)) / 2**20
            if device.type == "cuda":
                row["peak_memory_mb"] = peak_cuda_bytes(steps[name], device) / 2**20
            rows.append(row)
            label = " ".join(f"{k}={v}" for k, v in tag.items())
            print(f"  {label} b{x.shape[0]} {mode:5} {name:22} {row['median_ms']:9.2f} ms  x{row['ratio']:.2f}", flush=True)
    return rows


def _no_grad(m, x):
    def step():
        with torch.no_grad():
            m(x)
    return step


def _cifar_batch(device, batch, lr):
    """A CIFAR-shaped batch and a maker of SGD train steps on it."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return x, lambda m: _classifier_step(m, torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9), x, y)


def bench_model(device, batch, repeats, warmup) -> List[dict]:
    x, make_step = _cifar_batch(device, batch, lr=0.01)
    rows = bench_network(device, model_variants(), x, make_step, "conv+bn", repeats, warmup,
                         fused=("convnorm+bn", "convnorm-paper"))
    for row in rows:
        row["model"] = "resnet18"
    return rows


def bench_study_network(device, batch, repeats, warmup) -> List[dict]:
    """The memorisation study's narrow ResNet-18, at one and two threads (CPU)."""
    x, make_step = _cifar_batch(device, batch, lr=0.1)
    threads = STUDY_THREADS if device.type == "cpu" else (torch.get_num_threads(),)
    previous = torch.get_num_threads()
    rows = []
    try:
        for t in threads:
            torch.set_num_threads(t)
            rows += bench_network(device, study_variants(), x, make_step, "bn", repeats, warmup,
                                  fused=("convnorm+bn", "convnorm-paper"), tag=dict(threads=t))
    finally:
        torch.set_num_threads(previous)
    return rows


def bench_gan(device, repeats, warmup) -> List[dict]:
    torch.manual_seed(0)
    x = torch.randn(2 * GAN_BATCH, 3, 32, 32, device=device)
    make_step = lambda d: _discriminator_step(d, torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.9)), x,
                                              GAN_BATCH)
    rows = bench_network(device, gan_variants(), x, make_step, "sn", repeats, warmup, tag=dict(width=GAN_WIDTH))
    return [r for r in rows if r["mode"] == "train"]


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(device: torch.device, quick: bool, label: str = "") -> str:
    batch = 128 if device.type == "cuda" else 32
    repeats, warmup = (3, 1) if quick else ((25, 5) if device.type == "cuda" else (7, 2))
    record = dict(provenance(device), label=label, config=dict(layer_batch=batch, model_batch=batch, repeats=repeats,
                                                   warmup=warmup, dtype="float32", quick=quick))
    print(f"device: {record['device']}", flush=True)
    model_repeats = max(3, repeats // 2) if device.type == "cpu" else repeats
    record["layers"] = bench_layers(device, batch, repeats, warmup)
    record["model"] = bench_model(device, batch, model_repeats, warmup)
    record["layers"] += bench_layers(device, 32, repeats, warmup, STUDY_LAYERS, "study")
    record["study_network"] = bench_study_network(device, 32, repeats, warmup)
    record["gan_discriminator"] = bench_gan(device, model_repeats, warmup)
    record["config"].update(study_widths=list(STUDY_WIDTHS), study_batch=32, gan_width=GAN_WIDTH,
                            gan_batch=GAN_BATCH, threads=torch.get_num_threads())
    os.makedirs(RESULTS, exist_ok=True)
    suffix = (f"-{device_slug(label)}" if label else "") + ("-quick" if quick else "")
    path = os.path.join(RESULTS, f"{device_slug(record['device'])}{suffix}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append",
                        help="device(s) to run on (default: cpu, plus cuda when available)")
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke test, not a measurement")
    parser.add_argument("--label", default="", help="a name for this record (kept beside the others), e.g. a code state")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    for d in devices:
        print("wrote", run(torch.device(d), args.quick, args.label))
    from benchmarks.report import write_report

    print("wrote", write_report())


if __name__ == "__main__":
    main()
