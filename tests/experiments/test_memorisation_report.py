"""The memorisation view: its numbers are the records' numbers, for any curves."""
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnorm.experiments.memorisation_report import (
    DROP_MEMORISED,
    FIT_MEMORISED,
    is_memorisation_folder,
    memorisation_section,
    run_summary,
)


def record(method, rate, seed, test, fitted, final_full=None, wall_time_s=900.0, milestones=(20, 35), schedule="step"):
    cfg = dict(dataset="cifar10", model="resnet18", model_options={"widths": [16, 32, 64, 128]}, epochs=len(test),
               batch_size=32, lr=0.1, schedule=schedule, milestones=list(milestones), weight_decay=1e-4, augment=False,
               train_fraction=0.2, noise="symmetric" if rate else "none", noise_rate=rate, method=method, seed=seed)
    epochs = [dict(epoch=i + 1, test_acc=t, memorized_noisy=(f if rate else None)) for i, (t, f) in
              enumerate(zip(test, fitted))]
    return dict(kind="train", status="complete", config=cfg, epochs=epochs,
                final_test_acc=test[-1] if final_full is None else final_full,
                data=dict(test_size=10000, test_part_size=2000), wall_time_s=wall_time_s,
                provenance=dict(device="test cpu (1 threads)"))


@settings(max_examples=40, deadline=None)
@given(test=st.lists(st.floats(0, 1), min_size=1, max_size=12), fit=st.floats(0, 1))
def test_run_summary_is_best_final_and_drop_of_the_curve(test, fit):
    fitted = [fit * (i + 1) / len(test) for i in range(len(test))]  # rising to ``fit`` at the end
    s = run_summary(record("bn", 0.4, 0, test, fitted, final_full=0.3))
    assert s["best"] == max(test) and s["final"] == test[-1] and s["drop"] == max(test) - test[-1]
    assert s["best_epoch"] == test.index(max(test)) + 1
    assert s["final_full"] == 0.3 and s["fit"] == fitted[-1]
    crossed = [i + 1 for i, f in enumerate(fitted) if f > FIT_MEMORISED]
    assert s["fit_epoch"] == (crossed[0] if crossed else None)
    assert run_summary(record("bn", 0.0, 0, test, fitted))["fit_epoch"] is None


def test_fit_epoch_needs_more_than_the_threshold():
    assert run_summary(record("bn", 0.4, 0, [0.3, 0.3, 0.3], [FIT_MEMORISED, 0.6, 0.7]))["fit_epoch"] == 2


def test_section_tables_differences_and_reading(tmp_path):
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        # BN peaks then falls while fitting the noise; the other method falls less.
        runs.append(record("bn", 0.4, seed, [0.30, 0.45 + shift, 0.35 + shift], [0.1, 0.3, 0.9]))
        runs.append(record("convnorm-paper", 0.4, seed, [0.30, 0.44 + shift, 0.42 + shift], [0.1, 0.2, 0.4]))
        runs.append(record("bn", 0.0, seed, [0.5, 0.6, 0.62 + shift], [0, 0, 0]))
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{i}.json"), r) for i, r in enumerate(runs)]
    lines = memorisation_section(paths, str(folder), str(folder / "figures"))
    text = "\n".join(lines)
    assert ("| bn | sym 40% | 46.00 ± 1.41 | 36.00 ± 1.41 | 10.00 ± 0.00 | 36.00 ± 1.41 | 90.00 ± 0.00 | 3.0 ± 0.0 "
            "| 2 |") in text
    assert "| convnorm-paper | sym 40% | 45.00 ± 1.41 | 43.00 ± 1.41 | 2.00 ± 0.00 |" in text
    assert "| 40.00 ± 0.00 | never | 2 |" in text  # never more than half of its noisy labels fitted
    assert "| bn | clean | 63.00 ± 1.41 | 63.00 ± 1.41 | 0.00 ± 0.00 | 63.00 ± 1.41 | — | — | 2 |" in text
    # paired by seed: final +7 points, drop -8 points on both seeds
    assert "| convnorm-paper | sym 40% | +7.00 ± 0.00 | -8.00 ± 0.00 | 1.41 | 0.00 | 2 |" in text
    assert "- sym 40%: runs that memorise: bn 2/2 (mean drop 10.00 points); convnorm-paper 0/2" in text
    assert "nothing to memorise" not in text
    # Against BN: +7 final and -8 drop, both beyond twice the larger seed std (1.41 and the floor).
    assert "- sym 40%: convnorm-paper: final (all test) higher (+7.00), drop lower (-8.00)." in text
    assert ("these records side with it for convnorm-paper final (all test) at sym 40%, convnorm-paper drop at "
            "sym 40% and against it for no comparison.") in text
    assert "- clean:" not in text  # no other method ran on clean labels
    clean_only = [(p, r) for p, r in paths if r["config"]["noise_rate"] == 0]
    assert "No run with noisy labels is complete yet" in "\n".join(
        memorisation_section(clean_only, str(folder), str(folder / "figures")))
    assert os.path.exists(folder / "figures" / next(p for p in os.listdir(folder / "figures")))


def test_memorisation_thresholds_and_folders():
    assert (FIT_MEMORISED, DROP_MEMORISED) == (0.5, 0.05)
    assert is_memorisation_folder(os.path.join("memorisation-cifar10", "a.json"))
    assert is_memorisation_folder(os.path.join("x", "memorisation-pilot", "a.json"))
    assert not is_memorisation_folder(os.path.join("label-noise-cifar10", "a.json"))


@pytest.mark.parametrize("pending", [True, False])
def test_incomplete_runs_are_counted_not_shown(tmp_path, pending):
    r = record("bn", 0.4, 0, [0.3, 0.4], [0.1, 0.6])
    if pending:
        r["status"] = "running"
    lines = memorisation_section([(str(tmp_path / "memorisation-x" / "a.json"), r)], str(tmp_path),
                                 str(tmp_path / "figures"))
    assert ("1 run(s) not complete are left out." in lines) == pending
    assert any(line.startswith("| bn | sym 40%") for line in lines) != pending


@settings(max_examples=20, deadline=None)
@given(hours=st.lists(st.tuples(st.sampled_from(["bn", "convnorm-paper", "sn"]), st.floats(0, 20),
                                st.sampled_from([1, 2])), min_size=1, max_size=6))
def test_cost_is_the_sum_of_the_records_process_time(tmp_path_factory, hours):
    import re

    folder = tmp_path_factory.mktemp("results")
    runs = []
    for i, (m, h, world) in enumerate(hours):
        rec = record(m, 0.4, i, [0.5, 0.4], [0.3, 0.6], wall_time_s=h * 3600)
        rec["world_size"] = world
        runs.append((str(folder / "memorisation-x" / f"r{i}.json"), rec))
    text = "\n".join(memorisation_section(runs, str(folder), str(folder / "figures")))
    line = next(l for l in text.splitlines() if l.startswith("Cost:"))
    total = float(re.search(r"took ([0-9.]+) process-hours", line)[1])
    assert total == pytest.approx(sum(h * w for _, h, w in hours), abs=0.051)
    for m in {m for m, _, _ in hours}:
        shown = float(re.search(rf"\b{re.escape(m)} ([0-9.]+) h\b", line)[1])
        assert shown == pytest.approx(sum(h * w for mm, h, w in hours if mm == m), abs=0.051)
    assert ("this complete run took" in line) == (len(hours) == 1) and "on test cpu (1 threads)" in line


def test_claim_is_tallied_for_convnorm_methods_under_noise_only(tmp_path):
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.01)):
        runs.append(record("bn", 0.4, seed, [0.45 + shift, 0.40 + shift], [0.3, 0.9]))
        # convnorm+bn ends lower than BN and falls more: against the claim, on both measures.
        runs.append(record("convnorm+bn", 0.4, seed, [0.45 + shift, 0.30 + shift], [0.3, 0.9]))
        # sn ends higher, but SN is not what the claim is about.
        runs.append(record("sn", 0.4, seed, [0.55 + shift, 0.50 + shift], [0.3, 0.9]))
        # On clean labels convnorm-paper leads BN: a control, not counted for the claim.
        runs.append(record("bn", 0.0, seed, [0.60 + shift, 0.60 + shift], [0, 0]))
        runs.append(record("convnorm-paper", 0.0, seed, [0.70 + shift, 0.70 + shift], [0, 0]))
    # One seed: paired with BN's seed 0 only, and not judged.
    runs.append(record("convnorm-paper", 0.4, 0, [0.45, 0.44], [0.3, 0.9]))
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{i}.json"), r) for i, r in enumerate(runs)]
    text = "\n".join(memorisation_section(paths, str(folder), str(folder / "figures")))
    assert "- clean: convnorm-paper: final (all test) higher (+10.00), drop within spread (+0.00)." in text
    assert ("- sym 40%: convnorm+bn: final (all test) lower (-10.00), drop higher (+10.00); convnorm-paper: "
            "final (all test) one seed (+4.00), drop one seed (-4.00); sn: final (all test) higher (+10.00)") in text
    assert ("side with it for no comparison and against it for convnorm+bn final (all test) at sym 40%, "
            "convnorm+bn drop at sym 40%; 2 comparison(s) are within the spread or have one seed.") in text


def test_a_smaller_drop_from_a_lower_best_is_marked(tmp_path):
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.01), (2, 0.02)):
        runs.append(record("bn", 0.8, seed, [0.50 + shift, 0.35 + shift], [0.3, 0.9]))
        # convnorm-paper falls 10 points where BN falls 15, but from a best 10 points lower.
        runs.append(record("convnorm-paper", 0.8, seed, [0.40 + shift, 0.30 + shift], [0.3, 0.9]))
        # convnorm+bn falls 7 points from the same best as BN: a smaller drop, unmarked.
        runs.append(record("convnorm+bn", 0.8, seed, [0.50 + shift, 0.43 + shift], [0.3, 0.9]))
        # On clean labels convnorm-paper is level with BN: net of that, its best under noise is lower too.
        runs.append(record("bn", 0.0, seed, [0.60 + shift, 0.60 + shift], [0, 0]))
        runs.append(record("convnorm-paper", 0.0, seed, [0.60 + shift, 0.60 + shift], [0, 0]))
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{i}.json"), r) for i, r in enumerate(runs)]
    text = "\n".join(memorisation_section(paths, str(folder), str(folder / "figures")))
    assert ("- sym 80%: convnorm+bn: final (all test) higher (+8.00), drop lower (-8.00); convnorm-paper: final "
            "(all test) lower (-5.00), drop lower (-5.00), from a lower best (-10.00).") in text
    assert ("side with it for convnorm+bn final (all test) at sym 80%, convnorm+bn drop at sym 80%, convnorm-paper "
            "drop at sym 80% (from a lower best) and against it for convnorm-paper final (all test) at sym 80%") in text
    net = text.split("Net of the clean-label lead (generated)")[1]
    assert ("convnorm-paper (3 seeds): final (all test) lower (-5.00: -5.00 under noise, +0.00 on clean labels), "
            "drop lower (-5.00: -5.00 under noise, +0.00 on clean labels), from a lower best (-10.00).") in net


def test_no_claim_reading_without_a_method_beside_bn(tmp_path):
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{s}.json"), record("bn", 0.4, s, [0.4, 0.3], [0.2, 0.9]))
             for s in (0, 1)]
    text = "\n".join(memorisation_section(paths, str(folder), str(folder / "figures")))
    assert "Against BN" not in text and "paper claims" not in text


def test_tally_says_plainly_when_nothing_is_beyond_the_spread(tmp_path):
    runs = [record("bn", 0.4, 0, [0.45, 0.40], [0.3, 0.9]), record("convnorm-paper", 0.4, 0, [0.45, 0.41], [0.3, 0.9])]
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{i}.json"), r) for i, r in enumerate(runs)]
    text = "\n".join(memorisation_section(paths, str(folder), str(folder / "figures")))
    assert ("No comparison of a ConvNorm method under noise is beyond the seed spread yet (2 within the spread or "
            "with one seed).") in text
    assert "side with it" not in text and "-0.00" not in text


def test_reading_prints_the_difference_tables_figure(tmp_path):
    # Finals 35.64/36.58 against 38.87/39.68: the difference of means is 3.16500...01 points and
    # the mean of the paired differences 3.16499...83, which round to +3.17 and +3.16. The
    # reading must print the difference table's figure.
    runs = []
    for seed, (b, c) in enumerate(((0.3564, 0.3887), (0.3658, 0.3968))):
        runs.append(record("bn", 0.4, seed, [0.45, b], [0.3, 0.9], final_full=b))
        runs.append(record("convnorm-paper", 0.4, seed, [0.47, c], [0.3, 0.9], final_full=c))
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{i}.json"), r) for i, r in enumerate(runs)]
    text = "\n".join(memorisation_section(paths, str(folder), str(folder / "figures")))
    assert "| convnorm-paper | sym 40% | +3.16 ± " in text
    assert "convnorm-paper: final (all test) higher (+3.16)" in text


def test_net_reading_takes_off_the_lead_on_clean_labels_per_seed(tmp_path):
    runs = []
    # Seeds differ a lot (shift) while each method's lead over BN differs little (e): the net
    # reading judges against the spread of the leads, the plain one against that of accuracies.
    for seed, shift, e in ((0, 0.0, 0.0), (1, 0.05, 0.01), (2, 0.10, 0.02)):
        runs.append(record("bn", 0.0, seed, [0.60 + shift, 0.60 + shift], [0, 0]))
        runs.append(record("bn", 0.4, seed, [0.45 + shift, 0.35 + shift], [0.3, 0.9]))
        # convnorm-paper leads BN by 10 + e points on clean labels and under noise: no lead net of clean.
        runs.append(record("convnorm-paper", 0.0, seed, [0.70 + shift + e, 0.70 + shift + e], [0, 0]))
        runs.append(record("convnorm-paper", 0.4, seed, [0.55 + shift + e, 0.45 + shift + e], [0.3, 0.9]))
        # convnorm+bn leads by e on clean labels and by 3 + e under noise, falling 3 points less than BN.
        runs.append(record("convnorm+bn", 0.0, seed, [0.60 + shift + e, 0.60 + shift + e], [0, 0]))
        runs.append(record("convnorm+bn", 0.4, seed, [0.45 + shift + e, 0.38 + shift + e], [0.3, 0.9]))
    # sn on one seed: shown, not judged, and not part of the claim's tally.
    runs.append(record("sn", 0.0, 0, [0.60, 0.60], [0, 0]))
    runs.append(record("sn", 0.4, 0, [0.45, 0.35], [0.3, 0.9]))
    # A clean run without its noisy partner (and the reverse) pairs with nothing.
    runs.append(record("convnorm+bn", 0.0, 3, [0.9, 0.9], [0, 0]))
    runs.append(record("bn", 0.0, 3, [0.1, 0.1], [0, 0]))
    runs.append(record("convnorm-paper", 0.4, 4, [0.9, 0.9], [0.3, 0.9]))
    runs.append(record("bn", 0.4, 4, [0.1, 0.1], [0.3, 0.9]))
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{i}.json"), r) for i, r in enumerate(runs)]
    text = "\n".join(memorisation_section(paths, str(folder), str(folder / "figures")))
    plain, net = text.split("Net of the clean-label lead (generated)")
    assert "convnorm+bn: final (all test) within spread (+4.00)" in plain  # seed spread of accuracies: 5-6 points
    assert ("- sym 40%: convnorm+bn (3 seeds): final (all test) higher (+3.00: +4.00 under noise, +1.00 on clean "
            "labels), drop lower (-3.00: -3.00 under noise, +0.00 on clean labels); convnorm-paper (3 seeds): final "
            "(all test) within spread (+0.00: +11.00 under noise, +11.00 on clean labels), drop within spread "
            "(+0.00: +0.00 under noise, +0.00 on clean labels); sn (1 seed): final (all test) one seed (+0.00: "
            "+0.00 under noise, +0.00 on clean labels), drop one seed (+0.00: +0.00 under noise, +0.00 on clean "
            "labels).") in net
    assert "- clean:" not in net
    assert ("The same claim, net of the clean-label lead. Beyond the seed spread, these records side with it for "
            "convnorm+bn final (all test) at sym 40%, convnorm+bn drop at sym 40% and against it for no comparison; "
            "2 comparison(s) are within the spread or have one seed.") in net
    # Without clean runs there is no control, and no net reading.
    noisy_only = [(p, r) for p, r in paths if r["config"]["noise_rate"] > 0]
    assert "Net of the clean-label lead" not in "\n".join(
        memorisation_section(noisy_only, str(folder), str(folder / "figures")))


def test_epoch_fitted_names_the_runs_that_never_cross(tmp_path):
    runs = [record("bn", 0.4, 0, [0.4, 0.3, 0.3], [0.2, 0.6, 0.9]), record("bn", 0.4, 1, [0.4, 0.3, 0.3], [0.2, 0.3, 0.4]),
            record("bn", 0.4, 2, [0.4, 0.3, 0.3], [0.2, 0.4, 0.7])]
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{i}.json"), r) for i, r in enumerate(runs)]
    text = "\n".join(memorisation_section(paths, str(folder), str(folder / "figures")))
    assert "| 2.5 ± 0.7 (1 never) | 3 |" in text


def test_fit_before_step_is_the_last_epoch_at_the_first_learning_rate():
    fitted = [0.1, 0.3, 0.8, 0.9]
    assert run_summary(record("bn", 0.4, 0, [0.3] * 4, fitted, milestones=(2, 3)))["fit_before_step"] == 0.3
    assert run_summary(record("bn", 0.4, 0, [0.3] * 4, fitted, milestones=(4,)))["fit_before_step"] == 0.9
    # No step inside the run, no step schedule, or no noisy labels: nothing to read.
    assert run_summary(record("bn", 0.4, 0, [0.3] * 4, fitted, milestones=(5,)))["fit_before_step"] is None
    assert run_summary(record("bn", 0.4, 0, [0.3] * 4, fitted, milestones=(2,), schedule="cosine"))[
        "fit_before_step"] is None
    assert run_summary(record("bn", 0.0, 0, [0.3] * 4, fitted, milestones=(2,)))["fit_before_step"] is None


def _fits(crossing, before=0.1, epochs=10, step=6):
    """Noisy-label fit per epoch that first exceeds the threshold at ``crossing`` (None: never),
    with ``before`` fitted in epoch ``step`` if it has not crossed by then."""
    return [0.9 if crossing is not None and i >= crossing else before if i == step else 0.1
            for i in range(1, epochs + 1)]


def test_how_soon_reading_judges_the_fit_epoch_against_bn_per_seed(tmp_path):
    crossings = {"bn": (8, 8, 8), "convnorm+bn": (10, 10, 10), "convnorm-paper": (3, 4, 3), "sn": (5, None, None),
                 "oni": (4, 4, None)}
    before = (0.30, 0.32, 0.34)
    runs = [record(m, 0.4, seed, [0.4] * 10, _fits(epoch, before[seed]), milestones=(6, 8))
            for m, epochs in crossings.items() for seed, epoch in enumerate(epochs)]
    runs += [record(m, 0.0, 0, [0.5] * 10, [0.0] * 10, milestones=(6, 8)) for m in crossings]  # no fit epoch
    runs += [record("bn", 0.8, 0, [0.2] * 10, _fits(None), milestones=(6, 8)),
             record("sn", 0.8, 0, [0.2] * 10, _fits(2), milestones=(6, 8))]
    folder = tmp_path / "results"
    paths = [(str(folder / "memorisation-x" / f"r{i}.json"), r) for i, r in enumerate(runs)]
    text = "\n".join(memorisation_section(paths, str(folder), str(folder / "figures")))
    sym40, sym80 = text.split("How soon (generated)")[1].split("\n\n")[1].splitlines()
    methods = "|".join(re.escape(m) for m in crossings)
    parts = dict(part.split(": ", 1) for part in re.split(f"; (?=(?:{methods}): )", sym40[len("- sym 40%: "):-1]))
    # Two epochs later on identical seeds is within the one-epoch floor's bound (2 x 1 epoch).
    assert parts["convnorm+bn"] == ("epoch fitted > 50% within spread (+2.0 epochs: 10.0 against 8.0, 3 seeds), "
                                    "fitted in epoch 6 within spread (+0.00 points: 32.00 against 32.00)")
    assert parts["convnorm-paper"] == ("epoch fitted > 50% sooner (-4.7 epochs: 3.3 against 8.0, 3 seeds), "
                                       "fitted in epoch 6 higher (+58.00 points: 90.00 against 32.00)")
    # Seeds on which only BN crossed are the method crossing later: counted, and they turn a
    # "sooner" on the other seeds into "mixed".
    assert parts["sn"].startswith("epoch fitted > 50% one seed (-3.0 epochs: 5.0 against 8.0, 1 seed; only BN "
                                  "crossed on 2, only sn on 0), fitted in epoch 6 ")
    assert parts["oni"].startswith("epoch fitted > 50% mixed (-4.0 epochs: 4.0 against 8.0, 2 seeds; only BN "
                                   "crossed on 1, only oni on 0)")
    assert sym80 == ("- sym 80%: sn: epoch fitted > 50% not judged (no seed on which both crossed; only BN crossed "
                     "on 0, only sn on 1), fitted in epoch 6 one seed (+80.00 points: 90.00 against 10.00).")
