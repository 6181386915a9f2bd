"""Label noise and sample selection: exact counts, exact maps, determinism, argument checks."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convnorm.experiments.corruptions import (
    ASYMMETRIC_NOISE_MAPS, asymmetric_noise, per_class_subset, realised_noise_rate, symmetric_noise,
    train_val_split,
)


def balanced_labels(n_per_class=100, num_classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return labels[torch.randperm(labels.numel(), generator=g)]


def uneven_labels(num_classes=10, seed=0):
    """Class c has 7 * c + 3 samples, shuffled."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((7 * c + 3,), c) for c in range(num_classes)])
    return labels[torch.randperm(labels.numel(), generator=g)]


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0, 1), n=st.integers(1, 300), k=st.integers(2, 12), seed=st.integers(0, 2**31))
def test_flip_variant_changes_exactly_round_rate_n(rate, n, k, seed):
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))
    noisy = symmetric_noise(labels, rate, k, seed=seed, variant="flip")
    assert noisy.dtype == torch.int64 and noisy.shape == labels.shape
    assert int((noisy != labels).sum()) == round(rate * n)
    assert noisy.min() >= 0 and noisy.max() < k
    assert realised_noise_rate(labels, noisy) == pytest.approx(round(rate * n) / n)


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0, 1), n=st.integers(1, 300), k=st.integers(2, 12), seed=st.integers(0, 2**31))
def test_uniform_variant_redraws_exactly_round_rate_n(rate, n, k, seed):
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))
    noisy = symmetric_noise(labels, rate, k, seed=seed, variant="uniform")
    # The same samples are chosen as in the flip variant (same generator, same first draw).
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:round(rate * n)]
    untouched = torch.ones(n, dtype=torch.bool)
    untouched[chosen] = False
    assert torch.equal(noisy[untouched], labels[untouched])
    assert chosen.numel() == round(rate * n)
    assert noisy.min() >= 0 and noisy.max() < k


def test_uniform_variant_keeps_true_label_about_one_in_k():
    labels = balanced_labels(1000, 10)
    noisy = symmetric_noise(labels, 0.6, 10, seed=0)
    # 6000 relabelled uniformly over 10 classes: about 600 keep their label.
    assert realised_noise_rate(labels, noisy) == pytest.approx(0.6 * 0.9, abs=0.01)
    # New labels are uniform over all classes.
    counts = noisy.bincount(minlength=10).double()
    assert (counts - 1000).abs().max() < 100


def test_flip_targets_are_uniform_over_other_classes():
    labels = torch.zeros(20000, dtype=torch.int64)
    noisy = symmetric_noise(labels, 1.0, 5, seed=1, variant="flip")
    counts = noisy.bincount(minlength=5)
    assert counts[0] == 0 and (counts[1:].double() - 5000).abs().max() < 300


def test_symmetric_noise_is_deterministic_and_seed_dependent():
    labels = balanced_labels()
    for variant in ("uniform", "flip"):
        a = symmetric_noise(labels, 0.4, 10, seed=7, variant=variant)
        assert torch.equal(a, symmetric_noise(labels, 0.4, 10, seed=7, variant=variant))
        assert not torch.equal(a, symmetric_noise(labels, 0.4, 10, seed=8, variant=variant))
    state = torch.get_rng_state()
    symmetric_noise(labels, 0.4, 10, seed=7)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is not used
    assert torch.equal(symmetric_noise(labels, 0.0, 10, seed=0), labels)


def test_symmetric_noise_does_not_modify_input():
    labels = balanced_labels()
    copy = labels.clone()
    symmetric_noise(labels, 1.0, 10, seed=0, variant="flip")
    assert torch.equal(labels, copy)


@pytest.mark.parametrize("dataset", ["cifar10", "fashion-mnist"])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.4, 1.0])
def test_asymmetric_noise_exact(dataset, rate):
    labels = uneven_labels()
    mapping = ASYMMETRIC_NOISE_MAPS[dataset]
    noisy = asymmetric_noise(labels, rate, dataset=dataset, seed=3)
    changed = noisy != labels
    for c in range(10):
        members = labels == c
        if c in mapping:
            assert int(changed[members].sum()) == round(rate * int(members.sum()))
            assert (noisy[members & changed] == mapping[c]).all()
        else:
            assert not changed[members].any()


def test_asymmetric_maps():
    assert ASYMMETRIC_NOISE_MAPS["cifar10"] == {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
    fashion = ASYMMETRIC_NOISE_MAPS["fashion-mnist"]
    assert all(source != target for source, target in fashion.items())
    assert fashion[fashion[3]] == 3  # one swapped pair, like CIFAR-10's cat <-> dog
    cifar100 = ASYMMETRIC_NOISE_MAPS["cifar100"]
    assert sorted(cifar100.values()) == list(range(100))  # a permutation
    assert all(source // 5 == target // 5 and source != target for source, target in cifar100.items())


def test_asymmetric_noise_cifar100_and_determinism():
    labels = torch.arange(100).repeat_interleave(10)
    noisy = asymmetric_noise(labels, 0.2, dataset="CIFAR-100", seed=0)
    assert int((noisy != labels).sum()) == 200
    assert torch.equal(noisy, asymmetric_noise(labels, 0.2, dataset="cifar100", seed=0))
    assert not torch.equal(noisy, asymmetric_noise(labels, 0.2, dataset="cifar100", seed=1))


def test_asymmetric_noise_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="dataset"):
        asymmetric_noise(balanced_labels(), 0.2, dataset="imagenet", seed=0)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.33, 0.5, 1.0])
def test_per_class_subset_exact(fraction):
    labels = uneven_labels()
    indices = per_class_subset(labels, fraction, seed=0)
    assert indices.dtype == torch.int64 and torch.equal(indices, indices.sort().values)
    assert indices.unique().numel() == indices.numel()
    for c in range(10):
        n_c = int((labels == c).sum())
        assert int((labels[indices] == c).sum()) == max(1, round(fraction * n_c))
    assert torch.equal(indices, per_class_subset(labels, fraction, seed=0))
    if fraction < 1:
        assert not torch.equal(indices, per_class_subset(labels, fraction, seed=1))


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
def test_train_val_split(stratified, val_fraction):
    labels = uneven_labels()
    train, val = train_val_split(labels, val_fraction, seed=0, stratified=stratified)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(labels.numel()))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    if stratified:
        for c in range(10):
            assert int((labels[val] == c).sum()) == round(val_fraction * int((labels == c).sum()))
    else:
        assert val.numel() == round(val_fraction * labels.numel())
    again = train_val_split(labels, val_fraction, seed=0, stratified=stratified)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)


def test_bad_arguments_name_the_argument():
    labels = balanced_labels()
    for rate in (-0.1, 1.5):
        with pytest.raises(ValueError, match="rate"):
            symmetric_noise(labels, rate, 10, seed=0)
        with pytest.raises(ValueError, match="rate"):
            asymmetric_noise(labels, rate, dataset="cifar10", seed=0)
    with pytest.raises(ValueError, match="variant"):
        symmetric_noise(labels, 0.1, 10, seed=0, variant="pair")
    with pytest.raises(ValueError, match="num_classes"):
        symmetric_noise(labels, 0.1, 1, seed=0)
    with pytest.raises(ValueError, match="labels"):
        symmetric_noise(labels, 0.1, 5, seed=0)  # labels up to 9
    with pytest.raises(ValueError, match="labels"):
        symmetric_noise(labels.float(), 0.1, 10, seed=0)
    with pytest.raises(ValueError, match="seed"):
        symmetric_noise(labels, 0.1, 10, seed=1.5)
    for fraction in (0.0, -1.0, 1.01):
        with pytest.raises(ValueError, match="fraction"):
            per_class_subset(labels, fraction, seed=0)
    for fraction in (0.0, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(labels, fraction, seed=0)
    with pytest.raises(ValueError, match="same shape"):
        realised_noise_rate(labels, labels[:-1])
