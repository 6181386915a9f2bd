"""``convnorm report``: markdown tables and plots generated from a folder of records only.

The output depends on the records alone (no dates, no machine state), so running the
command twice on the same records gives byte-identical files. The report is the list
:data:`SECTIONS`, in order; every section is a function ``(folder, fig_dir) -> lines`` that
finds its own records under ``folder``, writes its figures to ``fig_dir`` and returns its
markdown lines, heading included (no lines when it has no records). The classification and
spectra sections are rendered here; the others come from
:mod:`convnorm.experiments.memorisation_report`, :mod:`convnorm.experiments.robust_report`
and :mod:`convnorm.experiments.gan_report`.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from convnorm.experiments import gan_report, memorisation_report, robust_report
from convnorm.experiments.figures import pyplot as _pyplot
from convnorm.experiments.figures import save_figure as _savefig
from convnorm.experiments.memorisation_report import is_memorisation_folder
from convnorm.experiments.records import iter_records
from convnorm.experiments.stats import (CONVNORM_METHODS, SPREAD_FACTOR, SPREAD_FLOOR, format_mean_std,
                                        judge_difference, mean_std)
from convnorm.experiments.stats import method_key as _method_key
from convnorm.experiments.stats import noise_label as _noise_label
from convnorm.experiments.stats import noise_sort_key as _noise_sort
from convnorm.experiments.trained_spectra_report import FOLDER as TRAINED_SPECTRA_FOLDER
from convnorm.experiments.trained_spectra_report import trained_spectra_section

# mean_std and format_mean_std moved to stats.py; they stay importable from here.
__all__ = ["SECTIONS", "build_report", "mean_std", "format_mean_std", "memorisation_onset"]


def _setting(cfg: Dict[str, Any]) -> str:
    """What a table compares methods under: dataset, model, epochs and the other knobs."""
    return (f"{cfg['dataset']}, {cfg['model']}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
            f"lr {cfg['lr']:g} ({cfg['schedule']}), wd {cfg['weight_decay']:g}"
            + (", augmented" if cfg.get("augment") else ""))


def _train_section(records: List[Tuple[str, Dict[str, Any]]], folder: str, fig_dir: str) -> List[str]:
    lines: List[str] = []
    complete = [(p, r) for p, r in records if r.get("status") == "complete"]
    pending = len(records) - len(complete)
    groups: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for _, r in complete:
        groups[_setting(r["config"])].append(r)
    if pending:
        lines += [f"{pending} training run(s) not complete are left out of the tables.", ""]
    for setting in sorted(groups):
        runs = groups[setting]
        slug = "".join(c if c.isalnum() else "-" for c in setting.split(",")[0] + "-" + setting.split(",")[1].strip())
        slug = f"{slug}-{runs[0]['config']['epochs']}ep"
        lines += [f"### {setting}", ""]
        lines += _noise_table(runs)  # each of its tables ends in a blank line
        lines += _difference_table(runs) + [""]
        lines += _reading(runs)
        frac_table = _fraction_table(runs)
        if frac_table:
            lines += frac_table + [""]
        lines += _memorisation_reading(runs)
        plots = _train_plots(runs, fig_dir, slug)
        for title, path in plots:
            lines += [f"![{title}]({os.path.relpath(path, folder)})", ""]
    return lines


def _cells(runs: Iterable[Dict[str, Any]]) -> Tuple[List[float], List[float], int]:
    runs = list(runs)
    return [r["final_test_acc"] for r in runs], [r["best_val_test_acc"] for r in runs], len(runs)


def _noise_table(runs: List[Dict[str, Any]]) -> List[str]:
    """Methods x noise settings, for each training fraction that has noisy runs."""
    out: List[str] = []
    by_frac: Dict[float, List[Dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_frac[r["config"]["train_fraction"]].append(r)
    for frac in sorted(by_frac, reverse=True):
        rs = by_frac[frac]
        noises = sorted({_noise_label(r["config"]) for r in rs}, key=_noise_sort)
        if noises == ["clean"] and frac != max(by_frac):
            continue  # clean runs on a smaller fraction belong to the scarcity table
        methods = sorted({r["config"]["method"] for r in rs}, key=_method_key)
        out += [f"Test accuracy (%) under label noise, {frac * 100:g}% of the training set: "
                "final epoch / best-validation epoch, mean ± std over seeds (n seeds).", "",
                "| method | " + " | ".join(noises) + " |", "|---|" + "---|" * len(noises)]
        for m in methods:
            cells = []
            for noise in noises:
                final, best, n = _cells(r for r in rs if r["config"]["method"] == m and _noise_label(r["config"]) == noise)
                cells.append("—" if n == 0 else f"{format_mean_std(final)} / {format_mean_std(best)} ({n})")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _condition(r: Dict[str, Any]) -> str:
    cfg = r["config"]
    frac = "" if cfg["train_fraction"] == 1 else f", {cfg['train_fraction'] * 100:g}% data"
    return _noise_label(cfg) + frac


def _conditions(runs: List[Dict[str, Any]]) -> List[str]:
    """The runs' conditions (noise, then data fraction), clean first."""
    return sorted({_condition(r) for r in runs}, key=lambda c: (_noise_sort(c.split(",")[0]), c))


def _final_accuracies(runs: List[Dict[str, Any]], method: str, condition: str) -> List[float]:
    return [r["final_test_acc"] for r in runs if r["config"]["method"] == method and _condition(r) == condition]


def _difference_table(runs: List[Dict[str, Any]]) -> List[str]:
    """Each method's final test accuracy minus BN's, next to the seed-to-seed spread."""
    if not any(r["config"]["method"] == "bn" for r in runs):
        return []
    methods = [m for m in sorted({r["config"]["method"] for r in runs}, key=_method_key) if m != "bn"]
    if not methods:
        return []
    out = ["Final test accuracy minus BN's (percentage points), with the larger of the two seed standard "
           "deviations in brackets (— with one seed): a difference well inside the bracket is not a difference.",
           "", "| condition | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for cond in _conditions(runs):
        cells = []
        for m in methods:
            base, acc = _final_accuracies(runs, "bn", cond), _final_accuracies(runs, m, cond)
            if not acc or not base:
                cells.append("—")
                continue
            (mb, sb), (mm, sm) = mean_std(base), mean_std(acc)
            spreads = [x for x in (sb, sm) if not math.isnan(x)]
            spread = f"{max(spreads) * 100:.2f}" if spreads else "—"
            cells.append(f"{(mm - mb) * 100:+.2f} ({spread})")
        out.append(f"| {cond} | " + " | ".join(cells) + " |")
    return out


def _verdicts(runs: List[Dict[str, Any]], method: str) -> List[Tuple[str, str, float]]:
    """(condition, verdict, difference in points) of ``method``'s final test accuracy against
    BN's, per condition both ran, by :func:`~convnorm.experiments.stats.judge_difference`."""
    out = []
    for cond in _conditions(runs):
        base, acc = _final_accuracies(runs, "bn", cond), _final_accuracies(runs, method, cond)
        if base and acc:
            verdict, diff = judge_difference(base, acc)
            out.append((cond, verdict, diff * 100))
    return out


def _reading(runs: List[Dict[str, Any]]) -> List[str]:
    """A generated reading of the difference table: where each method beats BN, and by how much."""
    methods = [m for m in sorted({r["config"]["method"] for r in runs}, key=_method_key) if m != "bn"]
    if not any(r["config"]["method"] == "bn" for r in runs) or not methods:
        return []
    out = [f"Reading (generated): a method reads higher or lower than BN in a condition when its mean final "
           f"test accuracy differs by more than {SPREAD_FACTOR:g} times the larger seed standard deviation (at "
           f"least {SPREAD_FLOOR * 100:g} points); otherwise the difference is within the seed spread. Conditions "
           "where either side has one seed are not judged. With two seeds a side this is a screen, not a "
           "significance test.", ""]
    for m in methods:
        verdicts = _verdicts(runs, m)
        if not verdicts:
            continue
        parts = []
        for kind in ("higher", "lower", "within spread", "one seed"):
            conds = [f"{c} ({d:+.2f})" for c, v, d in verdicts if v == kind]
            if conds:
                parts.append(f"{kind} in {len(conds)}: " + ", ".join(conds))
        out.append(f"- {m} against bn, {len(verdicts)} condition(s): " + "; ".join(parts) + ".")
    tested = [(m, v) for m in CONVNORM_METHODS for v in _verdicts(runs, m)
              if v[0] != "clean"]
    claims = [(m, v) for m, v in tested if v[1] in ("higher", "lower")]
    if claims:
        agree = [f"{m} at {c}" for m, (c, v, _) in claims if v == "higher"]
        disagree = [f"{m} at {c}" for m, (c, v, _) in claims if v == "lower"]
        others = len(tested) - len(claims)
        out += ["", "The paper claims ConvNorm beats BN under label noise and with scarce data. Beyond the seed "
                "spread, these records side with it for " + (", ".join(agree) if agree else "no condition")
                + " and against it for " + (", ".join(disagree) if disagree else "no condition")
                + (f"; {others} other noisy or scarce comparison(s) are within the spread or have one seed"
                   if others else "") + "."]
    return out + [""]


#: Memorisation counts as set in once the fraction of noisy labels fitted rises this far (a
#: fraction, so 1 percentage point) above its lowest earlier value: the network has started to
#: fit noisy labels it had been ignoring.
MEMORISATION_RISE = 0.01


def memorisation_onset(fitted: Sequence[float], rise: float = MEMORISATION_RISE) -> Optional[int]:
    """The first epoch at which memorisation of noisy labels sets in, or None if it never does.

    Args:
        fitted: per epoch, the fraction in [0, 1] of noisy-labelled training samples that the
            model predicts with their noisy label (the records' ``memorized_noisy``).
        rise: how far above its lowest earlier value the fraction must climb to count.

    Returns:
        The 1-based epoch whose fraction exceeds the minimum over the earlier epochs by more
        than ``rise``; None if no epoch does.
    """
    lowest = math.inf
    for epoch, value in enumerate(fitted, 1):
        if value > lowest + rise:
            return epoch
        lowest = min(lowest, value)
    return None


def _memorisation_reading(runs: List[Dict[str, Any]]) -> List[str]:
    """Per noisy condition: how much noise the runs fit after the first and last epoch, and
    which runs (if any) start memorising it."""
    noisy = [r for r in runs if _noise_label(r["config"]) != "clean" and r["epochs"]
             and all(e.get("memorized_noisy") is not None for e in r["epochs"])]
    if not noisy:
        return []
    out = ["Memorisation (generated): the fraction of noisy-labelled training samples that the model predicts "
           "with their noisy label, after the first and after the last epoch (lowest–highest over runs). "
           f"Memorisation counts as set in at the first epoch where that fraction exceeds its lowest earlier "
           f"value by more than {MEMORISATION_RISE * 100:g} point(s).", ""]
    for cond in _conditions(noisy):
        rs = sorted((r for r in noisy if _condition(r) == cond),
                    key=lambda r: (_method_key(r["config"]["method"]), r["config"]["seed"]))
        first = [r["epochs"][0]["memorized_noisy"] * 100 for r in rs]
        last = [r["epochs"][-1]["memorized_noisy"] * 100 for r in rs]
        onsets = [(r, memorisation_onset([e["memorized_noisy"] for e in r["epochs"]])) for r in rs]
        started = [f"{r['config']['method']} seed {r['config']['seed']} at epoch {e}" for r, e in onsets if e]
        out.append(f"- {cond}, {len(rs)} run(s): {min(first):.1f}–{max(first):.1f}% after epoch 1, "
                   f"{min(last):.1f}–{max(last):.1f}% after epoch {len(rs[0]['epochs'])}; memorisation sets in "
                   + (f"for {len(started)}: " + ", ".join(started) if started else "for none") + ".")
    return out + [""]


def _fraction_table(runs: List[Dict[str, Any]]) -> List[str]:
    clean = [r for r in runs if _noise_label(r["config"]) == "clean"]
    fracs = sorted({r["config"]["train_fraction"] for r in clean})
    if len(fracs) < 2:
        return []
    methods = sorted({r["config"]["method"] for r in clean}, key=_method_key)
    out = ["Test accuracy (%) with clean labels and a per-class fraction of the training set: "
           "final epoch / best-validation epoch, mean ± std over seeds (n seeds).", "",
           "| method | " + " | ".join(f"{f * 100:g}%" for f in fracs) + " |", "|---|" + "---|" * len(fracs)]
    for m in methods:
        cells = []
        for f in fracs:
            final, best, n = _cells(r for r in clean if r["config"]["method"] == m and r["config"]["train_fraction"] == f)
            cells.append("—" if n == 0 else f"{format_mean_std(final)} / {format_mean_std(best)} ({n})")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return out


def _train_plots(runs: List[Dict[str, Any]], fig_dir: str, slug: str) -> List[Tuple[str, str]]:
    plt = _pyplot()
    plots: List[Tuple[str, str]] = []
    full = [r for r in runs if r["config"]["train_fraction"] == max(x["config"]["train_fraction"] for x in runs)]
    sym = [r for r in full if r["config"]["noise"] in ("none", "symmetric")]
    rates = sorted({r["config"]["noise_rate"] for r in sym})
    methods = sorted({r["config"]["method"] for r in sym}, key=_method_key)
    if len(rates) >= 2:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        for m in methods:
            xs, ys, es = [], [], []
            for rate in rates:
                acc = [r["final_test_acc"] for r in sym if r["config"]["method"] == m and r["config"]["noise_rate"] == rate]
                if acc:
                    mean, std = mean_std(acc)
                    xs.append(rate * 100)
                    ys.append(mean * 100)
                    es.append(0.0 if math.isnan(std) else std * 100)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
        ax.set_xlabel("symmetric label noise (%)")
        ax.set_ylabel("final test accuracy (%)")
        ax.legend()
        plots.append(("accuracy versus noise", _savefig(fig, os.path.join(fig_dir, f"{slug}-accuracy-vs-noise.png"))))
    noisy = [r for r in sym if r["config"]["noise_rate"] > 0]
    if noisy:
        worst = max(r["config"]["noise_rate"] for r in noisy)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
        for m in methods:
            rs = [r for r in noisy if r["config"]["method"] == m and r["config"]["noise_rate"] == worst]
            if not rs:
                continue
            n_ep = min(len(r["epochs"]) for r in rs)
            epochs = list(range(1, n_ep + 1))
            test = [sum(r["epochs"][i]["test_acc"] for r in rs) / len(rs) * 100 for i in range(n_ep)]
            mem = [sum(r["epochs"][i]["memorized_noisy"] or 0 for r in rs) / len(rs) * 100 for i in range(n_ep)]
            ax1.plot(epochs, test, marker=".", label=m)
            ax2.plot(epochs, mem, marker=".", label=m)
        for ax in (ax1, ax2):
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax1.set_ylabel("clean test accuracy (%)")
        ax2.set_ylabel("noisy training labels fitted (%)")
        ax1.set_title(f"symmetric noise {worst * 100:g}%")
        ax2.set_title("memorisation of noisy labels")
        ax1.legend()
        plots.append(("training curves", _savefig(fig, os.path.join(fig_dir, f"{slug}-training-curves.png"))))
    return plots


def _spectral_section(folder: str) -> List[str]:
    from convnorm.experiments.spectral_study import chart_spectral_reports

    lines: List[str] = []
    by_dir: Dict[str, List[str]] = defaultdict(list)
    for path, _ in iter_records(folder, kind="spectral"):
        if os.path.basename(os.path.dirname(path)) != TRAINED_SPECTRA_FOLDER:  # that folder has its own view
            by_dir[os.path.dirname(path)].append(path)
    for d in sorted(by_dir):
        paths = by_dir[d]
        out = chart_spectral_reports(paths, d, name="comparison", title=f"Per-layer spectral norms: {os.path.basename(d)}")
        lines += [f"### {os.path.relpath(d, folder)}", "",
                  f"Table: [{os.path.relpath(out['markdown'], folder)}]({os.path.relpath(out['markdown'], folder)})", "",
                  f"![spectral norms]({os.path.relpath(out['png'], folder)})", ""]
    return lines


def classification_section(folder: str, fig_dir: str) -> List[str]:
    """Training records outside ``memorisation-*`` folders: label noise and scarce data."""
    records = [(path, record) for path, record in iter_records(folder, kind="train")
               if not is_memorisation_folder(os.path.abspath(path))]
    if not records:
        return []
    return ["## Classification under label noise and scarce data", ""] + _train_section(records, folder, fig_dir)


def spectra_section(folder: str, fig_dir: str) -> List[str]:
    """Spectral records: one chart per folder, and the trained networks' view."""
    lines = _spectral_section(folder) + trained_spectra_section(folder, fig_dir)
    return ["## Layer spectra", ""] + lines if lines else []


#: The report, in order: each section ``(folder, fig_dir) -> markdown lines``.
SECTIONS: Tuple[Callable[[str, str], List[str]], ...] = (
    classification_section,
    memorisation_report.report_section,
    robust_report.report_section,
    gan_report.report_section,
    spectra_section,
)


def build_report(folder: str = "results", *, preamble: Optional[str] = None) -> str:
    """Write ``<folder>/README.md`` (and figures under ``<folder>/figures/``) from the records
    under ``folder``; returns the markdown path.

    Args:
        folder: a folder of JSON records (searched recursively).
        preamble: markdown placed after the title; default: the contents of
            ``<folder>/PREAMBLE.md`` if it exists (a written reading of the tables).
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no records folder {folder!r}")
    fig_dir = os.path.join(folder, "figures")
    lines = ["# Results", "", "Generated by `convnorm report` from the JSON records in this folder; "
             "do not edit by hand.", ""]
    if preamble is None and os.path.exists(os.path.join(folder, "PREAMBLE.md")):
        with open(os.path.join(folder, "PREAMBLE.md")) as f:
            preamble = f.read()
    if preamble:
        lines += [preamble.rstrip(), ""]
    for section in SECTIONS:
        lines += section(folder, fig_dir)
    path = os.path.join(folder, "README.md")
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    return path

