"""The robustness section of `convnorm report`: its numbers are the records' numbers, in the right rows."""
import re
import shutil
import statistics

import pytest

from convnorm.experiments.records import write_json
from convnorm.experiments.robust import adv_preset
from convnorm.experiments.robust_report import report_section

EPS8 = 8 / 255
# The default sweep of the presets, as the real records hold it (results/free-at-cifar10/).
SWEEP = (0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)


def _record(method, seed, clean, fgsm, pgd, *, preset="cpu-free-at", status="complete", sweep_accs=None,
            checks=None, checks_passed=True, violations=0, name=None, **overrides):
    """A record shaped like the real ``robust`` records, with the numbers the report reads."""
    config = adv_preset(preset, method=method, seed=seed, **overrides).identity()
    accs = sweep_accs if sweep_accs is not None else (clean, 0.6, 0.5, pgd, 0.2, 0.05, 0.0)
    sweep = [dict(eps=e, eps_255=round(e * 255, 6), step=2 / 255, acc=a) for e, a in zip(config["sweep_eps"], accs)]
    if checks is None:
        checks = dict(sweep_monotone=dict(passed=True, max_rise=-0.01, tolerance=0.01),
                      sweep_reaches_zero=dict(passed=True, largest_eps=64 / 255, largest_eps_255=64.0,
                                              acc_at_largest_eps=0.0, threshold=0.05),
                      pgd_not_weaker_than_fgsm=dict(passed=violations == 0, pgd_acc=pgd, fgsm_acc=fgsm,
                                                    violations=violations, violation_rate=violations / 1000,
                                                    violation_tolerance=0.01))
    evaluation = dict(samples=1000, clean_acc=clean, fgsm_acc=fgsm, pgd_acc=pgd, eps_sweep=sweep, checks=checks,
                      checks_passed=checks_passed)
    record = dict(kind="robust", config=config, seed=seed, name=name or f"robust-{method}-s{seed}", status=status,
                  epochs=[dict(time_s=3000.0)], evaluation=evaluation, clean_acc=clean, fgsm_acc=fgsm, pgd_acc=pgd,
                  checks_passed=checks_passed, wall_time_s=3600.0, eval_time_s=600.0,
                  provenance=dict(git_commit="0123456789", device="Intel Xeon (1 threads)"))
    if status != "complete":
        del record["evaluation"]
    return record


def _write(folder, records):
    for i, r in enumerate(records):
        write_json(str(folder / f"{i:02d}-{r['name']}.json"), r)


def _table(lines, header_start="| method | seeds |"):
    """Rows (lists of cells) of every table whose header starts with ``header_start``, per table."""
    tables, i = [], 0
    while i < len(lines):
        if lines[i].startswith(header_start):
            rows, i = [], i + 2  # skip the header and the |---| line
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            tables.append(rows)
        i += 1
    return tables


def _mean_std_cell(cell):
    """``"71.00 ± 1.41"`` -> (71.0, 1.41); ``"75.00"`` -> (75.0, None)."""
    parts = cell.split(" ± ")
    return float(parts[0]), (float(parts[1]) if len(parts) == 2 else None)


# -- what there is to report ------------------------------------------------------------------

def test_no_robust_records_give_no_section(tmp_path):
    assert report_section(str(tmp_path / "missing")) == []
    assert report_section(str(tmp_path)) == []
    write_json(str(tmp_path / "train.json"), {"kind": "train", "config": {}, "status": "complete"})
    write_json(str(tmp_path / "gan.json"), {"kind": "gan", "config": {}, "status": "complete"})
    assert report_section(str(tmp_path)) == []


def test_unfinished_runs_are_counted_and_left_out_of_the_tables(tmp_path):
    running = _record("sn", 0, 0.6, 0.3, 0.2, status="running")
    no_evaluation = _record("bn", 0, 0.6, 0.3, 0.2)
    del no_evaluation["evaluation"]  # complete, but its evaluation was never written
    _write(tmp_path, [running, no_evaluation])
    lines = report_section(str(tmp_path))
    assert lines[:2] == ["## Adversarial robustness (free adversarial training)", ""]
    assert "2 robust run(s) not complete are left out of the tables." in lines
    assert not any(line.startswith("### ") for line in lines)
    assert _table(lines) == []
    # the published table still closes the section
    assert "| method | FGSM | PGD-20 |" in lines and lines[-1] == ""

    _write(tmp_path / "more", [_record("bn", 1, 0.7, 0.4, 0.3)])
    lines = report_section(str(tmp_path))
    assert "2 robust run(s) not complete are left out of the tables." in lines
    assert [row[0] for row in _table(lines)[0]] == ["bn"]


def test_a_complete_set_of_runs_has_no_pending_line(tmp_path):
    _write(tmp_path, [_record("bn", 0, 0.7, 0.4, 0.3)])
    assert not any("not complete" in line for line in report_section(str(tmp_path)))


# -- the accuracy table -----------------------------------------------------------------------

def test_table_rows_are_mean_and_sample_std_over_seeds_in_method_order(tmp_path):
    values = {  # method -> [(clean, fgsm, pgd) per seed]
        "oni": [(0.61, 0.41, 0.31)],
        "sn": [(0.70, 0.45, 0.36), (0.74, 0.47, 0.40)],
        "convnorm+bn": [(0.75, 0.50, 0.41), (0.77, 0.52, 0.39)],
        "bn": [(0.70, 0.40, 0.30), (0.72, 0.43, 0.34), (0.73, 0.41, 0.29)],
        "plain": [(0.55, 0.20, 0.10)],
    }
    failing = {("bn", 1), ("sn", 0)}
    records = [_record(m, s, *v, checks_passed=(m, s) not in failing) for m, runs in values.items()
               for s, v in enumerate(runs)]
    _write(tmp_path, records)
    lines = report_section(str(tmp_path))
    assert "| method | seeds | clean | FGSM | PGD-20 | gradient-masking checks passed |" in lines
    (rows,) = _table(lines)
    # the order of every table: plain, bn, convnorm, convnorm+bn, convnorm-paper, sn, oni, ocnn
    assert [row[0] for row in rows] == ["plain", "bn", "convnorm+bn", "sn", "oni"]
    for method, seeds, clean, fgsm, pgd, passed in rows:
        runs = values[method]
        assert int(seeds) == len(runs)
        for cell, column in zip((clean, fgsm, pgd), zip(*runs)):
            mean, std = _mean_std_cell(cell)
            assert mean == pytest.approx(statistics.mean(column) * 100, abs=0.005)
            if len(column) == 1:
                assert std is None  # one seed: no spread to show
            else:
                assert std == pytest.approx(statistics.stdev(column) * 100, abs=0.005)
        n_failing = sum(1 for m, _ in failing if m == method)
        assert passed == f"{len(runs) - n_failing}/{len(runs)}"


def test_settings_get_separate_tables_and_methods_and_seeds_share_one(tmp_path):
    _write(tmp_path, [_record("bn", 0, 0.70, 0.40, 0.30), _record("bn", 1, 0.72, 0.42, 0.32),
                      _record("sn", 0, 0.71, 0.41, 0.31),
                      _record("bn", 0, 0.50, 0.20, 0.10, lr=0.05, name="robust-bn-s0-lr0.05")])
    lines = report_section(str(tmp_path))
    assert sum(line.startswith("### ") for line in lines) == 2
    tables = _table(lines)
    assert len(tables) == 2
    by_size = sorted(tables, key=len)
    assert [(r[0], r[1], r[2]) for r in by_size[0]] == [("bn", "1", "50.00")]
    assert [(r[0], r[1]) for r in by_size[1]] == [("bn", "2"), ("sn", "1")]
    assert "lr 0.05 (published: 0.1)" in "\n".join(lines)


# -- titles and how a setting differs from the published one ------------------------------------

def test_the_published_setting_is_named_as_such(tmp_path):
    _write(tmp_path, [_record("bn", 0, 0.8, 0.5, 0.4, preset="paper-free-at")])
    lines = report_section(str(tmp_path))
    assert ("### cifar10, resnet18, full training set, 30 passes of free AT (m=4, eps 8/255, step 8/255, "
            "delta reset: batch)") in lines
    assert "These runs use the published setting (preset `paper-free-at`); attacks on the whole test set." in lines
    assert ("Test accuracy (%) of the final model, L-inf eps 8/255: clean, FGSM, PGD-20 (step 2/255, 1 restart(s), "
            "random start); mean ± std over seeds.") in lines


def test_each_difference_from_the_published_setting_is_named(tmp_path):
    _write(tmp_path, [_record("bn", 0, 0.8, 0.5, 0.4, preset="paper-free-at", epochs=8,
                              epoch_counting="divide-by-replays", schedule="cosine", milestones=(), lr=0.05,
                              eps=0.01, perturbation_reset="carry", train_fraction=0.25, eval_samples=500)])
    lines = report_section(str(tmp_path))
    text = "\n".join(lines)
    assert ("### cifar10, resnet18, 25% of the training set, 8 epochs of gradient computations of free AT "
            "(m=4, eps 0.01, step 8/255, delta reset: carry)") in lines
    (sentence,) = [line for line in lines if line.startswith("These runs differ from the published setting")]
    for part in ("training data 25% (published: 100%)", "epochs 8 (published: 30)",
                 "epoch counting divide-by-replays (published: passes)", "lr 0.05 (published: 0.1)",
                 "lr milestones none (published: 10/20)", "schedule cosine (published: step)",
                 "training eps 0.01 (published: 8/255)", "delta reset carry (published: batch)"):
        assert part in sentence, part
    for same in ("data set", "model ", "replays m", "batch size", "FGSM step", "PGD steps"):
        assert same not in sentence, same  # settings equal to the published ones are not listed
    assert sentence.endswith(". Attacks on the first 500 test images.")
    assert "L-inf eps 0.01:" in text  # the attack radius defaults to the training eps


# -- the reading against the published ranking ---------------------------------------------------

def _ranked(tmp_path, sn_fgsm, cn_fgsm, **overrides):
    records = [_record("sn", s, 0.7, f, f - 0.1, **overrides) for s, f in enumerate(sn_fgsm)]
    records += [_record("convnorm+bn", s, 0.7, f, f - 0.1, **overrides) for s, f in enumerate(cn_fgsm)]
    _write(tmp_path, records)
    return report_section(str(tmp_path))


def test_a_reversal_within_the_seed_spread_is_not_counted_beyond_it(tmp_path):
    # here SN 49.0 ± 1.41 > ConvNorm 47.0 ± 0.00; published ConvNorm 52.9 > SN 52.3; 1.41 < 2.0 < 2 x 1.41
    lines = _ranked(tmp_path, (0.50, 0.48), (0.47, 0.47))
    text = "\n".join(lines)
    assert ("- FGSM, ranked here: sn 49.0 > convnorm+bn 47.0; published: convnorm+bn 52.9 > sn 52.3. Pairs ordered "
            "as published: 0 of 1; of the others, 0 differ here by more than twice the larger seed standard "
            "deviation.") in lines
    assert "not judged" not in text
    assert "- PGD, ranked here: sn 39.0 > convnorm+bn 37.0; published: convnorm+bn 44.8 > sn 44.5." in text


def test_a_reversal_beyond_the_seed_spread_is_counted(tmp_path):
    # here SN 50.5 ± 0.71 > ConvNorm 40.5 ± 0.71: 10 points, far beyond 2 x 0.71
    lines = _ranked(tmp_path, (0.50, 0.51), (0.40, 0.41))
    assert ("- FGSM, ranked here: sn 50.5 > convnorm+bn 40.5; published: convnorm+bn 52.9 > sn 52.3. Pairs ordered "
            "as published: 0 of 1; of the others, 1 differ here by more than twice the larger seed standard "
            "deviation.") in lines


def test_a_ranking_as_published_agrees(tmp_path):
    lines = _ranked(tmp_path, (0.40,), (0.50,))
    assert ("- FGSM, ranked here: convnorm+bn 50.0 > sn 40.0; published: convnorm+bn 52.9 > sn 52.3. Pairs ordered "
            "as published: 1 of 1; of the others, 0 differ here by more than twice the larger seed standard "
            "deviation.") in lines


@pytest.mark.parametrize("overrides", [dict(eval_eps=4 / 255), dict(eval_pgd_steps=10),
                                       dict(eps=4 / 255, step=4 / 255)])
def test_no_reading_for_settings_not_attacked_as_published(tmp_path, overrides):
    assert any(line.startswith("Reading (generated)") for line in _ranked(tmp_path / "as-published", (0.5,), (0.4,)))
    lines = _ranked(tmp_path / "other", (0.5,), (0.4,), **overrides)
    assert not any(line.startswith("Reading (generated)") or line.startswith("- FGSM") for line in lines)


def test_the_attack_heading_follows_the_evaluation_settings(tmp_path):
    _write(tmp_path, [_record("bn", 0, 0.7, 0.4, 0.3, eval_eps=4 / 255, eval_pgd_steps=10, eval_restarts=3,
                              eval_pgd_step=1 / 255)])
    lines = report_section(str(tmp_path))
    assert ("Test accuracy (%) of the final model, L-inf eps 4/255: clean, FGSM, PGD-10 (step 1/255, 3 restart(s), "
            "random start); mean ± std over seeds.") in lines
    assert "| method | seeds | clean | FGSM | PGD-10 | gradient-masking checks passed |" in lines
    assert any(line.startswith("### ") and "eps 8/255" in line for line in lines)  # the title keeps the training eps


# -- gradient-masking checks --------------------------------------------------------------------

def test_each_run_has_a_row_of_its_gradient_masking_checks(tmp_path):
    # names in the opposite order to the seeds: rows go by seed
    ok = _record("bn", 0, 0.7, 0.4, 0.3, sweep_accs=(0.7, 0.55, 0.4237, 0.3, 0.12, 0.011, 0.0), name="run-z")
    fooled = _record("bn", 1, 0.7, 0.4, 0.45, violations=37, checks_passed=False, name="run-a")
    fooled["evaluation"]["checks"]["sweep_monotone"].update(passed=False, max_rise=0.034)
    fooled["evaluation"]["checks"]["sweep_reaches_zero"].update(passed=False, acc_at_largest_eps=0.123)
    _write(tmp_path, [fooled, ok])
    lines = report_section(str(tmp_path))
    assert ("Gradient-masking checks per run: PGD accuracy (%) over the eps sweep (0/255, 2/255, 4/255, 8/255, "
            "16/255, 32/255, 64/255) must fall (up to the tolerance) and reach about zero; PGD must not be weaker "
            "than FGSM (violations: samples fooled by FGSM but not by PGD).") in lines
    (rows,) = _table(lines, "| run | method | seed |")
    assert [row[:3] for row in rows] == [["run-z", "bn", "0"], ["run-a", "bn", "1"]]
    assert rows[0][3:] == ["70.0, 55.0, 42.4, 30.0, 12.0, 1.1, 0.0", "yes (max rise -1.0 ≤ 1)",
                           "yes (0.0 ≤ 5 at 64/255)", "yes (0 violations of 1000)"]
    assert rows[1][4:] == ["**NO** (max rise 3.4 ≤ 1)", "**NO** (12.3 ≤ 5 at 64/255)",
                           "**NO** (37 violations of 1000)"]


def test_checks_that_could_not_run_read_not_run(tmp_path):
    checks = dict(sweep_monotone=dict(passed=None, max_rise=None, tolerance=0.01),
                  sweep_reaches_zero=dict(passed=None, largest_eps=None, largest_eps_255=None,
                                          acc_at_largest_eps=None, threshold=0.05),
                  pgd_not_weaker_than_fgsm=dict(passed=True, pgd_acc=0.3, fgsm_acc=0.4, violations=0,
                                                violation_rate=0.0, violation_tolerance=0.01))
    _write(tmp_path, [_record("sn", 0, 0.7, 0.4, 0.3, sweep_accs=(), checks=checks, checks_passed=None,
                              sweep_eps=())])
    lines = report_section(str(tmp_path))
    (rows,) = _table(lines, "| run | method | seed |")
    assert rows == [["robust-sn-s0", "sn", "0", "—", "not run", "not run", "yes (0 violations of 1000)"]]
    (acc,) = _table(lines)
    assert acc[0][-1] == "0/1"  # no check ran: not counted as passed


# -- the published table and determinism ---------------------------------------------------------

def test_the_published_numbers_close_the_section(tmp_path):
    _write(tmp_path, [_record("bn", 0, 0.7, 0.4, 0.3)])
    lines = report_section(str(tmp_path))
    start = lines.index("| method | FGSM | PGD-20 |")
    assert lines[start + 1:] == ["|---|---|---|", "| ConvNorm (with BN) | 52.9 | 44.8 |", "| SN | 52.3 | 44.5 |",
                                 "| BN | 51.7 | not given |", "| ONI | 48.3 | 41.1 |", "| OCNN | 52.5 | not given |",
                                 ""]


def test_the_section_depends_on_the_records_only(tmp_path):
    records = [_record(m, s, 0.7 + 0.01 * s, 0.4 + 0.02 * s, 0.3 + 0.01 * s) for m in ("sn", "bn", "oni")
               for s in (1, 0)] + [_record("bn", 0, 0.6, 0.3, 0.2, lr=0.05, name="robust-bn-s0-lr"),
                                   _record("sn", 2, 0.6, 0.3, 0.2, status="running")]
    first, second = tmp_path / "a", tmp_path / "b"
    _write(first, records)
    # the same records under other file names, in another order and in subfolders
    for i, r in enumerate(reversed(records)):
        write_json(str(second / f"sub{i % 2}" / f"zz-{len(records) - i}.json"), r)
    lines = report_section(str(first))
    text = "\n".join(lines) + "\n"
    assert report_section(str(first)) == lines
    assert ("\n".join(report_section(str(first))) + "\n").encode() == text.encode()
    assert report_section(str(second)) == lines
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    assert report_section(str(copy)) == lines
    assert not any(str(tmp_path) in line for line in lines)  # no paths in the section
    assert re.search(r"\| bn \| 2 \| 70\.50 ± 0\.71 \|", text)


def test_the_figure_folder_is_accepted_and_left_alone(tmp_path):
    _write(tmp_path / "runs", [_record("bn", 0, 0.7, 0.4, 0.3), _record("sn", 0, 0.7, 0.45, 0.35)])
    lines = report_section(str(tmp_path / "runs"))
    assert report_section(str(tmp_path / "runs"), fig_dir=str(tmp_path / "figures")) == lines
    assert not (tmp_path / "figures").exists()  # the section draws no figure


def test_attack_radius_momentum_and_model_options_that_differ_are_named(tmp_path):
    _write(tmp_path, [_record("bn", 0, 0.8, 0.5, 0.4, preset="paper-free-at", eval_eps=4 / 255, momentum=0.5,
                              gamma=0.2, model_options={"widths": [16, 32, 64, 128]})])
    (sentence,) = [line for line in report_section(str(tmp_path))
                   if line.startswith("These runs differ from the published setting")]
    for part in ("attack eps 4/255 (published: 8/255)", "momentum 0.5 (published: 0.9)",
                 "lr step factor 0.2 (published: 0.1)", "model options widths [16, 32, 64, 128] (published: none)"):
        assert part in sentence, part
