"""The memorisation view of the report: long training in which networks fit noisy labels.

The paper's label-noise claim lives where a network starts to memorise: BN's test accuracy
peaks, then falls as it fits the noisy labels, and ConvNorm is said to hold on. For every
folder ``memorisation-*`` of records (a study, or its pilot) this module renders, from the
records alone:

* per method and label condition, mean ± sample std over seeds of the best test accuracy
  over the epochs, the final one, the drop from best to final (all three on the part of the
  test set scored every epoch), the final accuracy on the whole test set, and the fraction of
  noisy training labels fitted in the last epoch, with the first epoch in which more than
  :data:`FIT_MEMORISED` of them were fitted (how soon a run memorises; both counted as the
  batches train);
* per method and condition, the difference to BN (paired by seed) beside the seed spread of
  BN itself;
* curves of test accuracy and of noisy-label fit per epoch (mean over seeds, band min–max);
* a reading: per noisy condition, which runs memorise by both measures
  (:data:`FIT_MEMORISED`, :data:`DROP_MEMORISED`); per condition (clean labels as the
  control), whether each method's final accuracy and drop read above or below BN's beyond
  the seed spread, on the seeds both ran (:func:`~convnorm.experiments.stats.judge_difference`,
  the rule the label-noise view uses); and what that says of the paper's claim under noise,
  first as it stands and then net of each method's lead over BN on clean labels (the
  difference of the two leads, per seed), since a lead that shows on clean labels too is not
  robustness to noise; and how soon each method memorises against BN (the epoch it first fits
  more than :data:`FIT_MEMORISED` of its noisy labels, and the labels it has fitted when the
  learning rate first steps down).
"""
from __future__ import annotations

import hashlib
import math
import os
import textwrap
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

from convnorm.experiments.records import iter_records
from convnorm.experiments.figures import pyplot, save_figure
from convnorm.experiments.stats import (CONVNORM_METHODS, SPREAD_FACTOR, SPREAD_FLOOR, format_mean_std,
                                        judge_difference, mean_std)
from convnorm.experiments.stats import method_key as _method_key
from convnorm.experiments.stats import noise_label as _condition
from convnorm.experiments.stats import noise_sort_key as _condition_key

__all__ = ["FIT_MEMORISED", "DROP_MEMORISED", "FIT_EPOCH_FLOOR", "is_memorisation_folder", "report_section", "run_summary",
           "memorisation_section", "setting_text"]

#: A run memorises when it ends fitting more than this fraction of its noisy training labels
FIT_MEMORISED = 0.5
#: ... and its final test accuracy is at least this far (a fraction) below its best.
DROP_MEMORISED = 0.05
#: The least seed spread (epochs) a difference in the epoch of crossing FIT_MEMORISED is judged
#: against: the measure counts whole epochs.
FIT_EPOCH_FLOOR = 1.0


def is_memorisation_folder(path: str) -> bool:
    """Records in a folder named ``memorisation-*`` (at any depth) belong to this view."""
    return any(part.startswith("memorisation-") for part in os.path.normpath(path).split(os.sep))


def run_summary(record: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """The memorisation numbers of one complete run (fractions in [0, 1]).

    ``best``/``final``: best and last per-epoch test accuracy (the part of the test set scored
    every epoch); ``drop = best - final``; ``final_full``: the last epoch on the whole test set;
    ``fit``: noisy training labels fitted in the last epoch (None for clean labels); ``best_epoch``;
    ``fit_epoch``: the first epoch (1-based) in which more than :data:`FIT_MEMORISED` of the noisy
    labels were fitted (None for clean labels, or if no epoch does): how soon a run memorises;
    ``fit_before_step``: the noisy labels fitted in the last epoch at the first learning rate of
    a step schedule (epoch ``milestones[0]``; None for clean labels, other schedules, or a run
    that ends before it). All count a noisy label as fitted when the training-mode network
    predicts it as its batch trains (the record's ``memorized_noisy``), not in a separate pass
    at the epoch's end.
    """
    rows, cfg = record["epochs"], record["config"]
    accs = [row["test_acc"] for row in rows]
    best = max(accs)
    fit_epoch = next((float(i + 1) for i, row in enumerate(rows)
                      if row.get("memorized_noisy") is not None and row["memorized_noisy"] > FIT_MEMORISED), None)
    step = cfg["milestones"][0] if cfg.get("schedule") == "step" and cfg.get("milestones") else None
    fit_before_step = rows[step - 1].get("memorized_noisy") if step is not None and 0 < step <= len(rows) else None
    return dict(best=best, final=accs[-1], drop=best - accs[-1], final_full=record["final_test_acc"],
                fit=rows[-1].get("memorized_noisy"), best_epoch=float(accs.index(best) + 1), fit_epoch=fit_epoch,
                fit_before_step=fit_before_step)


def _memorises(s: Dict[str, Optional[float]]) -> bool:
    return s["fit"] is not None and s["fit"] > FIT_MEMORISED and s["drop"] >= DROP_MEMORISED


def setting_text(cfg: Dict[str, Any]) -> str:
    """One line describing a training config: data, model, schedule, regularisation."""
    widths = cfg.get("model_options", {}).get("widths")
    model = cfg["model"] + (f" (widths {'-'.join(map(str, widths))})" if widths else "")
    return (f"{cfg['dataset']} {cfg['train_fraction'] * 100:g}%, {model}, {cfg['epochs']} epochs, batch "
            f"{cfg['batch_size']}, lr {cfg['lr']:g} ({cfg['schedule']}"
            + (f" at {'/'.join(map(str, cfg['milestones']))}" if cfg["schedule"] == "step" else "")
            + f"), wd {cfg['weight_decay']:g}" + (", augmented" if cfg.get("augment") else ", no augmentation"))


def _summary_table(runs: List[Dict[str, Any]], part: int) -> List[str]:
    methods = sorted({r["config"]["method"] for r in runs}, key=_method_key)
    conditions = sorted({_condition(r["config"]) for r in runs}, key=_condition_key)
    out = [f"Test accuracy (%): best over the epochs, final, and the drop from best to final, on the fixed "
           f"{part:,}-image part of the test set scored every epoch; final on all of the test set; noisy "
           f"training labels fitted in the last epoch (%), and the first epoch in which more than "
           f"{FIT_MEMORISED * 100:g}% of them were fitted (how soon a run memorises); both counted as each batch "
           "trains. Mean ± std over seeds (n seeds).", "",
           f"| method | labels | best | final | drop | final (all test) | noisy fitted | epoch fitted > "
           f"{FIT_MEMORISED * 100:g}% | n |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cond in conditions:
        for m in methods:
            rs = [r for r in runs if r["config"]["method"] == m and _condition(r["config"]) == cond]
            if not rs:
                continue
            ss = [run_summary(r) for r in rs]
            fit = [s["fit"] for s in ss if s["fit"] is not None]
            fit_epoch = _fit_epoch_text([s["fit_epoch"] for s in ss]) if fit else "—"
            out.append(f"| {m} | {cond} | {format_mean_std([s['best'] for s in ss])} | "
                       f"{format_mean_std([s['final'] for s in ss])} | {format_mean_std([s['drop'] for s in ss])} | "
                       f"{format_mean_std([s['final_full'] for s in ss])} | "
                       f"{format_mean_std(fit) if fit else '—'} | {fit_epoch} | {len(rs)} |")
    return out + [""]


def _fit_epoch_text(epochs: Sequence[Optional[float]]) -> str:
    """Mean ± std of the epochs that crossed the fit threshold; runs that never did are named."""
    crossed = [e for e in epochs if e is not None]
    text = format_mean_std(crossed, scale=1.0, digits=1) if crossed else "never"
    missing = len(epochs) - len(crossed)
    return text if not missing or not crossed else f"{text} ({missing} never)"


def _paired(runs: List[Dict[str, Any]], method: str, cond: str, key: str) -> List[float]:
    return [other - base for base, other in zip(*_paired_values(runs, method, cond, key))]


def _difference_table(runs: List[Dict[str, Any]]) -> List[str]:
    methods = [m for m in sorted({r["config"]["method"] for r in runs}, key=_method_key) if m != "bn"]
    conditions = sorted({_condition(r["config"]) for r in runs}, key=_condition_key)
    if not methods or not any(r["config"]["method"] == "bn" for r in runs):
        return []
    out = ["Difference to BN (percentage points; method minus BN, paired by seed, mean ± std over seeds), "
           "beside BN's own seed-to-seed std. A difference smaller than the spreads is not a difference.", "",
           "| method | labels | Δ final (all test) | Δ drop | BN std, final (all test) | BN std, drop | seeds |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for cond in conditions:
        bn = [run_summary(r) for r in runs if r["config"]["method"] == "bn" and _condition(r["config"]) == cond]
        bn_final = mean_std([s["final_full"] for s in bn])[1] if bn else math.nan
        bn_drop = mean_std([s["drop"] for s in bn])[1] if bn else math.nan
        for m in methods:
            d_final, d_drop = _paired(runs, m, cond, "final_full"), _paired(runs, m, cond, "drop")
            if not d_final:
                continue
            spread = lambda v: "—" if math.isnan(v) else f"{v * 100:.2f}"
            out.append(f"| {m} | {cond} | {_signed(d_final)} | {_signed(d_drop)} | {spread(bn_final)} | "
                       f"{spread(bn_drop)} | {len(d_final)} |")
    return out + [""]


def _signed(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    text = f"{mean * 100:+.2f}"
    return text if math.isnan(std) else f"{text} ± {std * 100:.2f}"


def _reading(runs: List[Dict[str, Any]]) -> List[str]:
    out = [f"Reading (generated): a run memorises when it ends fitting more than {FIT_MEMORISED * 100:g}% of its "
           f"noisy training labels and its final test accuracy is at least {DROP_MEMORISED * 100:g} points below "
           "its best.", ""]
    conditions = [c for c in sorted({_condition(r["config"]) for r in runs}, key=_condition_key) if c != "clean"]
    for cond in conditions:
        parts = []
        for m in sorted({r["config"]["method"] for r in runs}, key=_method_key):
            ss = [run_summary(r) for r in runs if r["config"]["method"] == m and _condition(r["config"]) == cond]
            if ss:
                mem = sum(_memorises(s) for s in ss)
                drop = mean_std([s["drop"] for s in ss])[0] * 100
                parts.append(f"{m} {mem}/{len(ss)} (mean drop {drop:.2f} points)")
        out.append(f"- {cond}: runs that memorise: " + "; ".join(parts) + ".")
    if not conditions:
        out.append("No run with noisy labels is complete yet, so there is nothing to memorise.")
        return out + [""]
    return out + [""] + _claim_reading(runs) + _how_soon_reading(runs, conditions)


def _seed_values(runs: List[Dict[str, Any]], method: str, cond: str, key: str) -> Dict[int, Tuple[float, float]]:
    """Seed -> (BN's, ``method``'s) :func:`run_summary` number ``key`` at condition ``cond``,
    for the seeds both ran."""
    by_seed: Dict[int, Dict[str, float]] = defaultdict(dict)
    for r in runs:
        if _condition(r["config"]) == cond and r["config"]["method"] in ("bn", method):
            by_seed[r["config"]["seed"]][r["config"]["method"]] = run_summary(r)[key]
    return {seed: (v["bn"], v[method]) for seed, v in by_seed.items() if "bn" in v and method in v}


def _paired_values(runs: List[Dict[str, Any]], method: str, cond: str, key: str) -> Tuple[List[float], List[float]]:
    """BN's and ``method``'s values at ``cond`` on the seeds both ran, in seed order (so their
    mean gap is the paired difference)."""
    pairs = [v for _, v in sorted(_seed_values(runs, method, cond, key).items())]
    return [b for b, _ in pairs], [o for _, o in pairs]


def _clean_and_noisy_leads(runs: List[Dict[str, Any]], method: str, cond: str,
                           key: str) -> Tuple[List[float], List[float]]:
    """``method``'s lead over BN (method minus BN) on clean labels and at ``cond``, on the seeds
    where BN and the method ran both conditions, in seed order: the control pairs of the net
    reading."""
    clean, noisy = _seed_values(runs, method, "clean", key), _seed_values(runs, method, cond, key)
    seeds = sorted(set(clean) & set(noisy))
    return [clean[s][1] - clean[s][0] for s in seeds], [noisy[s][1] - noisy[s][0] for s in seeds]


def _points(diff: float) -> str:
    return f"{round(diff * 100, 2) + 0.0:+.2f}"  # + 0.0 turns a rounded -0.00 into +0.00


def _judge_paired(base: Sequence[float], other: Sequence[float],
                  floor: float = SPREAD_FLOOR) -> Tuple[str, float]:
    """The verdict of :func:`judge_difference` on (BN's, the method's) values per seed, and the
    mean of the paired differences (method minus BN). The paired mean is what the difference
    table prints; the difference of the two means can round the other way."""
    verdict, _ = judge_difference(base, other, floor=floor)
    return verdict, mean_std([o - b for b, o in zip(base, other)])[0]


#: The two measures judged against BN, and which direction the paper's claim expects.
_CLAIM_MEASURES = (("final_full", "final (all test)", "higher"), ("drop", "drop", "lower"))


def _judged_lines(runs: List[Dict[str, Any]], conditions: Sequence[str], pairs_of,
                  sides: Optional[Tuple[str, str]] = None) -> Tuple[List[str], List[str], List[str], int]:
    """One line per condition judging every non-BN method on :data:`_CLAIM_MEASURES` with
    :func:`judge_difference` on ``pairs_of(method, cond, key) -> (base, other)``; and the
    comparisons of the ConvNorm methods under noise that side with the claim, go against it,
    and the number left undecided. A smaller drop whose best is also lower than BN's (judged the
    same way on ``best``) is marked "from a lower best": the method fell less because it rose
    less, which the claim does not predict. With ``sides`` (names of the other and the base side), each
    figure is followed by the two means it is the difference of, and each method by its seeds."""
    methods = [m for m in sorted({r["config"]["method"] for r in runs}, key=_method_key) if m != "bn"]
    lines, agree, against, undecided = [], [], [], 0
    for cond in conditions:
        parts = []
        for m in methods:
            pairs = {key: pairs_of(m, cond, key) for key, _, _ in _CLAIM_MEASURES}
            if not pairs["drop"][0]:
                continue
            judged = []
            for key, label, holds_on in _CLAIM_MEASURES:
                base, other = pairs[key]
                verdict, paired_mean = _judge_paired(base, other)
                detail = "" if sides is None else (f": {_points(mean_std(other)[0])} {sides[0]}, "
                                                   f"{_points(mean_std(base)[0])} {sides[1]}")
                text, mark = f"{label} {verdict} ({_points(paired_mean)}{detail})", ""
                if key == "drop" and verdict == "lower":
                    best_verdict, best_mean = _judge_paired(*pairs_of(m, cond, "best"))
                    if best_verdict == "lower":
                        text, mark = f"{text}, from a lower best ({_points(best_mean)})", " (from a lower best)"
                judged.append(text)
                if m in CONVNORM_METHODS and cond != "clean":
                    if verdict in ("higher", "lower"):
                        (agree if verdict == holds_on else against).append(f"{m} {label} at {cond}{mark}")
                    else:
                        undecided += 1
            seeds = "" if sides is None else f" ({len(pairs['drop'][0])} seed{'s' * (len(pairs['drop'][0]) > 1)})"
            parts.append(f"{m}{seeds}: " + ", ".join(judged))
        if parts:
            lines.append(f"- {cond}: " + "; ".join(parts) + ".")
    return lines, agree, against, undecided


def _tally(opening: str, agree: List[str], against: List[str], undecided: int) -> List[str]:
    if agree or against:
        return ["", f"{opening} Beyond the seed spread, these records side with it for "
                + (", ".join(agree) if agree else "no comparison") + " and against it for "
                + (", ".join(against) if against else "no comparison")
                + (f"; {undecided} comparison(s) are within the spread or have one seed" if undecided else "") + "."]
    if undecided:
        return ["", f"{opening} No comparison of a ConvNorm method under noise is beyond the seed spread yet "
                f"({undecided} within the spread or with one seed)."]
    return []


def _claim_reading(runs: List[Dict[str, Any]]) -> List[str]:
    """Each method against BN at every label condition, on the final accuracy (all test) and
    the drop, on the seeds both ran, judged against the seed spread; then the paper's claim
    tallied over the noisy conditions (clean labels are the control: a lead there is not
    robustness to noise). Then the same judgement net of the clean-label lead: under each
    noisy condition, a method's lead over BN against its lead on clean labels, per seed."""
    conditions = sorted({_condition(r["config"]) for r in runs}, key=_condition_key)
    lines, agree, against, undecided = _judged_lines(
        runs, conditions, lambda m, cond, key: _paired_values(runs, m, cond, key))
    if not lines:
        return []
    out = [f"Against BN (generated), on the seeds both ran (the pairs of the difference table): a method's mean "
           f"reads higher or lower than BN's when the two differ by more than {SPREAD_FACTOR:g} times the larger "
           f"seed standard deviation (at least {SPREAD_FLOOR * 100:g} points); otherwise within the spread; not "
           "judged with one seed. Differences in points. A lower drop is marked \"from a lower best\" when the "
           "method's best accuracy is also lower than BN's by the same rule: it fell less because it rose less.",
           ""] + lines
    claim = ("The paper claims ConvNorm holds on where BN memorises: under label noise its final accuracy stays "
             "higher and falls less from its best.")
    out += _tally(claim, agree, against, undecided)
    noisy = [c for c in conditions if c != "clean"]
    net, agree, against, undecided = _judged_lines(
        runs, noisy, lambda m, cond, key: _clean_and_noisy_leads(runs, m, cond, key),
        sides=("under noise", "on clean labels"))
    if net:
        out += ["", "Net of the clean-label lead (generated): a method's lead over BN (method minus BN, paired by "
                "seed) under noise against its lead on clean labels, on the seeds where BN and the method ran both "
                "clean and noisy labels; a lead that is as large on clean labels is not robustness to noise. A "
                f"measure reads higher (lower) when the lead under noise exceeds (falls short of) the lead on clean "
                f"labels by more than {SPREAD_FACTOR:g} times the larger seed standard deviation of the two leads "
                f"(at least {SPREAD_FLOOR * 100:g} points); otherwise within the spread; not judged with one seed. "
                "Each figure is the lead under noise minus the lead on clean labels, followed by the two mean leads, "
                "in points. A lower drop is marked \"from a lower best\" when the lead in best accuracy under noise "
                "also falls short of the lead on clean labels by the same rule (the figure is that shortfall).",
                ""] + net
        out += _tally("The same claim, net of the clean-label lead.", agree, against, undecided)
    return out + [""]


def _how_soon_reading(runs: List[Dict[str, Any]], conditions: Sequence[str]) -> List[str]:
    """How soon each method memorises against BN, per noisy condition, on two measures.

    * The epoch it first fits more than :data:`FIT_MEMORISED` of its noisy labels, on the seeds
      where both runs crossed, judged with :func:`judge_difference` at a floor of
      :data:`FIT_EPOCH_FLOOR` epochs. A seed on which only one run crossed is censored, not
      dropped: it counts as that run's crossing sooner, and a verdict it contradicts reads
      ``mixed``.
    * The noisy labels fitted in the last epoch at the first learning rate of a step schedule
      (``fit_before_step``), judged in points as the accuracies are. After the first step every
      run fits its noisy labels fast, so the crossing epoch can hardly fall much later than the
      step; this measure reads either way.
    """
    methods = [m for m in sorted({r["config"]["method"] for r in runs}, key=_method_key) if m != "bn"]
    step = (runs[0]["config"].get("milestones") or [None])[0]  # one setting per group of runs
    lines = []
    for cond in conditions:
        parts = []
        for m in methods:
            pairs = [v for _, v in sorted(_seed_values(runs, m, cond, "fit_epoch").items())]
            if not pairs:
                continue
            judged = [_crossing_text(m, pairs)]
            base, other = _paired_values(runs, m, cond, "fit_before_step")
            if base and None not in base + other:
                verdict, paired_mean = _judge_paired(base, other)
                judged.append(f"fitted in epoch {step} {verdict} ({_points(paired_mean)} points: "
                              f"{mean_std(other)[0] * 100:.2f} against {mean_std(base)[0] * 100:.2f})")
            parts.append(f"{m}: " + ", ".join(judged))
        if parts:
            lines.append(f"- {cond}: " + "; ".join(parts) + ".")
    if not lines:
        return []
    return [f"How soon (generated), method against BN on the seeds both ran: the first epoch in which a run fits "
            f"more than {FIT_MEMORISED * 100:g}% of its noisy labels, method minus BN, on the seeds on which both "
            f"crossed; it reads sooner (later) when the two differ by more than {SPREAD_FACTOR:g} times the larger "
            f"seed standard deviation, taken as at least {FIT_EPOCH_FLOOR:g} epoch (the measure counts whole "
            "epochs); otherwise within the spread; not judged with one seed. A seed on which only one of the two "
            "crossed counts for that one crossing sooner, and a verdict it contradicts reads mixed. Then the noisy "
            "labels fitted in the last epoch before the first learning-rate step, judged as the accuracies are (in "
            "points). After that step every run fits its noisy labels fast, so the first measure can hardly read "
            "later even for a method that holds on; the second can read either way. The claim that ConvNorm holds "
            "on where BN memorises would show as a later epoch and fewer labels fitted before the step.", ""
            ] + lines + [""]


def _crossing_text(method: str, pairs: Sequence[Tuple[Optional[float], Optional[float]]]) -> str:
    """The judged crossing epoch of ``method`` against BN from (BN's, method's) epoch per seed,
    None where a run never crossed."""
    crossed = [(b, o) for b, o in pairs if b is not None and o is not None]
    only_bn = sum(b is not None and o is None for b, o in pairs)  # the method crossed later
    only_method = sum(b is None and o is not None for b, o in pairs)  # the method crossed sooner
    censored = "" if not only_bn + only_method else f"; only BN crossed on {only_bn}, only {method} on {only_method}"
    if not crossed:
        return f"epoch fitted > {FIT_MEMORISED * 100:g}% not judged (no seed on which both crossed{censored})"
    base, other = [b for b, _ in crossed], [o for _, o in crossed]
    verdict, paired_mean = _judge_paired(base, other, floor=FIT_EPOCH_FLOOR)
    verdict = {"higher": "later", "lower": "sooner"}.get(verdict, verdict)
    if (verdict == "sooner" and only_bn) or (verdict == "later" and only_method):
        verdict = "mixed"
    seeds = f"{len(crossed)} seed{'s' * (len(crossed) > 1)}"
    return (f"epoch fitted > {FIT_MEMORISED * 100:g}% {verdict} ({paired_mean:+.1f} epochs: {mean_std(other)[0]:.1f} "
            f"against {mean_std(base)[0]:.1f}, {seeds}{censored})")


def _curves(runs: List[Dict[str, Any]], path: str, title: str) -> Optional[str]:
    conditions = sorted({_condition(r["config"]) for r in runs}, key=_condition_key)
    methods = sorted({r["config"]["method"] for r in runs}, key=_method_key)
    fig, axes = pyplot().subplots(2, len(conditions), figsize=(4.4 * len(conditions), 6.4), squeeze=False,
                             sharex=True)
    for col, cond in enumerate(conditions):
        for m in methods:
            rs = [r for r in runs if r["config"]["method"] == m and _condition(r["config"]) == cond]
            if not rs:
                continue
            n_ep = min(len(r["epochs"]) for r in rs)
            epochs = list(range(1, n_ep + 1))
            for row, key in enumerate(("test_acc", "memorized_noisy")):
                if key == "memorized_noisy" and cond == "clean":
                    continue
                values = [[(r["epochs"][i][key] or 0.0) * 100 for r in rs] for i in range(n_ep)]
                mean = [sum(v) / len(v) for v in values]
                line, = axes[row][col].plot(epochs, mean, label=m, linewidth=1.4)
                if len(rs) > 1:
                    axes[row][col].fill_between(epochs, [min(v) for v in values], [max(v) for v in values],
                                                color=line.get_color(), alpha=0.18, linewidth=0)
        axes[0][col].set_title(cond)
        axes[1][col].set_xlabel("epoch")
        if cond == "clean":
            axes[1][col].set_axis_off()
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[1][min(1, len(conditions) - 1)].set_ylabel("noisy training labels fitted (%)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, width=int(58 * len(conditions))), fontsize=9)
    return save_figure(fig, path)


def _cost(runs: List[Dict[str, Any]]) -> List[str]:
    """Process-hours of training of the complete runs: each record's ``wall_time_s`` (seconds,
    the sum of its epochs' times) times its ``world_size`` (processes), in hours."""
    per_method: Dict[str, float] = defaultdict(float)
    for r in runs:
        per_method[r["config"]["method"]] += r["wall_time_s"] * r.get("world_size", 1) / 3600
    devices = sorted({r.get("provenance", {}).get("device", "unknown device") for r in runs})
    parts = ", ".join(f"{m} {per_method[m]:.1f} h" for m in sorted(per_method, key=_method_key))
    which = "this complete run" if len(runs) == 1 else f"these {len(runs)} complete runs"
    return [f"Cost: {which} took {sum(per_method.values()):.1f} process-hours of training in all: the sum over "
            f"records of their epochs' wall time times their process count ({parts}; on {', '.join(devices)}).",
            ""]


def report_section(folder: str, fig_dir: Optional[str] = None) -> List[str]:
    """The report's memorisation section: the view of the training records under ``folder``
    that lie in ``memorisation-*`` folders, with its heading (empty without such records)."""
    fig_dir = os.path.join(folder, "figures") if fig_dir is None else fig_dir
    records = [(path, record) for path, record in iter_records(folder, kind="train")
               if is_memorisation_folder(os.path.abspath(path))]
    if not records:
        return []
    return ["## Memorisation of noisy labels in long training", ""] + memorisation_section(records, folder, fig_dir)


def memorisation_section(records: List[Tuple[str, Dict[str, Any]]], folder: str, fig_dir: str) -> List[str]:
    """Markdown lines of the memorisation view of ``records`` (path, record) found under
    ``folder``, grouped by their ``memorisation-*`` folder and training setting; figures go
    to ``fig_dir``."""
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = defaultdict(list)
    pending: Dict[str, int] = defaultdict(int)
    for path, r in records:
        where = os.path.relpath(os.path.dirname(path), folder)
        if where == ".":  # the report of one study's own folder
            where = os.path.basename(os.path.abspath(folder))
        if r.get("status") != "complete":
            pending[where] += 1
            continue
        groups[(where, setting_text(r["config"]))].append(r)
    lines: List[str] = []
    for where in sorted({w for w, _ in groups} | set(pending)):
        lines += [f"### {where}", ""]
        if pending.get(where):
            lines += [f"{pending[where]} run(s) not complete are left out.", ""]
        for (w, setting), runs in sorted(groups.items()):
            if w != where:
                continue
            part = runs[0]["data"].get("test_part_size", runs[0]["data"]["test_size"])
            lines += [f"Setting: {setting}.", ""]
            lines += _summary_table(runs, part) + _difference_table(runs) + _reading(runs) + _cost(runs)
            slug = where.replace(os.sep, "-") + "-" + hashlib.sha1(setting.encode()).hexdigest()[:6]
            png = _curves(runs, os.path.join(fig_dir, f"{slug}-curves.png"), f"{where}: {setting}")
            lines += [f"![memorisation curves]({os.path.relpath(png, folder)})", ""]
    return lines
