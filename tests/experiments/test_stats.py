"""The seed-spread rule every report view judges differences by."""
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from convnorm.experiments.stats import SPREAD_FACTOR, SPREAD_FLOOR, format_mean_std, judge_difference

accuracies = st.lists(st.floats(0, 1), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(base=accuracies, other=accuracies)
def test_judge_difference_is_the_mean_gap_against_the_larger_spread(base, other):
    verdict, diff = judge_difference(base, other)
    assert abs(diff - (statistics.fmean(other) - statistics.fmean(base))) < 1e-12
    if len(base) < 2 or len(other) < 2:
        assert verdict == "one seed"
        return
    bound = SPREAD_FACTOR * max(statistics.stdev(base), statistics.stdev(other), SPREAD_FLOOR)
    if abs(diff) > bound + 1e-12:
        assert verdict == ("higher" if diff > 0 else "lower")
    elif abs(diff) < bound - 1e-12:
        assert verdict == "within spread"
    # Swapping the sides mirrors the verdict.
    mirrored = {"higher": "lower", "lower": "higher", "within spread": "within spread"}
    if abs(abs(diff) - bound) > 1e-12:
        assert judge_difference(other, base)[0] == mirrored[verdict]


def test_judge_difference_at_hand_picked_gaps():
    # Sample std (ddof=1) of two values 0.02 apart is 0.0141, so the gap must exceed 0.0283;
    # with the population std (0.01) the 0.025 gap would count.
    assert judge_difference([0.50, 0.52], [0.54, 0.56])[0] == "higher"
    assert judge_difference([0.50, 0.52], [0.525, 0.545])[0] == "within spread"
    assert judge_difference([0.50, 0.52], [0.47, 0.49])[0] == "lower"
    # Identical seeds: the floor, not a zero spread, sets the bound.
    assert judge_difference([0.5, 0.5], [0.5005, 0.5005])[0] == "within spread"
    assert judge_difference([0.5, 0.5], [0.503, 0.503])[0] == "higher"
    assert judge_difference([0.5], [0.9, 0.9])[0] == "one seed"
    # A floor in the values' own unit: epochs that differ by less than two whole epochs on
    # identical seeds are within the spread, whatever the accuracy floor says.
    assert judge_difference([20.0, 20.0], [18.5, 18.5], floor=1.0)[0] == "within spread"
    assert judge_difference([20.0, 20.0], [17.5, 17.5], floor=1.0)[0] == "lower"


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(0, 60), min_size=0, max_size=5), scale=st.sampled_from([1.0, 100.0]),
       digits=st.integers(0, 3))
def test_format_mean_std_prints_mean_and_sample_std_at_the_asked_decimals(values, scale, digits):
    text = format_mean_std(values, scale=scale, digits=digits)
    if not values:
        assert text == "—"
        return
    numbers = text.split(" ± ")
    assert len(numbers) == (1 if len(values) == 1 else 2)
    expected = [statistics.fmean(values) * scale] + ([statistics.stdev(values) * scale] if len(values) > 1 else [])
    for printed, exact in zip(numbers, expected):
        assert len(printed.partition(".")[2]) == digits
        assert abs(float(printed) - exact) <= 0.5 * 10 ** -digits + 1e-9 * max(1.0, abs(exact))
