"""Per-layer spectral reports of whole networks, as records, tables and charts.

``run_spectral_report`` measures one model (built by name with a method, or loaded from a
checkpoint) and writes a JSON record plus its markdown table; ``chart_spectral_reports``
draws the per-layer comparison chart and table from records only.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from convnorm.experiments.records import new_record, read_json, write_json
from convnorm.spectral import NetworkReport, network_report, plot_layer_norms

__all__ = ["load_model", "run_spectral_report", "chart_spectral_reports", "format_label", "parse_label"]


#: The label of a trained run's spectral record: ``<method>-<labels>-seed<k>``.
_LABEL = re.compile(r"^(?P<method>.+)-(?P<labels>clean|(?:sym|asym)[0-9.]+)-seed(?P<seed>\d+)$")


def format_label(method: str, noise: str, noise_rate: float, seed: int) -> str:
    """The label of a run's spectral record, ``<method>-<labels>-seed<k>``: labels ``clean``,
    or ``sym``/``asym`` and the rate (``sym0.4``); :func:`parse_label` reads it back."""
    labels = "clean" if noise == "none" or noise_rate == 0 else \
        f"{'sym' if noise == 'symmetric' else 'asym'}{noise_rate:g}"
    return f"{method}-{labels}-seed{seed}"


def parse_label(label: str) -> Optional[Dict[str, Any]]:
    """``{"method", "labels", "seed"}`` of a label ``<method>-<labels>-seed<k>``, else None."""
    m = _LABEL.match(label)
    if m is None:
        return None
    return {"method": m["method"], "labels": m["labels"], "seed": int(m["seed"])}


def load_model(checkpoint: str, *, map_location: str = "cpu") -> nn.Module:
    """A model from a file: a pickled ``nn.Module`` or a ``convnorm train`` checkpoint.

    A training checkpoint is a dict with ``config`` (``model``, ``method``, ``in_channels``,
    ``num_classes``, ``model_options``) and ``model`` (its state_dict).
    """
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    obj = torch.load(checkpoint, map_location=map_location, weights_only=False)
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and "config" in obj and "model" in obj:
        cfg = obj["config"]
        model = build_method_model(cfg["model"], cfg["method"], in_channels=cfg["in_channels"],
                                   num_classes=cfg["num_classes"], model_options=cfg.get("model_options") or {})
        model.load_state_dict(obj["model"])
        return model
    raise ValueError(f"{checkpoint!r} holds neither an nn.Module nor a convnorm training checkpoint "
                     f"(a dict with 'config' and 'model')")


def build_method_model(model: str, method: str, *, in_channels: int, num_classes: int,
                       model_options: Optional[dict] = None) -> nn.Module:
    """``build_model(model)`` converted by ``apply_method(method)``."""
    from convnorm.experiments.methods import apply_method
    from convnorm.experiments.models import build_model

    net = build_model(model, in_channels=in_channels, num_classes=num_classes, **(model_options or {}))
    return apply_method(net, method).model


def run_spectral_report(
    out_dir: str,
    *,
    model: str = "resnet18",
    method: str = "plain",
    checkpoint: Optional[str] = None,
    label: Optional[str] = None,
    input_shape: Sequence[int] = (1, 3, 32, 32),
    num_classes: int = 10,
    seed: int = 0,
    isometry: bool = True,
    tol: float = 1e-4,
    max_iter: int = 200,
    lower_bound_inputs: Optional[torch.Tensor] = None,
    data: Optional[str] = None,
) -> str:
    """Measure one network; write ``<out_dir>/<label>.json``, ``<label>.md`` and ``<label>.png``.

    Args:
        out_dir: folder for the record and table.
        model, method: build a freshly initialized model (seeded by ``seed``) by name,
            unless ``checkpoint`` is given.
        checkpoint: a saved ``nn.Module`` or training checkpoint (see :func:`load_model`).
        label: the record's name and legend label (default ``<model>-<method>``).
        input_shape: ``(1, C, H, W)``; each layer is measured at the shape it sees.
        isometry, tol, max_iter: passed to :func:`convnorm.spectral.network_report`.
        lower_bound_inputs: real inputs ``(B, C, H, W)`` (normalized as the model expects)
            for the empirical Lipschitz lower bound.
        data: the dataset those inputs came from (recorded in the config).

    Returns:
        The JSON record's path.
    """
    torch.manual_seed(seed)
    if checkpoint is not None:
        net = load_model(checkpoint)
        source = {"checkpoint": os.path.basename(checkpoint)}
    else:
        net = build_method_model(model, method, in_channels=int(input_shape[1]), num_classes=num_classes)
        source = {"model": model, "method": method, "initialization": "seeded"}
    label = label or (os.path.splitext(os.path.basename(checkpoint))[0] if checkpoint else f"{model}-{method}")
    config = dict(source, label=label, input_shape=list(input_shape), isometry=isometry, tol=tol,
                  max_iter=max_iter, data=data, lower_bound_inputs=0 if lower_bound_inputs is None else len(lower_bound_inputs))
    start = time.perf_counter()
    report = network_report(net, input_shape, inputs=lower_bound_inputs, isometry=isometry, tol=tol, max_iter=max_iter)
    record = new_record("spectral", config, seed=seed, device=torch.device("cpu"))
    record.update(report=report.to_dict(), wall_time_s=time.perf_counter() - start)
    path = write_json(os.path.join(out_dir, f"{label}.json"), record)
    with open(os.path.join(out_dir, f"{label}.md"), "w") as f:
        f.write(report.to_markdown(title=label))
    plot_layer_norms({label: report}, os.path.join(out_dir, f"{label}.png"), title=label)
    return path


def real_inputs(dataset: str, count: int, *, root: Optional[str] = None) -> torch.Tensor:
    """The first ``count`` test images of ``dataset``, normalized: float32 ``(count, C, H, W)``."""
    from convnorm.experiments.data import dataset_stats, load_dataset, normalize

    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    test = load_dataset(dataset, train=False, root=root)
    mean, std = dataset_stats(dataset)
    return normalize(test.images[:count], mean, std)


def chart_spectral_reports(records: Sequence[str], out_dir: str, *, name: str = "comparison",
                           title: str = "Per-layer spectral norms") -> Dict[str, str]:
    """Chart and table comparing several spectral records (generated from records only).

    Writes ``<out_dir>/<name>.png`` (grouped bar chart) and ``<name>.md`` (one column of
    spectral norms per record, then isometry gaps and bounds). Returns both paths.
    """
    if not records:
        raise ValueError("chart_spectral_reports needs at least one record")
    reports: Dict[str, NetworkReport] = {}
    for path in records:
        record = read_json(path)
        if record.get("kind") != "spectral":
            raise ValueError(f"{path} is not a spectral record (kind={record.get('kind')!r})")
        label = record["config"]["label"]
        if label in reports:
            raise ValueError(f"{path}: label {label!r} is used by another record; give each record its own label")
        reports[label] = NetworkReport.from_dict(record["report"])
    labels = list(reports)
    rows: List[List[Dict]] = [r.rows for r in reports.values()]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("the records list different numbers of layers; compare the same architecture")
    os.makedirs(out_dir, exist_ok=True)
    png = plot_layer_norms(reports, os.path.join(out_dir, f"{name}.png"), title=title)
    lines = [f"# {title}", "", "Generated by `convnorm spectral-chart` from: "
             + ", ".join(f"`{os.path.basename(p)}`" for p in records), "",
             "| # | layer | " + " | ".join(f"{l} norm" for l in labels) + " | "
             + " | ".join(f"{l} isometry gap (max)" for l in labels) + " |",
             "|---|---|" + "---|" * (2 * len(labels))]
    for i, first in enumerate(rows[0]):
        norms = [f"{r[i]['spectral_norm']:.4g}" for r in rows]
        gaps = ["—" if r[i].get("isometry_gap_max") is None else f"{r[i]['isometry_gap_max']:.3g}" for r in rows]
        lines.append(f"| {i} | {first['name']} | " + " | ".join(norms) + " | " + " | ".join(gaps) + " |")
    lines += ["", "| bound | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
              "| product of layer norms | " + " | ".join(f"{r.lipschitz_upper:.4g}" for r in reports.values()) + " |"]
    if all(r.lipschitz_lower is not None for r in reports.values()):
        lines.append("| largest input-Jacobian norm | "
                     + " | ".join(f"{r.lipschitz_lower:.4g}" for r in reports.values()) + " |")
    lines += ["", "The product of layer norms bounds a plain chain of these layers; residual connections and "
              "BatchNorm layers are not in it, so for ResNets it is a per-layer comparison index rather "
              "than a certified bound. The isometry gap is max over output channels of ‖QᵢQᵢᵀ − I‖₂ with "
              "the layer's own (zero) padding, so border taps keep it above 0 even for ConvNorm."]
    md = os.path.join(out_dir, f"{name}.md")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"png": png, "markdown": md}
