"""The adversarial-robustness section of ``convnorm report``, from records of kind ``"robust"``.

Per setting of :func:`convnorm.experiments.robust.train_free_at` runs: accuracy tables
(clean, FGSM, PGD; mean ± std over seeds), how the setting differs from the published one,
a generated comparison with the published ranking, each run's gradient-masking checks, and
the paper's published numbers. The lines depend on the records only.
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

from convnorm.experiments.records import iter_records
from convnorm.experiments.published import PUBLISHED_FREE_AT
from convnorm.experiments.robust import ADV_PRESETS, AdvConfig
from convnorm.experiments.runs import processes
from convnorm.experiments.stats import SPREAD_FACTOR, format_mean_std, judge_difference, mean_std, method_key

__all__ = ["report_section"]

_SETTING_EXCLUDE = ("method", "seed")


def _eps_text(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def _setting_key(cfg: Dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in _SETTING_EXCLUDE}, sort_keys=True)


def _setting_title(cfg: Dict[str, Any]) -> str:
    fraction = cfg["train_fraction"]
    frac = "full training set" if fraction == 1 else f"{fraction * 100:g}% of the training set"
    unit = "passes" if cfg["epoch_counting"] == "passes" else "epochs of gradient computations"
    return (f"{cfg['dataset']}, {cfg['model']}, {frac}, {cfg['epochs']} {unit} of free AT "
            f"(m={cfg['replays']}, eps {_eps_text(cfg['eps'])}, step {_eps_text(cfg['step'])}, "
            f"delta reset: {cfg['perturbation_reset']})")


def _differences(cfg: Dict[str, Any]) -> str:
    """A sentence naming how ``cfg`` differs from the published setting (``paper-free-at``)."""
    paper = AdvConfig(**ADV_PRESETS["paper-free-at"]).identity()

    def pct(f):
        return f"{f * 100:g}%"

    fields = [
        ("dataset", "data set", str), ("model", "model", str), ("train_fraction", "training data", pct),
        ("epochs", "epochs", str), ("epoch_counting", "epoch counting", str), ("replays", "replays m", str),
        ("batch_size", "batch size", str), ("lr", "lr", lambda v: f"{v:g}"),
        ("milestones", "lr milestones", lambda v: "/".join(str(t) for t in v) or "none"),
        ("schedule", "schedule", str), ("weight_decay", "weight decay", lambda v: f"{v:g}"),
        ("eps", "training eps", _eps_text), ("step", "FGSM step", _eps_text),
        ("perturbation_reset", "delta reset", str), ("augment", "augmentation", str),
        ("eval_pgd_steps", "PGD steps", str), ("eval_pgd_step", "PGD step", _eps_text),
        ("eval_restarts", "PGD restarts", str), ("momentum", "momentum", lambda v: f"{v:g}"),
        ("gamma", "lr step factor", lambda v: f"{v:g}"),
        ("model_options", "model options", lambda v: ", ".join(f"{k} {v[k]}" for k in sorted(v)) or "none"),
    ]
    diffs = [f"{label} {fmt(cfg[key])} (published: {fmt(paper[key])})" for key, label, fmt in fields
             if key in cfg and cfg[key] != paper.get(key)]
    # The attack radius: eval_eps, or the training eps when unset (as AdvConfig.attack_eps).
    if "eps" in cfg:
        attack = cfg["eps"] if cfg.get("eval_eps") is None else cfg["eval_eps"]
        published_attack = paper["eps"] if paper.get("eval_eps") is None else paper["eval_eps"]
        if attack != published_attack:
            diffs.append(f"attack eps {_eps_text(attack)} (published: {_eps_text(published_attack)})")
    samples = cfg.get("eval_samples")
    test = "the whole test set" if samples is None else f"the first {samples} test images"
    if not diffs:
        return f"These runs use the published setting (preset `paper-free-at`); attacks on {test}."
    return ("These runs differ from the published setting (preset `paper-free-at`) in: " + "; ".join(diffs)
            + f". Attacks on {test}.")


def _check_cell(check: Dict[str, Any], text: str) -> str:
    if check.get("passed") is None:
        return "not run"
    return ("yes" if check["passed"] else "**NO**") + f" ({text})"


def _published_order_lines(runs: List[Dict[str, Any]]) -> List[str]:
    """Generated: does the ranking of methods here match the published one, pair by pair?

    A pair of methods with published numbers is "ordered as published" when the sign of
    the difference of mean accuracies is the same here; a disagreement is "beyond the seed
    spread" when it exceeds twice the larger seed standard deviation of the two methods,
    judged only when both have two or more seeds. Only for settings attacked as published
    (eps 8/255, PGD-20).
    """
    cfg = runs[0]["config"]
    eval_eps = cfg["eps"] if cfg.get("eval_eps") is None else cfg["eval_eps"]
    if abs(eval_eps - 8 / 255) > 1e-9 or cfg["eval_pgd_steps"] != 20:
        return []  # the published numbers are for eps 8/255 and PGD-20
    out = []
    for column, key in (("FGSM", "fgsm_acc"), ("PGD", "pgd_acc")):
        published = {m: fg if column == "FGSM" else pg for m, _, fg, pg in PUBLISHED_FREE_AT}
        published = {m: v for m, v in published.items() if v is not None}
        here = {m: [r[key] for r in runs if r["config"]["method"] == m] for m in published}
        here = {m: v for m, v in here.items() if v}
        if len(here) < 2:
            continue
        stats = {m: mean_std(v) for m, v in here.items()}
        ranked = sorted(here, key=lambda m: -stats[m][0])
        pairs = agree = beyond = unjudged = 0
        for i, a in enumerate(ranked):
            for b in ranked[i + 1:]:
                if published[a] == published[b]:
                    continue
                pairs += 1
                if published[a] > published[b]:
                    agree += 1
                elif len(here[a]) < 2 or len(here[b]) < 2:
                    unjudged += 1
                else:
                    beyond += stats[a][0] - stats[b][0] > 2 * max(stats[a][1], stats[b][1])
        order_here = " > ".join(f"{m} {stats[m][0] * 100:.1f}" for m in ranked)
        order_pub = " > ".join(f"{m} {published[m]:.1f}" for m in sorted(here, key=lambda m: -published[m]))
        out.append(f"- {column}, ranked here: {order_here}; published: {order_pub}. Pairs ordered as published: "
                   f"{agree} of {pairs}; of the others, {beyond} differ here by more than twice the larger seed "
                   "standard deviation" + (f" ({unjudged} with a single seed on a side, not judged)"
                                           if unjudged else "") + ".")
    if not out:
        return []
    return ["Reading (generated), against the published ranking (the published gaps are small too, "
            "about a point or less between the top methods):", ""] + out + [""]


# -- the attack-suite view (runs with evaluation "suite": the robustness study) --------------

#: The suite table's columns: (key of the evaluation, header; ``{steps}`` and ``{restarts}`` are
#: the strong PGD's, ``{k}`` the weaker PGD's steps).
SUITE_COLUMNS = (("clean_acc", "clean (whole test set)"), ("fgsm_acc", "FGSM"), ("pgd20_acc", "PGD-{k}"),
                 ("pgd100_acc", "PGD-{steps} ×{restarts}"), ("apgd_t_acc", "APGD-CE + APGD-T"),
                 ("robust_acc", "worst case (+ Square)"))

#: The published row that stands for a method here. The paper's "ConvNorm" is its whole block,
#: which is ``convnorm-paper`` (the older free-AT setting ran ``convnorm+bn`` in its place and
#: is compared with that row by :func:`_published_order_lines`).
_PUBLISHED_ROW_OF = {"convnorm-paper": "convnorm+bn", "bn": "bn", "sn": "sn", "oni": "oni", "ocnn": "ocnn"}


def _published(method: str) -> Tuple[str, str]:
    rows = {m: (fg, pg) for m, _, fg, pg in PUBLISHED_FREE_AT}
    row = rows.get(_PUBLISHED_ROW_OF.get(method, ""))
    if row is None:
        return "—", "—"
    return f"{row[0]:.2f}", "not given" if row[1] is None else f"{row[1]:.2f}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f}"


#: The bar a free-AT setting must clear before the robustness study spends its budget there:
#: BN's mean clean and PGD-20 accuracy at eps 8/255 (a regime where the published gaps, a point
#: or so, could show; the first CPU setting reached about 40% and 23%).
REGIME_BAR = dict(clean=0.65, pgd20=0.35)


def _short_commit(commit: str) -> str:
    """A commit's short hash, keeping the ``-dirty`` mark of uncommitted changes."""
    return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def _cost_line(runs: List[Dict[str, Any]]) -> str:
    """Generated: what the runs cost, where and at which commits (of every process that trained them)."""
    total = sum(r["wall_time_s"] for r in runs)
    training = sum(sum(e["time_s"] for e in r["epochs"]) for r in runs)
    evaluation = sum(r.get("eval_time_s", 0.0) for r in runs)
    # A resumed run was trained by several processes: each one's commit and machine counts.
    sessions = [p for r in runs if "provenance" in r for p in processes(r)]
    commits = sorted({_short_commit(p["git_commit"]) for p in sessions})
    devices = sorted({p["device"] for p in sessions})
    return (f"{len(runs)} run(s), {_hours(total)} process-hours in all (training {_hours(training)}, evaluation "
            f"{_hours(evaluation)}), on {', '.join(devices) or 'an unrecorded device'}, at commit(s) "
            f"{', '.join(commits) or 'unrecorded'}.")


def _regime_line(runs: List[Dict[str, Any]], pgd20_key: str) -> List[str]:
    """Generated: does BN clear :data:`REGIME_BAR` here (only for eps 8/255 and PGD-20)?"""
    cfg = runs[0]["config"]
    eval_eps = cfg["eps"] if cfg.get("eval_eps") is None else cfg["eval_eps"]
    bn = [r for r in runs if r["config"]["method"] == "bn"]
    if not bn or abs(eval_eps - 8 / 255) > 1e-9 or cfg["eval_pgd_steps"] != 20:
        return []
    clean = mean_std([r["evaluation"]["clean_acc"] for r in bn])[0]
    pgd20 = mean_std([r["evaluation"][pgd20_key] for r in bn])[0]
    reaches = clean >= REGIME_BAR["clean"] and pgd20 >= REGIME_BAR["pgd20"]
    return [f"The robustness bar (BN at least {REGIME_BAR['clean'] * 100:g}% clean and "
            f"{REGIME_BAR['pgd20'] * 100:g}% under PGD-20): BN {clean * 100:.2f}% clean, {pgd20 * 100:.2f}% PGD-20, "
            + ("reached." if reaches else "**not reached**."), ""]


def _suite_lines(runs: List[Dict[str, Any]]) -> List[str]:
    """The study view of one setting whose runs were evaluated with the attack suite."""
    cfg = runs[0]["config"]
    ev0 = runs[0]["evaluation"]
    attack = ev0["attack"]
    methods = sorted({r["config"]["method"] for r in runs}, key=method_key)
    by_method = {m: [r for r in runs if r["config"]["method"] == m] for m in methods}
    headers = [h.format(k=attack["pgd20"]["steps"], steps=attack["pgd100"]["steps"],
                        restarts=attack["pgd100"]["restarts"]) for _, h in SUITE_COLUMNS]
    lines = [f"### {_setting_title(cfg)}: the attack suite", "",
             f"Test accuracy (%) of the final model, L-inf eps {_eps_text(attack['eps'])}, mean ± std over seeds. "
             f"Clean accuracy on all {ev0['test_images']} test images; every attack on the first {ev0['samples']} "
             f"(an image wrong clean counts as wrong under attack): FGSM; PGD-20 (step "
             f"{_eps_text(attack['pgd20']['step'])}, random start); PGD-{attack['pgd100']['steps']} with "
             f"{attack['pgd100']['restarts']} restarts; AutoAttack's APGD-CE ({attack['apgd_ce']['steps']} steps) "
             f"then APGD-T ({attack['apgd_t']['steps']} steps, {attack['apgd_t']['target_classes']} target classes) "
             f"on what APGD-CE left standing; the worst case per image over all of them and Square "
             f"({attack['square']['queries']} queries, black box) on what they left standing. "
             "The paper's columns: its published free-AT table (full-width ResNet-18, 30 passes, mean of 4 seeds; "
             "its ConvNorm is the block `convnorm-paper` reproduces). Process-hours: training and evaluation, "
             "summed over the method's runs.", "",
             "| method | seeds | " + " | ".join(headers)
             + " | paper FGSM | paper PGD-20 | process-hours |",
             "|---|---|" + "---|" * (len(SUITE_COLUMNS) + 3)]
    for m in methods:
        rs = by_method[m]
        cells = [format_mean_std([r["evaluation"][key] for r in rs]) for key, _ in SUITE_COLUMNS]
        paper_fgsm, paper_pgd = _published(m)
        lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells)
                     + f" | {paper_fgsm} | {paper_pgd} | {_hours(sum(r['wall_time_s'] for r in rs))} |")
    lines += ["", _cost_line(runs), "", _differences(cfg), ""]
    lines += _regime_line(runs, "pgd20_acc")
    if "bn" in by_method and len(methods) > 1:
        base = {r["config"]["seed"]: r for r in by_method["bn"]}
        lines += ["Differences to BN (percentage points), paired by seed: mean ± std of the per-seed "
                  "differences, then the verdict against the seed spread (higher or lower when the means "
                  f"differ by more than {SPREAD_FACTOR:g} times the larger of the two methods' seed std).", "",
                  "| method | paired seeds | " + " | ".join(headers) + " |",
                  "|---|---|" + "---|" * len(SUITE_COLUMNS)]
        for m in methods:
            if m == "bn":
                continue
            pairs = [(base[r["config"]["seed"]], r) for r in by_method[m] if r["config"]["seed"] in base]
            if not pairs:
                continue
            cells = []
            for key, _ in SUITE_COLUMNS:
                diffs = [o["evaluation"][key] - b["evaluation"][key] for b, o in pairs]
                verdict, _ = judge_difference([b["evaluation"][key] for b, _ in pairs],
                                              [o["evaluation"][key] for _, o in pairs])
                cells.append(f"{format_mean_std(diffs)} ({verdict})")
            lines.append(f"| {m} | {len(pairs)} | " + " | ".join(cells) + " |")
        lines.append("")
    sweep_eps = [_eps_text(s["eps"]) for s in ev0["eps_sweep"]]
    pair_names = ", ".join(f"{p['weaker']} < {p['stronger']}"
                           for p in ev0["checks"]["stronger_not_weaker"]["pairs"])
    lines += [f"Checks against gradient masking per run. PGD-20 accuracy (%) over the eps sweep "
              f"({', '.join(sweep_eps)}; first {ev0['sweep_samples']} images) must fall and reach about zero. "
              f"Stronger attacks must not be weaker ({pair_names}): violations are images fooled by the weaker "
              "attack but not by the stronger. Square, a black-box attack, must fool almost none of the images "
              "every white-box attack left standing.", "",
              "| run | method | seed | sweep | falls | ≈ 0 at largest eps | stronger not weaker | "
              "black box not stronger |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ev = r["evaluation"]
        checks = ev["checks"]
        mono, zero = checks["sweep_monotone"], checks["sweep_reaches_zero"]
        mono_cell = _check_cell(mono, "max rise " + ("—" if mono.get("max_rise") is None else
                                                     f"{mono['max_rise'] * 100:.1f}"))
        zero_cell = _check_cell(zero, "—" if zero.get("acc_at_largest_eps") is None else
                                f"{zero['acc_at_largest_eps'] * 100:.1f}")
        strong = checks["stronger_not_weaker"]
        strong_cell = _check_cell(strong, ", ".join(str(p["violations"]) for p in strong["pairs"])
                                  + f" of {ev['samples']}")
        black = checks["black_box_not_stronger"]
        black_cell = _check_cell(black, f"{black['fooled_by_square']} of {black['white_box_standing']}")
        sweep = ", ".join(f"{s['acc'] * 100:.1f}" for s in ev["eps_sweep"]) or "—"
        lines.append(f"| {r['name']} | {r['config']['method']} | {r['config']['seed']} | {sweep} | {mono_cell} | "
                     f"{zero_cell} | {strong_cell} | {black_cell} |")
    lines.append("")
    return lines


def report_section(folder: str, fig_dir: Optional[str] = None) -> List[str]:
    """Markdown lines from the records of kind ``"robust"`` under ``folder`` (``fig_dir``: the
    report's figure folder, which this section does not use: it draws no figure).

    Per setting (every config field but method and seed): a table of method -> clean, FGSM
    and PGD-K test accuracy (%, mean ± std over seeds), a sentence on how the setting
    differs from the published one, and each run's gradient-masking checks; then, once, the
    published table. Deterministic: the same records give the same lines.
    """
    records = [r for _, r in iter_records(folder, kind="robust")]
    if not records:
        return []
    complete = [r for r in records if r.get("status") == "complete" and "evaluation" in r]
    lines = ["## Adversarial robustness (free adversarial training)", ""]
    pending = len(records) - len(complete)
    if pending:
        lines += [f"{pending} robust run(s) not complete are left out of the tables.", ""]
    groups: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for r in complete:
        groups[_setting_key(r["config"])].append(r)
    for key in sorted(groups):
        runs = sorted(groups[key], key=lambda r: (method_key(r["config"]["method"]), r["config"]["seed"], r["name"]))
        cfg = runs[0]["config"]
        if cfg.get("evaluation") == "suite":
            lines += _suite_lines(runs)
            continue
        eps = _eps_text(cfg["eps"] if cfg.get("eval_eps") is None else cfg["eval_eps"])
        k = cfg["eval_pgd_steps"]
        lines += [f"### {_setting_title(cfg)}", "",
                  f"Test accuracy (%) of the final model, L-inf eps {eps}: clean, FGSM, PGD-{k} "
                  f"(step {_eps_text(cfg['eval_pgd_step'])}, {cfg['eval_restarts']} restart(s), random start); "
                  "mean ± std over seeds.", "",
                  f"| method | seeds | clean | FGSM | PGD-{k} | gradient-masking checks passed |",
                  "|---|---|---|---|---|---|"]
        for m in sorted({r["config"]["method"] for r in runs}, key=method_key):
            rs = [r for r in runs if r["config"]["method"] == m]
            passed = sum(1 for r in rs if r.get("checks_passed"))
            lines.append(f"| {m} | {len(rs)} | {format_mean_std([r['clean_acc'] for r in rs])} | "
                         f"{format_mean_std([r['fgsm_acc'] for r in rs])} | "
                         f"{format_mean_std([r['pgd_acc'] for r in rs])} | {passed}/{len(rs)} |")
        lines += ["", _cost_line(runs), "", _differences(cfg), ""]
        lines += _regime_line(runs, "pgd_acc")
        lines += _published_order_lines(runs)
        sweep_eps = [_eps_text(s["eps"]) for s in runs[0]["evaluation"]["eps_sweep"]]
        lines += [f"Gradient-masking checks per run: PGD accuracy (%) over the eps sweep ({', '.join(sweep_eps)}) "
                  "must fall (up to the tolerance) and reach about zero; PGD must not be weaker than FGSM "
                  "(violations: samples fooled by FGSM but not by PGD).", "",
                  "| run | method | seed | PGD accuracy over the sweep | falls | ≈ 0 at largest eps | PGD ≥ FGSM |",
                  "|---|---|---|---|---|---|---|"]
        for r in runs:
            ev = r["evaluation"]
            checks = ev["checks"]
            sweep = ", ".join(f"{s['acc'] * 100:.1f}" for s in ev["eps_sweep"]) or "—"
            mono, zero, pf = checks["sweep_monotone"], checks["sweep_reaches_zero"], checks["pgd_not_weaker_than_fgsm"]
            mono_cell = _check_cell(mono, "max rise " + ("—" if mono.get("max_rise") is None else
                                                         f"{mono['max_rise'] * 100:.1f}") +
                                    f" ≤ {mono['tolerance'] * 100:g}")
            zero_cell = _check_cell(zero, "—" if zero.get("acc_at_largest_eps") is None else
                                    f"{zero['acc_at_largest_eps'] * 100:.1f} ≤ {zero['threshold'] * 100:g} at "
                                    f"{_eps_text(zero['largest_eps'])}")
            pf_cell = _check_cell(pf, f"{pf['violations']} violations of {ev['samples']}")
            lines.append(f"| {r['name']} | {r['config']['method']} | {r['config']['seed']} | {sweep} | "
                         f"{mono_cell} | {zero_cell} | {pf_cell} |")
        lines.append("")
    lines += ["Published (ResNet-18, CIFAR-10, free AT, mean of 4 seeds), not run here: test accuracy (%) "
              "under FGSM and PGD-20, eps 8/255.", "",
              "| method | FGSM | PGD-20 |", "|---|---|---|"]
    for _, label, fg, pg in PUBLISHED_FREE_AT:
        lines.append(f"| {label} | {fg:.1f} | {'not given' if pg is None else f'{pg:.1f}'} |")
    lines.append("")
    return lines
