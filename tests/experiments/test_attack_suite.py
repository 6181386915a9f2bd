"""The attack suite: the worst case per image, its cascade, resuming, and the masking checks."""
import builtins

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnorm.experiments import attack_suite as suite_module
from convnorm.experiments.attack_suite import (
    ATTACKS,
    STRENGTH_ORDER,
    attack_suite,
    correct_mask_from_text,
    correct_mask_text,
)
from convnorm.experiments.attacks import NormalizedModel, pgd
from convnorm.experiments.data import synthetic_dataset

pytest.importorskip("torchattacks", reason="the attack suite needs torchattacks (make install installs it)")
pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
EPS = 16 / 255
# Small budgets: the tests check the suite's logic, not the attacks' strength.
FAST = dict(samples=48, eps=EPS, pgd_step=4 / 255, pgd_steps=10, strong_steps=20, strong_restarts=2, apgd_steps=8,
            apgd_targets=3, square_queries=60, eps_sweep=(0.0, 8 / 255, 128 / 255), sweep_samples=32,
            batch_size=20, seed=3)


class Linear(nn.Module):
    """A linear classifier of normalized 3x8x8 images: gradient attacks are near optimal on it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Quantized(nn.Module):
    """Quantizes its input before a classifier: its input gradient is zero everywhere, the
    textbook case of gradient masking (a white-box attack sees nothing, a black-box one does not care)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 2) / 2)


@pytest.fixture(scope="module")
def data():
    train, test = synthetic_dataset(600, size=8, seed=0, noise=0.1), synthetic_dataset(64, size=8, seed=1, noise=0.1)
    torch.manual_seed(0)
    net = Linear()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x = (train.images.float() / 255 - 0.5) / 0.25
    for _ in range(30):
        for i in range(0, 600, 100):
            loss = F.cross_entropy(net(x[i:i + 100]), train.labels[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval(), test.images, test.labels


@pytest.fixture(scope="module")
def result(data):
    net, images, labels = data
    return attack_suite(net, images, labels, MEAN, STD, **FAST)


def masks(result):
    return {name: correct_mask_from_text(text) for name, text in result["correct"].items()}


def test_mask_text_round_trip_and_error():
    mask = torch.tensor([True, False, False, True])
    assert correct_mask_text(mask) == "1001"
    assert torch.equal(correct_mask_from_text("1001"), mask)
    with pytest.raises(ValueError, match="'0' and '1'"):
        correct_mask_from_text("10x1")


def test_accuracies_are_the_masks_means_and_clean_covers_every_image(result, data):
    _, images, labels = data
    m = masks(result)
    assert result["samples"] == FAST["samples"] and result["test_images"] == len(labels)
    assert set(m) == {"clean", *ATTACKS}
    for name in ATTACKS:
        assert len(m[name]) == FAST["samples"]
        assert result[f"{name}_acc"] == pytest.approx(float(m[name].double().mean()))
    assert result["attacked_images"] == int(m["clean"].sum())
    assert result["clean_acc_attacked"] == pytest.approx(float(m["clean"].double().mean()))
    assert 0.5 < result["clean_acc"] <= 1  # on all 64 images, a learnable task


def test_no_attack_rescues_an_image_and_the_worst_case_is_the_and_of_all(result):
    m = masks(result)
    for name in ATTACKS:  # an image wrong clean is wrong under every attack
        assert not (m[name] & ~m["clean"]).any(), name
    assert not (m["apgd_t"] & ~m["apgd_ce"]).any()  # APGD-T runs on what APGD-CE left standing
    white_box = m["clean"] & m["fgsm"] & m["pgd20"] & m["pgd100"] & m["apgd_ce"] & m["apgd_t"]
    assert result["white_box_acc"] == pytest.approx(float(white_box.double().mean()))
    assert torch.equal(m["square"], white_box & m["square"])
    assert result["robust_acc"] == pytest.approx(result["square_acc"])
    assert result["robust_acc"] <= min(result[f"{a}_acc"] for a in ATTACKS)
    assert 0 < result["fgsm_acc"] < result["clean_acc_attacked"]  # eps is such that attacks bite, not all


def test_pgd100_restarts_fool_what_independent_restarts_fool(data):
    """The strong PGD's bookkeeping: restart r attacks exactly the images restarts 0..r-1 left
    standing, drawing its random starts from its own stage generator, and an image is fooled
    when any restart fools it. The reference walks the same chain one image at a time with
    ``attacks.pgd`` (at batch size 1 the suite's batches are single images too, so the draws
    match one for one); it checks the wiring of subsets, generators and masks, not that the
    chain equals five full restarts draw for draw (it equals them in distribution only)."""
    net, images, labels = data
    # Recompute with batch_size 1: then the subset attacked cannot change any image's draws.
    one = attack_suite(net, images, labels, MEAN, STD, **{**FAST, "batch_size": 1})

    model = NormalizedModel(net, MEAN, STD).eval()
    standing = correct_mask_from_text(one["correct"]["clean"])
    survivors = standing.clone()
    for r in range(FAST["strong_restarts"]):
        gen = torch.Generator().manual_seed(FAST["seed"] * 1_000_003 + 10 + r)
        for i in survivors.nonzero().flatten().tolist():
            x = images[i:i + 1].float() / 255
            adv = pgd(model, x, labels[i:i + 1], EPS, FAST["pgd_step"], FAST["strong_steps"], generator=gen)
            with torch.no_grad():
                survivors[i] = bool(model(adv).argmax(1) == labels[i])
    assert torch.equal(correct_mask_from_text(one["correct"]["pgd100"]), survivors)


def test_checks_pass_on_a_model_that_does_not_mask(result):
    checks = result["checks"]
    assert set(checks) == {"sweep_monotone", "sweep_reaches_zero", "stronger_not_weaker", "black_box_not_stronger"}
    assert [(p["weaker"], p["stronger"]) for p in checks["stronger_not_weaker"]["pairs"]] == list(STRENGTH_ORDER)
    assert checks["sweep_reaches_zero"]["passed"] and checks["sweep_reaches_zero"]["largest_eps_255"] == 128
    assert checks["black_box_not_stronger"]["passed"]
    for pair in checks["stronger_not_weaker"]["pairs"]:  # rates over the attacked (clean-correct) images
        assert pair["violation_rate"] == pair["violations"] / result["attacked_images"]
    assert result["checks_passed"] is True


def test_a_gradient_masking_model_fails_the_black_box_check(data):
    net, images, labels = data
    r = attack_suite(Quantized(net), images, labels, MEAN, STD, **{**FAST, "eps": 40 / 255, "square_queries": 200})
    assert r["pgd100_acc"] == pytest.approx(r["clean_acc_attacked"])  # gradients are zero: PGD moves nothing
    check = r["checks"]["black_box_not_stronger"]
    assert check["fooled_by_square"] > 0 and check["passed"] is False
    assert r["checks_passed"] is False and r["robust_acc"] < r["white_box_acc"]


def test_the_suite_leaves_the_global_random_state_alone(data):
    net, images, labels = data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    attack_suite(net, images, labels, MEAN, STD, **{**FAST, "samples": 8, "eps_sweep": ()})
    assert torch.equal(torch.rand(3), expected)


def test_an_interrupted_suite_resumes_to_the_same_result(data, result):
    net, images, labels = data
    saved = {}

    class Stop(Exception):
        pass

    def interrupt(stages):
        saved.update({k: dict(v) for k, v in stages.items()})
        if len(stages) == 4:  # clean, fgsm, pgd20, the first restart
            raise Stop

    with pytest.raises(Stop):
        attack_suite(net, images, labels, MEAN, STD, **FAST, on_stage=interrupt)
    assert set(saved) == {"clean", "fgsm", "pgd20", "pgd100_restart0"}
    resumed = attack_suite(net, images, labels, MEAN, STD, **FAST, stages=saved)
    for key in ("correct", "robust_acc", "checks", "eps_sweep"):
        assert resumed[key] == result[key], key


def test_bad_settings_and_a_missing_torchattacks_are_named(data, monkeypatch):
    net, images, labels = data
    with pytest.raises(ValueError, match="labels"):
        attack_suite(net, images, labels[:-1], MEAN, STD, **FAST)
    with pytest.raises(ValueError, match="square_queries"):
        attack_suite(net, images, labels, MEAN, STD, **{**FAST, "square_queries": 0})
    with pytest.raises(ValueError, match="apgd_targets must be at most 9"):
        attack_suite(net, images, labels, MEAN, STD, **{**FAST, "apgd_targets": 10})
    three = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    with pytest.raises(ValueError, match="at least 4 classes"):
        attack_suite(three, images, labels % 3, MEAN, STD, **{**FAST, "apgd_targets": 2})
    real_import = builtins.__import__

    def no_torchattacks(name, *args, **kwargs):
        if name == "torchattacks":
            raise ImportError("No module named 'torchattacks'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchattacks)
    with pytest.raises(ImportError, match="pip install --no-deps torchattacks==3.5.1"):
        suite_module.load_torchattacks()
