"""ConvNorm speed benchmark: per layer (ResNet-18 CIFAR shapes) and the whole train step.

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
from convnorm import ConvNorm2d, convert_convnorm
from convnorm.experiments.models import cifar_resnet18
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


def layer_variants(cin, cout, k, stride) -> Dict[str, Callable[[], nn.Module]]:
    pad = k // 2
    return {
        "conv+bn": lambda: nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout)),
        "public": lambda: PublicConvNorm2d(cin, cout, k, stride, pad),
        "convnorm": lambda: ConvNorm2d(cin, cout, k, stride, pad),
        "convnorm+bn": lambda: nn.Sequential(ConvNorm2d(cin, cout, k, stride, pad), nn.BatchNorm2d(cout)),
        "convnorm[fourier]": lambda: ConvNorm2d(cin, cout, k, stride, pad, algorithm="fourier"),
    }


def model_variants() -> Dict[str, Callable[[], nn.Module]]:
    return {
        "conv+bn": cifar_resnet18,
        "public": lambda: convert_public(cifar_resnet18()),
        "convnorm": lambda: convert_convnorm(cifar_resnet18(), batchnorm="remove"),
        "convnorm+bn": lambda: convert_convnorm(cifar_resnet18()),
        "convnorm[fourier]": lambda: convert_convnorm(cifar_resnet18(), batchnorm="remove", algorithm="fourier"),
    }


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


def bench_layers(device, batch, repeats, warmup) -> List[dict]:
    rows = []
    for cin, cout, k, stride, size in RESNET18_LAYERS:
        torch.manual_seed(0)
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
            times = time_round_robin(steps, repeats, warmup, device)
            base = statistics.median(times["conv+bn"])
            for name in steps:
                med = statistics.median(times[name])
                row = dict(layer=f"{cin}->{cout} k{k} s{stride} @{size}", mode=mode, variant=name,
                           median_ms=1e3 * med, ratio=med / base, repeats=len(times[name]))
                if mode == "train":
                    row["saved_activation_mb"] = saved_activation_bytes(lambda m=modules[name]: m(x.clone().requires_grad_(True))) / 2**20
                if device.type == "cuda":
                    row["peak_memory_mb"] = peak_cuda_bytes(steps[name], device) / 2**20
                rows.append(row)
                print(f"  {row['layer']:>24} {mode:5} {name:18} {row['median_ms']:9.2f} ms  x{row['ratio']:.2f}", flush=True)
    return rows


def bench_model(device, batch, repeats, warmup) -> List[dict]:
    rows = []
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    models = {name: make().to(device) for name, make in model_variants().items()}
    opts = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in models.items()}
    for mode in ("train", "eval"):
        steps = {}
        for name, m in models.items():
            m.train(mode == "train")
            if mode == "train":

                def step(m=m, opt=opts[name]):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(m(x), y).backward()
                    opt.step()

            else:

                def step(m=m):
                    with torch.no_grad():
                        m(x)

            steps[name] = step
        times = time_round_robin(steps, repeats, warmup, device)
        base = statistics.median(times["conv+bn"])
        for name in steps:
            med = statistics.median(times[name])
            row = dict(model="resnet18", mode=mode, variant=name, batch=batch, median_ms=1e3 * med,
                       ratio=med / base, repeats=len(times[name]))
            if mode == "train":
                row["saved_activation_mb"] = saved_activation_bytes(lambda m=models[name]: m(x)) / 2**20
            if device.type == "cuda":
                row["peak_memory_mb"] = peak_cuda_bytes(steps[name], device) / 2**20
            rows.append(row)
            print(f"  resnet18 b{batch} {mode:5} {name:18} {row['median_ms']:9.2f} ms  x{row['ratio']:.2f}", flush=True)
    return rows


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run(device: torch.device, quick: bool, label: str = "") -> str:
    batch = 128 if device.type == "cuda" else 32
    repeats, warmup = (3, 1) if quick else ((25, 5) if device.type == "cuda" else (7, 2))
    record = dict(provenance(device), label=label, config=dict(layer_batch=batch, model_batch=batch, repeats=repeats,
                                                   warmup=warmup, dtype="float32", quick=quick))
    print(f"device: {record['device']}", flush=True)
    record["layers"] = bench_layers(device, batch, repeats, warmup)
    record["model"] = bench_model(device, batch, max(3, repeats // 2) if device.type == "cpu" else repeats, warmup)
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
