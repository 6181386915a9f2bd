"""Training time per epoch of the small ResNet, Conv+BN versus ConvNorm, extrapolated.

Usage:
    python -m benchmarks.epoch_time                    # CPU
    python -m benchmarks.epoch_time --device cuda
    python -m benchmarks.epoch_time --steps 5 --repeats 1 --warmup 1   # smoke test

For each dataset shape (Fashion-MNIST: 60,000 x 1 x 28 x 28; CIFAR-10: 50,000 x 3 x 32 x 32)
and each method, it times ``--steps`` full training steps (forward, cross-entropy,
backward, SGD with momentum) at batch 128 on synthetic tensors of that shape, after
``--warmup`` untimed steps. Methods are timed round-robin within each repeat, so drifting
machine load hits them alike. The epoch time is an extrapolation: the median (over
repeats) time per step times ``ceil(N / batch)`` steps; data loading and augmentation are
not included. The record goes to ``benchmarks/results/small-resnet-epoch-time-<device>.json``
(``<device>`` named as in ``benchmarks.run``: e.g. ``amd-epyc-2-threads``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from typing import Dict, List

import torch
import torch.nn.functional as F

from benchmarks.run import device_slug
from convnorm.experiments.methods import apply_method
from convnorm.experiments.models import build_model
from convnorm.experiments.provenance import provenance

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# name -> (training set size, channels, side)
DATASETS = {"fashion-mnist": (60_000, 1, 28), "cifar10": (50_000, 3, 32)}
METHODS = ("bn", "convnorm", "convnorm+bn")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_dataset(name: str, device: torch.device, batch: int, steps: int, warmup: int, repeats: int) -> List[dict]:
    size, channels, side = DATASETS[name]
    torch.manual_seed(0)
    # A few distinct synthetic batches, cycled: real-sized inputs without holding the whole set.
    xs = torch.randn(4, batch, channels, side, side, device=device)
    ys = torch.randint(0, 10, (4, batch), device=device)
    runs = {}
    for method in METHODS:
        torch.manual_seed(0)
        model = apply_method(build_model("small_resnet", in_channels=channels, num_classes=10), method).model.to(device)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def step(i: int, model=model, opt=opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xs[i % 4]), ys[i % 4]).backward()
            opt.step()

        runs[method] = step
    for fn in runs.values():
        for i in range(warmup):
            fn(i)
    _sync(device)
    per_step: Dict[str, List[float]] = {m: [] for m in METHODS}
    for _ in range(repeats):
        for method, fn in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            for i in range(steps):
                fn(i)
            _sync(device)
            per_step[method].append((time.perf_counter() - t0) / steps)
    steps_per_epoch = math.ceil(size / batch)
    base = statistics.median(per_step["bn"])
    rows = []
    for method in METHODS:
        med = statistics.median(per_step[method])
        rows.append(dict(dataset=name, input=[channels, side, side], train_size=size, method=method,
                         step_ms=1e3 * med, step_ms_all=[1e3 * t for t in per_step[method]],
                         steps_per_epoch=steps_per_epoch, epoch_s=med * steps_per_epoch, ratio_to_bn=med / base))
        print(f"  {name:14} {method:12} {1e3 * med:8.1f} ms/step  {med * steps_per_epoch:7.1f} s/epoch  x{med / base:.2f}",
              flush=True)
    return rows


def markdown_table(rows: List[dict]) -> str:
    lines = ["| dataset | method | ms / step | s / epoch (extrapolated) | ratio to bn |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} ({r['train_size']} x {'x'.join(map(str, r['input']))}) | {r['method']} | "
                     f"{r['step_ms']:.1f} | {r['epoch_s']:.1f} | {r['ratio_to_bn']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    parser.add_argument("--repeats", type=int, default=3, help="the median over repeats is reported")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    record = dict(provenance(device), benchmark="small-resnet-epoch-time",
                  config=dict(model="small_resnet", model_options={}, batch=args.batch_size, steps=args.steps,
                              warmup=args.warmup, repeats=args.repeats, dtype="float32", optimizer="SGD(momentum=0.9)",
                              data="synthetic (torch.randn), 4 batches cycled"),
                  note=("epoch_s = median time per step x ceil(train_size / batch): an extrapolation from "
                        f"{args.steps} timed steps per repeat; no data loading or augmentation"))
    print(f"device: {record['device']}", flush=True)
    record["rows"] = [r for name in DATASETS for r in time_dataset(name, device, args.batch_size, args.steps,
                                                                     args.warmup, args.repeats)]
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"small-resnet-epoch-time-{device_slug(record['device'])}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"\nsmall_resnet (widths 16-32-64, 1 block/stage), batch {args.batch_size}, {record['device']}; "
          f"epoch time extrapolated from the median of {args.repeats} x {args.steps} timed steps:\n")
    print(markdown_table(record["rows"]))
    print("\nwrote", path)


if __name__ == "__main__":
    main()
