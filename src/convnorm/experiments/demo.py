"""``convnorm demo``: the first run a new user makes, BN against the paper's block.

The paper's block is ConvNorm followed by BatchNorm, exactly as its public code builds it
(method ``convnorm-paper``: what that code calls "ConvNorm"). The demo trains the small ResNet
with BN and with that block, on real Fashion-MNIST, with
clean labels and with heavy symmetric label noise (one seed each, resumable like every run),
then prints a table, the plot's path, and one line that reads the numbers. Everything
printed is computed from the run records.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from convnorm.experiments.figures import pyplot, save_figure
from convnorm.experiments.train import preset, train

__all__ = ["DEMO_METHODS", "DEMO_NOISE_RATES", "demo_configs", "run_demo", "demo_table", "demo_reading", "demo_plot"]

#: BN first (the baseline), then the paper's block.
DEMO_METHODS: Tuple[str, ...] = ("bn", "convnorm-paper")
_BLOCK = DEMO_METHODS[1]
#: Clean labels, then heavy symmetric noise.
DEMO_NOISE_RATES: Tuple[float, ...] = (0.0, 0.6)

_LABELS = {"bn": "BN", "convnorm-paper": "ConvNorm+BN (paper)", "convnorm+bn": "ConvNorm+BN", "convnorm": "ConvNorm"}


def _label(method: str) -> str:
    return _LABELS.get(method, method)


def _condition(rate: float) -> str:
    return "clean labels" if rate == 0 else f"{rate * 100:g}% symmetric noise"


def demo_configs(methods: Sequence[str] = DEMO_METHODS, noise_rates: Sequence[float] = DEMO_NOISE_RATES,
                 **overrides):
    """The demo's runs: the ``demo`` preset for every (noise rate, method), noise-major."""
    return [preset("demo", method=m, noise="symmetric" if rate else "none", noise_rate=rate, **overrides)
            for rate in noise_rates for m in methods]


class _TimeEstimate:
    """The demo's expected total time, from the epochs measured so far.

    Each method's epoch time is its first measured epoch; a method not measured yet is
    counted at the fastest measured one (a floor, and said to be one).
    """

    def __init__(self, configs, log: Callable[[str], None]) -> None:
        self.epochs = [(c.method, c.epochs) for c in configs]
        self.log = log
        self.seconds: Dict[str, float] = {}
        self.start = time.perf_counter()

    def epoch_done(self, method: str, row: Dict[str, Any]) -> None:
        if method in self.seconds:
            return
        self.seconds[method] = row["time_s"]
        known = min(self.seconds.values())
        total = sum(self.seconds.get(m, known) * n for m, n in self.epochs)
        unmeasured = sorted({m for m, _ in self.epochs} - set(self.seconds))
        if unmeasured:
            self.log(f"demo: estimated total at least {_duration(total)} ({_label(method)} epochs take "
                     f"{row['time_s']:.0f} s; {', '.join(_label(m) for m in unmeasured)} measured next)")
        else:
            self.log(f"demo: estimated total {_duration(total)} (every method's epoch measured)")

    def finished(self) -> None:
        self.log(f"demo: finished in {_duration(time.perf_counter() - self.start)}")


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def run_demo(*, out_dir: str, checkpoint_dir: str, methods: Sequence[str] = DEMO_METHODS,
             noise_rates: Sequence[float] = DEMO_NOISE_RATES, log: Callable[[str], None] = print,
             **overrides) -> List[Dict[str, Any]]:
    """Train (or resume, or return) every demo run; returns their records in order.

    Logs an estimate of the total time after the first epoch (refined once every method's
    epoch has been measured) and the elapsed time at the end.
    """
    configs = demo_configs(methods, noise_rates, **overrides)
    clock = _TimeEstimate(configs, log)
    records = [train(config, out_dir=out_dir, checkpoint_dir=checkpoint_dir, log=log,
                     on_epoch=lambda row, method=config.method: clock.epoch_done(method, row))
               for config in configs]
    clock.finished()
    return records


def _final(records: Sequence[Dict[str, Any]], method: str, rate: float) -> Optional[float]:
    for r in records:
        if r["config"]["method"] == method and r["config"]["noise_rate"] == rate:
            return r["final_test_acc"]
    return None


def _methods_and_rates(records: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[float]]:
    methods = list(dict.fromkeys(r["config"]["method"] for r in records))
    rates = sorted({r["config"]["noise_rate"] for r in records})
    return methods, rates


def demo_table(records: Sequence[Dict[str, Any]]) -> List[str]:
    """Markdown table: final test accuracy (%) per method and label condition."""
    methods, rates = _methods_and_rates(records)
    lines = ["| method | " + " | ".join(_condition(r) for r in rates) + " |",
             "|---|" + "---:|" * len(rates)]
    for m in methods:
        cells = []
        for rate in rates:
            acc = _final(records, m, rate)
            cells.append("—" if acc is None else f"{acc * 100:.2f}")
        lines.append(f"| {_label(m)} | " + " | ".join(cells) + " |")
    return lines


def demo_reading(records: Sequence[Dict[str, Any]]) -> str:
    """One sentence that reads the table: the paper's block against BN, per condition."""
    parts = []
    for rate in _methods_and_rates(records)[1]:
        bn, block = _final(records, "bn", rate), _final(records, _BLOCK, rate)
        if bn is None or block is None:
            continue
        diff = round((block - bn) * 100, 2)  # as printed: 0.001 points reads as level
        verb = "above" if diff > 0 else "below" if diff < 0 else "level with"
        gap = "" if diff == 0 else f"{abs(diff):.2f} points "
        parts.append(f"with {_condition(rate)} the paper's ConvNorm+BN ends at {block * 100:.2f}%, {gap}{verb} "
                     f"BN ({bn * 100:.2f}%)")
    if not parts:
        return "No pair of BN and the paper's ConvNorm+BN finished, so there is nothing to compare yet."
    epochs = records[0]["config"]["epochs"]
    text = "; ".join(parts)
    return (f"Reading: {text[0].upper()}{text[1:]}. One seed and {epochs} epochs each, so this is a first look, "
            "not a verdict: results/README.md gives multi-seed studies with their seed-to-seed spread.")


def demo_plot(records: Sequence[Dict[str, Any]], path: str) -> str:
    """Test accuracy per epoch, one panel per label condition; returns ``path`` (PNG)."""
    methods, rates = _methods_and_rates(records)
    fig, axes = pyplot().subplots(1, len(rates), figsize=(4.6 * len(rates), 3.4), squeeze=False, sharey=True)
    for ax, rate in zip(axes[0], rates):
        for m in methods:
            for r in records:
                if r["config"]["method"] == m and r["config"]["noise_rate"] == rate:
                    epochs = [row["epoch"] for row in r["epochs"]]
                    ax.plot(epochs, [row["test_acc"] * 100 for row in r["epochs"]], marker="o", label=_label(m))
        ax.set_title(_condition(rate))
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    part = records[0]["data"].get("test_part_size")
    axes[0][0].set_ylabel("test accuracy (%)" + (f", {part:,} test images" if part else ""))
    axes[0][0].legend()
    return save_figure(fig, path)
