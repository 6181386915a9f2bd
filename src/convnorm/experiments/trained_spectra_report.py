"""Trained layer spectra of the memorisation study beside the values of the paper's figure.

The paper shows the per-layer spectral norms of a trained ResNet-18 on CIFAR-10: the
convolutions of the vanilla (BatchNorm) network range over about 5 to 18.7, the ConvNorm
layers over about 3.2 to 8.7 (:data:`PAPER_TRAINED_NORMS`, read off that figure). This
module sets beside those ranges the norms measured (``convnorm spectral --checkpoint``) on the
final checkpoints of this project's memorisation study, from the records alone:

* a table per run: method, labels, the smallest, median and largest conv-layer norm, and the
  classifier's;
* a chart of every conv layer's norm, in forward order, one line per run, over shaded
  bands for the paper's two ranges;
* the training setting of each run, read from its own training record, and what the
  measurement includes.

Spectral records belong here when they lie in a folder named :data:`FOLDER` and their label
reads ``<method>-<labels>-seed<k>`` (as ``bn-sym0.4-seed0``).
"""
from __future__ import annotations

import os
import statistics
from typing import Any, Dict, List, Tuple

from convnorm.experiments.figures import pyplot, save_figure
from convnorm.experiments.memorisation_report import setting_text
from convnorm.experiments.published import PAPER_TRAINED_NORMS
from convnorm.experiments.records import iter_records
from convnorm.experiments.spectral_study import parse_label
from convnorm.experiments.stats import method_key

__all__ = ["FOLDER", "trained_spectra_section"]

#: Where the spectral records of the study's trained networks go.
FOLDER = "memorisation-trained"

# Which of the paper's ranges a method's conv layers compare with.
_PAPER_KIND = {"bn": "vanilla conv (BN network)", "convnorm-paper": "ConvNorm", "convnorm+bn": "ConvNorm",
               "convnorm": "ConvNorm"}
_COLOURS = {"vanilla conv (BN network)": "tab:blue", "ConvNorm": "tab:orange"}


def _training_records(folder: str) -> Dict[str, Dict[str, Any]]:
    """Training records under ``folder`` by file name (a run's record and final checkpoint
    share the run's name)."""
    return {os.path.basename(path): record for path, record in iter_records(folder, kind="train")}


def _runs(folder: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The view's runs, and the labels of records it cannot show (with why).

    Reads each spectral record's ``config`` (``label``, ``checkpoint``, ``input_shape``) and
    ``report.rows`` (``type``, ``spectral_norm``, ``converged``, ``input_shape``).
    """
    training = _training_records(folder)
    runs, skipped = [], []
    for path, record in iter_records(folder, kind="spectral"):
        if os.path.basename(os.path.dirname(path)) != FOLDER:
            continue
        config = record["config"]
        parsed = parse_label(config["label"])
        if parsed is None:
            continue
        checkpoint = os.path.basename(config.get("checkpoint") or "")
        if not checkpoint or checkpoint.endswith(".best.pt"):
            skipped.append(f"{config['label']} (not measured on a run's final checkpoint)")
            continue
        rows = record["report"]["rows"]
        convs = [r for r in rows if r["type"] != "Linear"]
        if not convs:
            skipped.append(f"{config['label']} (no conv layers)")
            continue
        linear = [r["spectral_norm"] for r in rows if r["type"] == "Linear"]
        runs.append(dict(parsed, label=config["label"], convs=convs, classifier=linear[-1] if linear else None,
                         input_shape=config.get("input_shape"),
                         training=training.get(os.path.splitext(checkpoint)[0] + ".json")))
    runs.sort(key=lambda r: (r["labels"] != "clean", r["labels"], method_key(r["method"]), r["seed"]))
    return runs, skipped


def _chart(runs: List[Dict[str, Any]], path: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for kind, (low, high) in PAPER_TRAINED_NORMS.items():
        ax.axhspan(low, high, color=_COLOURS[kind], alpha=0.12, label=f"paper, {kind}: {low:g}–{high:g}")
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    conditions = sorted({r["labels"] for r in runs}, key=lambda c: (c != "clean", c))
    methods = sorted({r["method"] for r in runs}, key=method_key)
    for r in runs:
        kind = _PAPER_KIND.get(r["method"])
        ax.plot(range(len(r["convs"])), [c["spectral_norm"] for c in r["convs"]],
                marker=markers[methods.index(r["method"]) % len(markers)], markersize=3,
                linestyle=styles[conditions.index(r["labels"]) % len(styles)],
                color=_COLOURS.get(kind, "tab:gray"), label=r["label"])
    ax.set_xticks(range(max(len(r["convs"]) for r in runs)))
    ax.set_xlabel("conv layer, in forward order (shortcut 1x1 convs included)")
    ax.set_ylabel("spectral norm")
    ax.set_title("Trained ResNet-18 (memorisation study) against the paper's figure")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def _sizes(runs: List[Dict[str, Any]]) -> str:
    """The network input and the spatial sizes its conv layers see,
    e.g. ``1x3x32x32 input (the layers see 32x32 down to 4x4)``."""
    inputs = sorted({"x".join(map(str, r["input_shape"])) for r in runs if r["input_shape"]})
    spatial = [tuple(c["input_shape"][2:]) for r in runs for c in r["convs"] if c.get("input_shape")]
    text = (" and ".join(inputs) if inputs else "recorded") + " input"
    if spatial:
        big, small = max(spatial), min(spatial)
        text += f" (the layers see {'x'.join(map(str, big))} down to {'x'.join(map(str, small))})"
    return text


def trained_spectra_section(folder: str, fig_dir: str) -> List[str]:
    """Markdown lines of the view (empty without such records); the chart goes to ``fig_dir``."""
    runs, skipped = _runs(folder)
    if not runs and not skipped:
        return []
    lines = ["### Trained layer spectra beside the paper's figure", ""]
    if skipped:
        lines += ["Left out: " + "; ".join(skipped) + ".", ""]
    if not runs:
        return lines
    seeds = ", ".join(str(s) for s in sorted({r["seed"] for r in runs}))
    lines += [f"Spectral norm of every conv layer of the study's final networks (seed {seeds}), measured with "
              "`convnorm spectral --checkpoint`, beside the ranges read off the paper's figure of a trained "
              "ResNet-18 on CIFAR-10. A norm marked * did not converge within its power-iteration cap.", "",
              "| run | method | labels | conv layers | smallest | median | largest | classifier | paper's range |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]

    def shown(row: Dict[str, Any]) -> str:
        return f"{row['spectral_norm']:.2f}" + ("" if row.get("converged", True) else "*")

    for r in runs:
        by_norm = sorted(r["convs"], key=lambda c: c["spectral_norm"])
        middle = statistics.median(c["spectral_norm"] for c in by_norm)
        kind = _PAPER_KIND.get(r["method"])
        paper = f"{kind}: {PAPER_TRAINED_NORMS[kind][0]:g}–{PAPER_TRAINED_NORMS[kind][1]:g}" if kind else "—"
        classifier = "—" if r["classifier"] is None else f"{r['classifier']:.2f}"
        lines.append(f"| {r['label']} | {r['method']} | {r['labels']} | {len(by_norm)} | {shown(by_norm[0])} | "
                     f"{middle:.2f} | {shown(by_norm[-1])} | {classifier} | {paper} |")
    png = _chart(runs, os.path.join(fig_dir, "memorisation-trained-spectra.png"))
    lines += ["", f"![trained spectra beside the paper's ranges]({os.path.relpath(png, folder)})", ""]
    settings = sorted({setting_text(r["training"]["config"]) for r in runs if r["training"] is not None})
    missing = [r["label"] for r in runs if r["training"] is None]
    here = "; ".join(settings) if settings else "no training record of these checkpoints is here"
    if settings and missing:
        here += f" (no training record here for {', '.join(missing)})"
    lines += ["How the settings differ. The paper's figure: its ResNet-18 at full width (64–512 channels), "
              f"trained on the whole CIFAR-10 training set in its own schedule. Here: {here}. Each norm is of "
              f"a layer's linear map at the input size it sees in a forward pass of a {_sizes(runs)}, "
              "with its own padding and stride, by power iteration in eval mode. A ConvNorm layer is "
              "measured whole: the convolution, its normalization by v̂ (convnorm-paper: the running v̂ it "
              "uses in eval), and its affine kernel; the BatchNorm after a layer is not in any norm, for "
              "either method. The paper's own measurement (with or without the affine kernel, at which "
              "input size) is not reproduced here, so the ranges compare the scale of the numbers, not "
              "layer for layer.", ""]
    return lines
