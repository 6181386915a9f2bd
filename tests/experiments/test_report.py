"""`convnorm report`: tables from records, byte-identical on regeneration."""
import math
import re
import shutil
from pathlib import Path

import pytest

from convnorm.experiments import report
from convnorm.experiments.records import write_json
from convnorm.experiments.report import build_report, memorisation_onset
from convnorm.experiments.stats import format_mean_std, mean_std


def fake_run(method, noise_rate, seed, acc, best, frac=1.0, noise="symmetric"):
    cfg = dict(dataset="fashion-mnist", model="small_resnet", method=method, epochs=3, batch_size=128, lr=0.05,
               schedule="cosine", weight_decay=5e-4, augment=False, noise=noise if noise_rate else "none",
               noise_rate=noise_rate, train_fraction=frac, seed=seed)
    epochs = [dict(epoch=e + 1, test_acc=acc - 0.01 * (2 - e), memorized_noisy=0.1 * e if noise_rate else None,
                   val_acc=0.5 + 0.1 * e) for e in range(3)]
    return dict(kind="train", status="complete", config=cfg, seed=seed, epochs=epochs, final_test_acc=acc,
                best_val_test_acc=best, provenance={})


def write_runs(folder):
    runs = [fake_run("bn", 0.0, 0, 0.90, 0.91), fake_run("bn", 0.0, 1, 0.92, 0.93),
            fake_run("convnorm", 0.0, 0, 0.89, 0.90), fake_run("bn", 0.4, 0, 0.80, 0.85),
            fake_run("convnorm", 0.4, 0, 0.82, 0.86), fake_run("bn", 0.0, 0, 0.70, 0.71, frac=0.1),
            fake_run("convnorm", 0.0, 0, 0.72, 0.73, frac=0.1), fake_run("bn", 0.4, 0, 0.6, 0.7, noise="asymmetric")]
    for i, r in enumerate(runs):
        write_json(str(folder / f"run{i}.json"), r)
    running = fake_run("sn", 0.0, 0, 0.5, 0.5)
    running["status"] = "running"
    write_json(str(folder / "running.json"), running)


def test_mean_std_is_the_sample_statistic():
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(mean_std([3.0])[1])
    assert format_mean_std([0.9, 0.92]) == "91.00 ± 1.41"
    assert format_mean_std([0.9]) == "90.00"
    assert (report.mean_std, report.format_mean_std) == (mean_std, format_mean_std)  # the old home still works


def test_report_tables_come_from_records(tmp_path):
    write_runs(tmp_path)
    text = open(build_report(str(tmp_path))).read()
    assert "| bn | 91.00 ± 1.41 / 92.00 ± 1.41 (2) | 80.00 / 85.00 (1) | 60.00 / 70.00 (1) |" in text
    assert "| convnorm | 89.00 / 90.00 (1) | 82.00 / 86.00 (1) | — |" in text
    assert "| bn | 70.00 / 71.00 (1) | 91.00 ± 1.41 / 92.00 ± 1.41 (2) |" in text  # per data fraction
    assert "1 training run(s) not complete" in text
    assert "| clean | -2.00 (1.41) |" in text  # convnorm 89 minus bn's mean 91, bn's seed std
    assert "| sym 40% | +2.00 (—) |" in text
    assert (tmp_path / "figures").is_dir() and any(p.suffix == ".png" for p in (tmp_path / "figures").iterdir())


def test_clean_runs_on_a_single_fraction_get_a_table(tmp_path):
    # A study on 20% of the data: no full-data runs and no scarcity table to hold its clean runs.
    for i, (method, acc) in enumerate((("bn", 0.70), ("convnorm", 0.60))):
        write_json(str(tmp_path / f"r{i}.json"), fake_run(method, 0.0, 0, acc, acc, frac=0.2))
    text = open(build_report(str(tmp_path))).read()
    assert "20% of the training set" in text
    assert "| convnorm | 60.00 / 60.00 (1) |" in text


def test_report_is_byte_identical_when_regenerated(tmp_path):
    write_runs(tmp_path)
    path = build_report(str(tmp_path))
    first = {p.name: p.read_bytes() for p in (tmp_path / "figures").iterdir()}
    first["README.md"] = open(path, "rb").read()
    build_report(str(tmp_path))
    second = {p.name: p.read_bytes() for p in (tmp_path / "figures").iterdir()}
    second["README.md"] = open(path, "rb").read()
    assert first == second


def test_corrupt_record_is_named(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        build_report(str(tmp_path))


def test_reading_judges_differences_against_the_seed_spread(tmp_path):
    accs = {("bn", 0.0): (0.90, 0.92), ("convnorm", 0.0): (0.95, 0.955),  # +4.25 > 2 x 1.41: better
            ("bn", 0.4): (0.81, 0.79), ("convnorm", 0.4): (0.80, 0.82),   # +1.00: within spread
            ("bn", 0.8): (0.60, 0.61), ("convnorm+bn", 0.8): (0.50, 0.52),  # -9.50 > 2 x 1.41: worse
            ("convnorm+bn", 0.4): (0.95, 0.96)}                            # +15.50: better
    i = 0
    for (method, rate), pair in accs.items():
        for seed, acc in enumerate(pair):
            write_json(str(tmp_path / f"r{i}.json"), fake_run(method, rate, seed, acc, acc))
            i += 1
    write_json(str(tmp_path / "single.json"), fake_run("sn", 0.4, 0, 0.7, 0.7))
    text = open(build_report(str(tmp_path))).read()
    assert "- convnorm against bn, 2 condition(s): higher in 1: clean (+4.25); within spread in 1: sym 40% (+1.00)." \
        in text
    assert "- convnorm+bn against bn, 2 condition(s): higher in 1: sym 40% (+15.50); lower in 1: sym 80% (-9.50)." \
        in text
    assert "- sn against bn, 1 condition(s): one seed in 1: sym 40% (-10.00)." in text
    assert ("these records side with it for convnorm+bn at sym 40% and against it for convnorm+bn at sym 80%; "
            "1 other noisy or scarce comparison(s) are within the spread or have one seed.") in text


def test_reading_floors_the_spread_and_skips_single_seed_sides(tmp_path):
    runs = [fake_run("bn", 0.4, 0, 0.800, 0.8), fake_run("bn", 0.4, 1, 0.800, 0.8),
            fake_run("convnorm", 0.4, 0, 0.8015, 0.8), fake_run("convnorm", 0.4, 1, 0.8015, 0.8),  # +0.15 < 2 x 0.1
            fake_run("bn", 0.8, 0, 0.5, 0.5), fake_run("bn", 0.8, 1, 0.6, 0.6), fake_run("convnorm", 0.8, 0, 0.9, 0.9)]
    for i, r in enumerate(runs):
        write_json(str(tmp_path / f"r{i}.json"), r)
    text = open(build_report(str(tmp_path))).read()
    assert "- convnorm against bn, 2 condition(s): within spread in 1: sym 40% (+0.15); one seed in 1: sym 80% " \
        "(+35.00)." in text
    assert "The paper claims" not in text  # nothing beyond the spread: no verdict on the claim


@pytest.mark.parametrize("fitted, onset", [
    ([0.30, 0.20, 0.15, 0.10], None),          # falls throughout: never memorises
    ([0.30, 0.20, 0.205, 0.21], None),         # creeps up by less than the threshold
    ([0.30, 0.20, 0.25, 0.40], 3),             # rises 5 points above its lowest earlier value
    ([0.05, 0.06, 0.07, 0.08], 3),             # slow climb: 0.07 is the first more than 1 point above 0.05
    ([0.10, 0.02, 0.05, 0.01], 3),             # a rise counts even if the fraction falls again later
    ([], None),
])
def test_memorisation_onset_is_the_first_rise_above_the_running_minimum(fitted, onset):
    assert memorisation_onset(fitted) == onset
    # The slow reference: the first epoch whose value beats the minimum of all earlier ones by > 1 point.
    reference = next((i + 1 for i in range(1, len(fitted)) if fitted[i] - min(fitted[:i]) > 0.01), None)
    assert memorisation_onset(fitted) == reference


def test_memorisation_reading_names_the_runs_that_start_memorising(tmp_path):
    curves = {("bn", 0): [0.30, 0.20, 0.10], ("bn", 1): [0.25, 0.22, 0.21],
              ("convnorm", 0): [0.40, 0.10, 0.30]}
    for i, ((method, seed), fitted) in enumerate(curves.items()):
        run = fake_run(method, 0.4, seed, 0.8, 0.8)
        for epoch, value in zip(run["epochs"], fitted):
            epoch["memorized_noisy"] = value
        write_json(str(tmp_path / f"r{i}.json"), run)
    write_json(str(tmp_path / "clean.json"), fake_run("bn", 0.0, 0, 0.9, 0.9))
    text = open(build_report(str(tmp_path))).read()
    assert ("- sym 40%, 3 run(s): 25.0–40.0% after epoch 1, 10.0–30.0% after epoch 3; memorisation sets in for 1: "
            "convnorm seed 0 at epoch 3.") in text
    assert "- clean" not in text.split("Memorisation (generated)")[1]


RESULTS = Path(__file__).resolve().parents[2] / "results"


@pytest.mark.skipif(not (RESULTS / "README.md").is_file(), reason="no committed results folder")
def test_committed_report_is_what_its_records_generate(tmp_path):
    # The published report must be the report of the published records, byte for byte; a
    # stale README (records changed, report not regenerated) fails here. Figures are only
    # checked to exist: their PNG bytes depend on the matplotlib release.
    copy = tmp_path / "results"
    shutil.copytree(RESULTS, copy, ignore=shutil.ignore_patterns("README.md", "figures"))
    regenerated = Path(build_report(str(copy)))
    assert regenerated.read_bytes() == (RESULTS / "README.md").read_bytes(), \
        "results/README.md is stale: run `convnorm report results` and commit the result"
    assert sorted(p.name for p in (copy / "figures").iterdir()) == sorted(p.name for p in (RESULTS / "figures").iterdir())


# A decimal figure, whole when grouped by commas, with its sign when one stands before it
# (after a space or a bracket, so the dash of a range such as 5-18.7 is not a sign).
_FIGURE = r"(?:(?<![^\s(])[-+])?(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)\.\d+(?!\d)"


def _decimal_figures(text):
    return re.findall(_FIGURE, text)


def _shows(figure, text):
    """Whether ``text`` shows ``figure`` as a figure of its own: a signed figure with its sign."""
    before = r"(?<![\w.,+-])" if figure[0] in "+-" else r"(?<![\w.,])"
    return re.search(before + re.escape(figure) + r"(?!\d)", text) is not None


def test_written_reading_quotes_only_figures_the_tables_show():
    # The reading in PREAMBLE.md is prose written from the generated tables; every decimal
    # figure it quotes must appear, as written, in the generated part of the report, so a
    # figure typed by hand, or left behind when the records changed, fails here.
    reading = (RESULTS / "PREAMBLE.md").read_text().strip()
    report_text = (RESULTS / "README.md").read_text()
    assert reading in report_text
    generated = report_text.replace(reading, "")
    missing = [figure for figure in _decimal_figures(reading) if not _shows(figure, generated)]
    assert not missing, f"results/PREAMBLE.md quotes figures no generated table shows: {missing}"


def test_figure_check_tells_a_rounded_figure_from_the_table_value():
    assert _decimal_figures("3.7 to 15.26, 0.79%, (1.5), 5-18.7, 2.5.") == ["3.7", "15.26", "0.79", "1.5", "18.7",
                                                                            "2.5"]
    assert _decimal_figures("(-8.00) and +3.23 but 1,234.5") == ["-8.00", "+3.23", "1,234.5"]
    assert not _shows("3.7", "conv norms 3.70 to 15.26") and not _shows("5.2", "15.26")
    assert _shows("3.70", "conv norms 3.70 to 15.26") and _shows("15.26", "(3.70–15.26)")
    # A sign quoted is a sign checked; an unsigned figure matches a signed cell.
    assert not _shows("+3.23", "| -3.23 |") and _shows("-3.23", "| -3.23 |") and _shows("3.23", "| -3.23 |")
    assert not _shows("234.5", "9,234.5") and _shows("1,234.5", "of 1,234.5 images")
