"""The demo's table and reading are computed from the records, for any numbers."""
from hypothesis import given, settings
from hypothesis import strategies as st

from convnorm.experiments.demo import demo_reading, demo_table


def _record(method, rate, acc, epochs=3):
    return {"config": {"method": method, "noise_rate": rate, "epochs": epochs}, "final_test_acc": acc}


@settings(max_examples=50, deadline=None)
@given(accs=st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_reading_follows_the_numbers(accs):
    records = [_record("bn", 0.0, accs[0]), _record("convnorm-paper", 0.0, accs[1]),
               _record("bn", 0.6, accs[2]), _record("convnorm-paper", 0.6, accs[3])]
    reading = demo_reading(records)
    clean, noisy = reading.split(";")
    for part, bn, block in ((clean, accs[0], accs[1]), (noisy, accs[2], accs[3])):
        assert f"{block * 100:.2f}%" in part and f"({bn * 100:.2f}%)" in part
        diff = round((block - bn) * 100, 2)
        expected = "above" if diff > 0 else "below" if diff < 0 else "level with"
        assert f"{expected} BN" in part
    table = demo_table(records)
    assert table[2] == f"| BN | {accs[0] * 100:.2f} | {accs[2] * 100:.2f} |"
    assert table[3] == f"| ConvNorm+BN (paper) | {accs[1] * 100:.2f} | {accs[3] * 100:.2f} |"


def test_reading_without_a_pair_says_so():
    assert "nothing to compare" in demo_reading([_record("bn", 0.0, 0.5)])
