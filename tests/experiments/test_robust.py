"""Adversarial robustness: attacks, free adversarial training, evaluation checks, report."""
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnorm.experiments import attacks, robust
from convnorm.experiments.attacks import NormalizedModel, evaluate_robustness, fgsm, pgd
from convnorm.experiments.data import synthetic_dataset
from convnorm.experiments.robust import (
    ADV_PRESETS,
    AdvConfig,
    adv_preset,
    adv_run_name,
    evaluate_checkpoint,
    free_at_batch,
    train_free_at,
)
from convnorm.experiments.records import write_json
from convnorm.experiments.robust_report import report_section

MEAN, STD = (0.5, 0.5, 0.5), (0.22, 0.22, 0.22)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained (normally) on synthetic data, wrapped to take [0, 1] images, in eval
    mode, with held-out images ``x`` (float, [0, 1]) and labels ``y``. About 90% clean accuracy;
    at eps 4/255 the attacks fool a good part, but not all, of it."""
    train, test = synthetic_dataset(512, seed=0), synthetic_dataset(256, seed=1)
    torch.manual_seed(0)
    net = tiny_cnn()
    model = NormalizedModel(net, MEAN, STD)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x_train = train.images.float() / 255
    for _ in range(15):
        for i in range(0, 512, 64):
            loss = F.cross_entropy(model(x_train[i:i + 64]), train.labels[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, net, test.images, test.images.float() / 255, test.labels


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


# -- attacks --------------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [0.0, 1 / 255, 8 / 255, 64 / 255])
def test_attacks_stay_in_the_eps_ball_and_the_pixel_box(trained, eps):
    model, _, _, x, y = trained
    x = x[:64].clone()
    x[0] = 0.0  # images at the box's corners: the clamp must hold them in [0, 1]
    x[1] = 1.0
    for adv in (fgsm(model, x, y[:64], eps), pgd(model, x, y[:64], eps, 2 / 255, 5, restarts=2, seed=3)):
        assert adv.shape == x.shape and not adv.requires_grad
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1


def test_pgd_without_steps_or_random_start_is_the_clean_input(trained):
    model, _, _, x, y = trained
    adv = pgd(model, x, y, 8 / 255, 2 / 255, 0, random_start=False)
    assert torch.equal(adv, x)
    assert accuracy(model, adv, y) == accuracy(model, x, y)


def test_attacks_leave_parameter_gradients_and_mode_alone(trained):
    model, _, _, x, y = trained
    model.zero_grad(set_to_none=True)
    fgsm(model, x[:16], y[:16], 4 / 255)
    pgd(model, x[:16], y[:16], 4 / 255, 1 / 255, 3)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_pgd_is_at_least_as_strong_as_fgsm(trained):
    model, _, _, x, y = trained
    eps = 4 / 255
    clean = accuracy(model, x, y)
    fgsm_ok = (model(fgsm(model, x, y, eps)).argmax(1) == y)
    pgd_ok = (model(pgd(model, x, y, eps, 1 / 255, 10, restarts=2, seed=0)).argmax(1) == y)
    assert clean > 0.8
    assert pgd_ok.double().mean() <= fgsm_ok.double().mean() < clean
    assert int((~fgsm_ok & pgd_ok).sum()) <= 2  # per sample, PGD fools (nearly) everything FGSM fools


def test_more_restarts_fool_a_superset(trained):
    # The first restart draws the same start from the same seed, and each sample keeps its worst case.
    model, _, _, x, y = trained
    one = model(pgd(model, x, y, 4 / 255, 1 / 255, 3, restarts=1, seed=5)).argmax(1) != y
    three = model(pgd(model, x, y, 4 / 255, 1 / 255, 3, restarts=3, seed=5)).argmax(1) != y
    assert bool((three | ~one).all()) and three.sum() >= one.sum()


def test_pgd_is_deterministic_given_the_seed(trained):
    model, _, _, x, y = trained
    a = pgd(model, x[:32], y[:32], 4 / 255, 1 / 255, 2, seed=7)
    b = pgd(model, x[:32], y[:32], 4 / 255, 1 / 255, 2, seed=7)
    c = pgd(model, x[:32], y[:32], 4 / 255, 1 / 255, 2, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_attacks_import_without_the_free_at_trainer():
    # attacks.py is for attacking any model: importing it must not pull in free adversarial
    # training (robust.py) or standard training (train.py), nor through them the data sets.
    code = ("import sys\n"
            "from convnorm.experiments.attacks import NormalizedModel, evaluate_robustness, fgsm, pgd\n"
            "print(' '.join(m for m in ('convnorm.experiments.robust', 'convnorm.experiments.train') "
            "if m in sys.modules) or 'neither')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "neither"


def test_attack_names_stay_importable_from_robust():
    for name in ("NormalizedModel", "fgsm", "pgd", "evaluate_robustness", "DEFAULT_EPS_SWEEP"):
        assert getattr(robust, name) is getattr(attacks, name), name


# -- cross-check with torchattacks ----------------------------------------------------------

def _torchattacks_fgsm_pgd():
    """torchattacks' FGSM and PGD classes (``make install`` installs torchattacks without its
    declared requirements; see the Makefile), or skip."""
    torchattacks = pytest.importorskip("torchattacks", reason="make install installs torchattacks")
    return torchattacks.FGSM, torchattacks.PGD


def test_fgsm_and_pgd_agree_with_torchattacks(trained):
    FGSM, PGD = _torchattacks_fgsm_pgd()
    model, _, _, x, y = trained  # a NormalizedModel: [0, 1] inputs, as torchattacks expects
    eps, step, steps = 4 / 255, 1 / 255, 10

    ours = fgsm(model, x, y, eps)
    theirs = FGSM(model, eps=eps)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert accuracy(model, ours, y) == accuracy(model, theirs, y)

    # Without random start both are deterministic: the same iterates, the same accuracy.
    ours = pgd(model, x, y, eps, step, steps, random_start=False)
    theirs = PGD(model, eps=eps, alpha=step, steps=steps, random_start=False)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert accuracy(model, ours, y) == accuracy(model, theirs, y)

    # With random start the two RNG streams differ: the accuracies agree within 3 points
    # (256 samples; the spread between seeds of either attack is about 1 point here).
    torch.manual_seed(123)
    theirs_acc = accuracy(model, PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)(x, y), y)
    ours_acc = accuracy(model, pgd(model, x, y, eps, step, steps, seed=0), y)
    assert abs(ours_acc - theirs_acc) <= 0.03
    # On the CPU, torch's global generator seeded with s and a fresh Generator seeded with s
    # draw the same numbers, so with matching seeds even the random starts coincide.
    torch.manual_seed(5)
    assert torch.allclose(pgd(model, x, y, eps, step, steps, seed=5),
                          PGD(model, eps=eps, alpha=step, steps=steps, random_start=True)(x, y), atol=1e-6)
    assert accuracy(model, x, y) - ours_acc > 0.1  # and the attack does something


# -- evaluation -----------------------------------------------------------------------------

def test_evaluate_robustness_reports_accuracies_settings_and_checks(trained):
    model, net, images, x, y = trained
    net.train()
    sweep = tuple(k / 255 for k in (0, 2, 4, 16, 64))
    out = evaluate_robustness(net, images, y, MEAN, STD, eps=4 / 255, pgd_steps=10, pgd_step=1 / 255, restarts=1,
                              batch_size=100, seed=0, eps_sweep=sweep, sweep_samples=128)
    assert net.training  # the mode is restored
    net.eval()
    assert out["samples"] == 256
    assert out["clean_acc"] == pytest.approx(accuracy(model, x, y))
    assert out["pgd_acc"] <= out["fgsm_acc"] < out["clean_acc"]
    assert out["fgsm_and_pgd_acc"] <= out["pgd_acc"]
    assert out["attack"]["eps"] == 4 / 255 and out["attack"]["pgd"]["steps"] == 10
    assert out["attack"]["sweep_samples"] == 128
    assert [s["eps_255"] for s in out["eps_sweep"]] == [0, 2, 4, 16, 64]
    assert out["eps_sweep"][0]["acc"] == pytest.approx(accuracy(model, x[:128], y[:128]))  # eps 0 is clean
    assert out["eps_sweep"][-1]["step"] == pytest.approx(2.5 * 64 / 255 / 10)  # the step grows with large eps
    accs = [s["acc"] for s in out["eps_sweep"]]
    checks = out["checks"]
    assert set(checks) == {"sweep_monotone", "sweep_reaches_zero", "pgd_not_weaker_than_fgsm"}
    assert checks["sweep_monotone"]["max_rise"] == pytest.approx(max(b - a for a, b in zip(accs, accs[1:])))
    assert checks["sweep_monotone"]["passed"] and checks["sweep_reaches_zero"]["passed"]
    assert checks["sweep_reaches_zero"]["acc_at_largest_eps"] == accs[-1] <= 0.05
    # Violations are the samples PGD leaves correct although FGSM fooled them: PGD's correct
    # ones minus those correct under both.
    against_fgsm = checks["pgd_not_weaker_than_fgsm"]
    assert against_fgsm["violations"] == round((out["pgd_acc"] - out["fgsm_and_pgd_acc"]) * out["samples"])
    assert against_fgsm["violation_rate"] == against_fgsm["violations"] / out["samples"]
    assert out["checks_passed"] is all(c["passed"] for c in checks.values())
    json.dumps(out)  # JSON-ready


def test_a_masked_gradient_fails_the_checks():
    # A model whose input gradient is zero (a hard quantizer in front) is not attackable by
    # gradients: accuracy does not fall with eps, and the sweep check must say so.
    class Quantized(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(torch.round(x * 4) / 4)

    data = synthetic_dataset(200, seed=1)
    torch.manual_seed(0)
    net = Quantized(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)))
    # a classifier of the class means, so that it is accurate without training
    means = torch.stack([(data.images[data.labels == k].float() / 255).mean(0) for k in range(10)])
    with torch.no_grad():
        net.net[1].weight.copy_(((torch.round(means * 4) / 4 - 0.5) / 0.22).flatten(1))
        net.net[1].bias.copy_(-0.5 * net.net[1].weight.pow(2).sum(1))
    out = evaluate_robustness(net, data.images, data.labels, MEAN, STD, eps=8 / 255, pgd_steps=3,
                              eps_sweep=(0.0, 64 / 255), sweep_samples=100)
    assert out["clean_acc"] > 0.5
    assert not out["checks"]["sweep_reaches_zero"]["passed"]
    assert out["checks_passed"] is False


# -- free adversarial training --------------------------------------------------------------

def test_free_at_batch_updates_delta_by_signed_steps_within_eps():
    torch.manual_seed(0)
    model = NormalizedModel(tiny_cnn(), MEAN, STD)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    delta = torch.zeros_like(x)
    eps, step = 8 / 255, 3 / 255
    sums = free_at_batch(model, x, y, delta, opt, eps=eps, step=step, lrs=[0.01, 0.01, 0.02])
    assert sums[2] == 3 * 8  # samples seen over three replays
    assert delta.abs().max() <= eps + 1e-7
    # three signed steps of 3/255, clipped at 8/255: every entry is k * 3/255 (|k| <= 2) or +-8/255
    k = delta * 255 / 3
    ok = ((k - k.round()).abs() < 1e-4) | ((delta.abs() - eps).abs() < 1e-7)
    assert bool(ok.all()) and delta.abs().sum() > 0
    assert opt.param_groups[0]["lr"] == 0.02


def test_carried_perturbation_starts_the_next_batch():
    """"carry": the second minibatch starts from the first's final delta; "batch": from zero."""
    torch.manual_seed(0)
    inputs = []
    model = NormalizedModel(tiny_cnn(), MEAN, STD)
    model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x1, x2 = torch.rand(8, 3, 32, 32) * 0.5 + 0.25, torch.rand(5, 3, 32, 32) * 0.5 + 0.25  # a smaller last batch
    y1, y2 = torch.randint(0, 10, (8,)), torch.randint(0, 10, (5,))
    carried = torch.zeros_like(x1)
    free_at_batch(model, x1, y1, carried[:8], opt, eps=8 / 255, step=8 / 255, lrs=[0.01, 0.01])
    after_first = carried.clone()
    inputs.clear()
    free_at_batch(model, x2, y2, carried[:5], opt, eps=8 / 255, step=8 / 255, lrs=[0.01, 0.01])
    assert torch.allclose(inputs[0], torch.clamp(x2 + after_first[:5], 0, 1))
    assert torch.equal(carried[5:], after_first[5:])  # rows the smaller batch does not use are kept
    inputs.clear()
    free_at_batch(model, x2, y2, torch.zeros_like(x2), opt, eps=8 / 255, step=8 / 255, lrs=[0.01])
    assert torch.equal(inputs[0], x2)


def _strip(record):
    return [{k: v for k, v in row.items() if not k.endswith("time_s")} for row in record["epochs"]]


@pytest.mark.parametrize("reset", ["batch", "carry"])
def test_interrupted_and_resumed_free_at_equals_uninterrupted(tmp_path, reset):
    config = adv_preset("test", perturbation_reset=reset)
    full = train_free_at(config, out_dir=str(tmp_path / "a"), checkpoint_dir=str(tmp_path / "ca"), log=None)
    part = train_free_at(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"),
                         stop_after_epoch=1, log=None)
    assert part["status"] == "running" and len(part["epochs"]) == 1 and "evaluation" not in part
    resumed = train_free_at(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"), log=None)
    assert full["status"] == resumed["status"] == "complete"
    assert _strip(resumed) == _strip(full)
    assert resumed["evaluation"] == full["evaluation"]
    name = adv_run_name(config)
    a = torch.load(tmp_path / "ca" / f"{name}.pt", weights_only=False)
    b = torch.load(tmp_path / "cb" / f"{name}.pt", weights_only=False)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["perturbation"], b["perturbation"])
    eps = config.eps
    if reset == "carry":  # the carried delta is saved: signed steps of 8/255 clipped at 8/255
        values = set(torch.round(a["perturbation"] / eps).unique().tolist())
        assert values <= {-1.0, 0.0, 1.0} and values != {0.0}
    else:
        assert torch.count_nonzero(a["perturbation"]) == 0


@pytest.mark.parametrize("reset,kill_epoch", [("batch", 2), ("carry", 1)])
def test_a_run_killed_mid_epoch_resumes_from_its_last_minibatch_as_if_never_stopped(tmp_path, monkeypatch, reset,
                                                                                    kill_epoch):
    """A checkpoint saved inside an epoch (here after every minibatch) holds the epoch's
    generator, sums and position: killed anywhere, the run ends bit for bit where an
    uninterrupted run ends, and trains only the minibatches the checkpoint had not seen. The
    killed process is named in the record's ``earlier_provenance``, even when it died before
    writing any record (epoch 1)."""
    from convnorm.experiments import provenance as prov

    config = adv_preset("test", perturbation_reset=reset)
    full = train_free_at(config, out_dir=str(tmp_path / "a"), checkpoint_dir=str(tmp_path / "ca"),
                         checkpoint_every_s=None, log=None)
    per_epoch = full["sgd_steps"] // (config.replays * len(full["epochs"]))
    assert per_epoch >= 3
    real_batch, calls = robust.free_at_batch, []

    def killed_at(call):
        def batch(*args, **kwargs):
            calls.append(call)
            if len(calls) == call:
                raise KeyboardInterrupt  # the process dies inside this minibatch
            return real_batch(*args, **kwargs)
        return batch

    kill_at = per_epoch * (kill_epoch - 1) + 2  # the second minibatch of epoch kill_epoch
    monkeypatch.setattr(robust, "free_at_batch", killed_at(kill_at))
    killed_process = prov.process_id()
    with pytest.raises(KeyboardInterrupt):
        train_free_at(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"),
                      checkpoint_every_s=0, log=None)
    name = adv_run_name(config)
    saved = torch.load(tmp_path / "cb" / f"{name}.pt", weights_only=False)
    assert saved["epoch"] == kill_epoch - 1 and saved["within_epoch"]["batches_done"] == 1
    # plain numbers: a checkpoint loaded onto a GPU must not hand CUDA tensors to the CPU generator
    assert not any(isinstance(v, torch.Tensor) for v in saved["within_epoch"].values())
    assert (tmp_path / "b" / f"{name}.json").exists() == (kill_epoch > 1)
    calls.clear()
    monkeypatch.setattr(robust, "free_at_batch", killed_at(0))  # counts, never kills
    prov.process_id.cache_clear()  # the resume is another process
    messages = []
    try:
        resumed = train_free_at(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"),
                                checkpoint_every_s=0, log=messages.append)
    finally:
        prov.process_id.cache_clear()
    assert any(f"resuming after epoch {kill_epoch - 1}/2 and minibatch 1 of epoch {kill_epoch}" in m
               for m in messages), messages
    assert len(calls) == per_epoch * (2 - kill_epoch) + per_epoch - 1  # only what the checkpoint had not seen
    assert [p["process"] for p in resumed["earlier_provenance"]] == [killed_process]
    assert resumed["provenance"]["process"] != killed_process
    assert _strip(resumed) == _strip(full) and resumed["sgd_steps"] == full["sgd_steps"]
    assert resumed["evaluation"] == full["evaluation"]
    a = torch.load(tmp_path / "ca" / f"{name}.pt", weights_only=False)
    b = torch.load(tmp_path / "cb" / f"{name}.pt", weights_only=False)
    assert "within_epoch" not in a and "within_epoch" not in b  # the final checkpoint is an epoch's end
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["perturbation"], b["perturbation"])
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(group_a["momentum_buffer"], group_b["momentum_buffer"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_run_killed_mid_epoch_on_a_gpu_resumes_there(tmp_path, monkeypatch):
    """The CPU test above, on CUDA: the checkpoint is loaded onto the GPU and must resume (GPU
    kernels need not be bitwise deterministic, so the numbers are compared with a tolerance)."""
    config = adv_preset("test")
    full = train_free_at(config, out_dir=str(tmp_path / "a"), checkpoint_dir=str(tmp_path / "ca"), device="cuda",
                         checkpoint_every_s=None, log=None)
    real_batch, calls = robust.free_at_batch, []

    def dies_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(robust, "free_at_batch", dies_at_third)
    with pytest.raises(KeyboardInterrupt):
        train_free_at(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"), device="cuda",
                      checkpoint_every_s=0, log=None)
    monkeypatch.setattr(robust, "free_at_batch", real_batch)
    resumed = train_free_at(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"), device="cuda",
                            checkpoint_every_s=0, log=None)
    assert resumed["status"] == "complete" and resumed["sgd_steps"] == full["sgd_steps"]
    assert resumed["epochs"][-1]["train_loss"] == pytest.approx(full["epochs"][-1]["train_loss"], rel=1e-3)


def test_free_at_record_and_reruns(tmp_path):
    config = adv_preset("test", epochs=1, method="convnorm+bn")
    record = train_free_at(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    on_disk = json.loads((tmp_path / f"{adv_run_name(config)}.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["kind"] == "robust" and record["config"] == config.identity() and record["seed"] == config.seed
    for key in ("git_commit", "versions", "device"):
        assert key in record["provenance"]
    assert record["status"] == "complete" and record["passes"] == 1
    steps = math.ceil(record["data"]["train_size"] / config.batch_size) * config.replays
    assert record["sgd_steps"] == steps
    row = record["epochs"][0]
    assert set(row) >= {"epoch", "lr", "train_loss", "train_adv_acc", "test_acc", "monitor_pgd_acc", "time_s"}
    ev = record["evaluation"]
    assert (record["clean_acc"], record["fgsm_acc"], record["pgd_acc"]) == (ev["clean_acc"], ev["fgsm_acc"],
                                                                            ev["pgd_acc"])
    assert record["checks_passed"] == ev["checks_passed"] and ev["samples"] == config.eval_samples
    assert record["wall_time_s"] >= record["eval_time_s"] > 0
    # a finished run is returned, not retrained
    assert train_free_at(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None) == on_disk
    # the saved model, attacked again with the run's settings, gives the record's evaluation
    again = evaluate_checkpoint(str(tmp_path / "c" / f"{adv_run_name(config)}.pt"), device="cpu")
    assert {k: v for k, v in again.items() if k != "checkpoint"} == ev
    assert again["checkpoint"]["method"] == "convnorm+bn"
    # another config under the same name is an error
    path = tmp_path / f"{adv_run_name(config)}.json"
    changed = json.loads(path.read_text())
    changed["config"]["lr"] = 9.0
    path.write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="different config"):
        train_free_at(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)


def test_free_at_with_the_attack_suite_records_the_worst_case_and_resumes_its_evaluation(tmp_path):
    pytest.importorskip("torchattacks", reason="the attack suite needs torchattacks (make install installs it)")
    config = adv_preset("test", epochs=1, evaluation="suite", square_queries=20, eval_samples=24, sweep_samples=16)
    assert adv_run_name(config) != adv_run_name(adv_preset("test", epochs=1))
    record = train_free_at(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    ev = record["evaluation"]
    assert record["status"] == "complete" and ev["samples"] == 24 and ev["test_images"] == 1000
    assert (record["clean_acc"], record["fgsm_acc"], record["pgd_acc"], record["robust_acc"]) == (
        ev["clean_acc"], ev["fgsm_acc"], ev["pgd20_acc"], ev["robust_acc"])
    assert ev["attack"]["square"]["queries"] == 20 and ev["attack"]["pgd100"]["restarts"] == 5
    assert record["eval_time_s"] == pytest.approx(sum(ev["seconds"].values()))
    name = adv_run_name(config)
    assert not (tmp_path / "c" / f"{name}.suite.json").exists()  # the record holds it all now
    # An evaluation interrupted after two attacks resumes from its saved stages (here faked: FGSM
    # fooling nothing), takes them as they are, and recomputes the rest exactly as before.
    (tmp_path / f"{name}.json").unlink()
    no_fgsm = ev["correct"]["clean"]
    stages = dict(clean=dict(correct=no_fgsm + "1" * (1000 - 24), seconds=0.0),
                  fgsm=dict(correct=no_fgsm, attacked=24, seconds=0.0))
    write_json(str(tmp_path / "c" / f"{name}.suite.json"), {"identity": config.identity(), "stages": stages})
    again = train_free_at(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    assert again["evaluation"]["correct"]["fgsm"] == no_fgsm
    assert again["clean_acc"] == pytest.approx((no_fgsm.count("1") + 1000 - 24) / 1000)
    assert again["evaluation"]["correct"]["pgd20"] == ev["correct"]["pgd20"]


def test_reset_modes_train_differently(tmp_path):
    a = train_free_at(adv_preset("test", epochs=1), out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"),
                      log=None)
    b = train_free_at(adv_preset("test", epochs=1, perturbation_reset="carry"), out_dir=str(tmp_path),
                      checkpoint_dir=str(tmp_path / "c"), log=None)
    assert a["name"] != b["name"]
    assert a["epochs"][0]["train_loss"] != b["epochs"][0]["train_loss"]


# -- configuration --------------------------------------------------------------------------

def test_presets_and_epoch_counting():
    paper = adv_preset("paper-free-at")
    assert (paper.dataset, paper.model, paper.epochs, paper.lr, tuple(paper.milestones), paper.batch_size,
            paper.replays, paper.eps, paper.step) == ("cifar10", "resnet18", 30, 0.1, (10, 20), 128, 4, 8 / 255,
                                                      8 / 255)
    assert paper.passes() == 30 and paper.pass_milestones() == [10, 20]
    shafahi = adv_preset("paper-free-at", epoch_counting="divide-by-replays")
    assert shafahi.passes() == 8 and shafahi.pass_milestones() == [3, 5]
    assert adv_preset("cpu-free-at", seed=None).seed == 0  # None overrides are ignored
    assert set(ADV_PRESETS) >= {"paper-free-at", "cpu-free-at", "test"}
    with pytest.raises(ValueError, match="unknown preset"):
        adv_preset("nope")
    for bad in (dict(perturbation_reset="never"), dict(epoch_counting="x"), dict(replays=0), dict(eps=-1.0),
                dict(method="dropout"), dict(train_fraction=0.0), dict(evaluation="autoattack"),
                dict(square_queries=0)):
        with pytest.raises(ValueError):
            adv_preset("test", **bad)
    names = {adv_run_name(adv_preset("test", **o)) for o in
             ({}, dict(seed=1), dict(perturbation_reset="carry"), dict(replays=3), dict(eps=4 / 255))}
    assert len(names) == 5
    assert adv_run_name(adv_preset("test", data_root="/elsewhere")) == adv_run_name(adv_preset("test"))


def test_learning_rate_schedule_counts_passes():
    config = AdvConfig(epochs=30, milestones=(10, 20), lr=0.1, gamma=0.1)
    lrs = [robust._learning_rate(config, e, 0, 100) for e in (0, 9, 10, 19, 20, 29)]
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


# -- report ---------------------------------------------------------------------------------

def _fake_record(method, seed, clean, fgsm_acc, pgd_acc, *, status="complete", **overrides):
    config = adv_preset("cpu-free-at", method=method, seed=seed, **overrides)
    sweep = [dict(eps=e, eps_255=round(e * 255, 6), step=0.0, acc=a)
             for e, a in zip(config.sweep_eps, (clean, 0.5, 0.4, pgd_acc, 0.1, 0.02, 0.0))]
    checks = dict(sweep_monotone=dict(passed=True, max_rise=0.0, tolerance=0.01),
                  sweep_reaches_zero=dict(passed=True, largest_eps=64 / 255, largest_eps_255=64.0,
                                          acc_at_largest_eps=0.0, threshold=0.05),
                  pgd_not_weaker_than_fgsm=dict(passed=seed != 1, pgd_acc=pgd_acc, fgsm_acc=fgsm_acc,
                                                violations=3 * seed, violation_rate=0.0, violation_tolerance=0.01))
    evaluation = dict(samples=1000, clean_acc=clean, fgsm_acc=fgsm_acc, pgd_acc=pgd_acc, eps_sweep=sweep,
                      checks=checks, checks_passed=seed != 1)
    record = dict(kind="robust", config=config.identity(), seed=seed, name=adv_run_name(config), status=status,
                  epochs=[dict(time_s=1800.0), dict(time_s=1800.0)], evaluation=evaluation, clean_acc=clean,
                  fgsm_acc=fgsm_acc, pgd_acc=pgd_acc, checks_passed=seed != 1, wall_time_s=4500.0,
                  eval_time_s=900.0, provenance=dict(git_commit=f"{seed}bcdef0123", device="AMD EPYC (1 threads)"))
    if status != "complete":
        del record["evaluation"]
    return record


def test_report_section_from_records(tmp_path):
    records = [_fake_record("bn", 0, 0.70, 0.40, 0.30), _fake_record("bn", 1, 0.72, 0.42, 0.34),
               _fake_record("convnorm+bn", 0, 0.75, 0.45, 0.35),
               _fake_record("sn", 0, 0.6, 0.3, 0.2, status="running"),
               _fake_record("bn", 0, 0.5, 0.2, 0.1, eps=4 / 255, step=4 / 255)]
    # convnorm+bn was resumed: the process that started it ran elsewhere, at another commit
    records[2]["earlier_provenance"] = [dict(git_commit="9876543210-dirty", device="Intel Xeon (1 threads)")]
    for r in records:
        (tmp_path / f"{r['name']}.json").write_text(json.dumps(r))
    (tmp_path / "other.json").write_text(json.dumps({"kind": "train", "config": {}}))
    lines = report_section(str(tmp_path))
    text = "\n".join(lines)
    assert lines == report_section(str(tmp_path))  # deterministic
    assert "1 robust run(s) not complete are left out of the tables." in text
    assert "| bn | 2 | 71.00 ± 1.41 | 41.00 ± 1.41 | 32.00 ± 2.83 | 1/2 |" in lines
    assert "| convnorm+bn | 1 | 75.00 | 45.00 | 35.00 | 1/1 |" in lines
    assert "| bn | 1 | 50.00 | 20.00 | 10.00 | 1/1 |" in lines  # the eps 4/255 setting, its own table
    assert ("3 run(s), 3.8 process-hours in all (training 3.0, evaluation 0.8), on AMD EPYC (1 threads), "
            "Intel Xeon (1 threads), at commit(s) 0bcdef0, 1bcdef0, 9876543-dirty.") in lines
    # BN's mean (71% clean, 32% PGD-20) against the bar; the eps 4/255 setting is not judged
    assert "BN 71.00% clean, 32.00% PGD-20, **not reached**." in text and text.count("The robustness bar") == 1
    assert text.count("### cifar10, small_resnet, 10% of the training set") == 2
    assert "model small_resnet (published: resnet18)" in text and "training data 10% (published: 100%)" in text
    assert "training eps 4/255 (published: 8/255)" in text
    assert "Published (ResNet-18, CIFAR-10, free AT, mean of 4 seeds), not run here" in text
    assert "| ConvNorm (with BN) | 52.9 | 44.8 |" in lines and "| BN | 51.7 | not given |" in lines
    assert "| ONI | 48.3 | 41.1 |" in lines and "| SN | 52.3 | 44.5 |" in lines
    assert "| OCNN | 52.5 | not given |" in lines
    assert "**NO** (3 violations of 1000)" in text
    assert report_section(str(tmp_path / "empty")) == []
    assert ("- FGSM, ranked here: convnorm+bn 45.0 > bn 41.0; published: convnorm+bn 52.9 > bn 51.7. "
            "Pairs ordered as published: 1 of 1; of the others, 0 differ") in text
    assert "- PGD, ranked here" not in text  # BN has no published PGD number: one method only


def test_report_reads_a_disagreement_with_the_published_ranking(tmp_path):
    records = [_fake_record("sn", 0, 0.7, 0.50, 0.40), _fake_record("sn", 1, 0.7, 0.51, 0.41),
               _fake_record("convnorm+bn", 0, 0.7, 0.40, 0.405), _fake_record("convnorm+bn", 1, 0.7, 0.41, 0.415),
               _fake_record("oni", 0, 0.7, 0.60, 0.30)]
    for r in records:
        (tmp_path / f"{r['name']}.json").write_text(json.dumps(r))
    text = "\n".join(report_section(str(tmp_path)))
    assert ("- FGSM, ranked here: oni 60.0 > sn 50.5 > convnorm+bn 40.5; published: convnorm+bn 52.9 > sn 52.3 > "
            "oni 48.3. Pairs ordered as published: 0 of 3; of the others, 1 differ here by more than twice the larger "
            "seed standard deviation (2 with a single seed on a side, not judged).") in text
    assert ("- PGD, ranked here: convnorm+bn 41.0 > sn 40.5 > oni 30.0; published: convnorm+bn 44.8 > sn 44.5 > "
            "oni 41.1. Pairs ordered as published: 3 of 3") in text


@pytest.fixture(scope="module")
def suite_evaluation():
    """A real attack-suite result (tiny model, tiny budgets) whose numbers the fakes below replace."""
    pytest.importorskip("torchattacks", reason="the attack suite needs torchattacks (make install installs it)")
    from convnorm.experiments.attack_suite import attack_suite

    data = synthetic_dataset(40, seed=2)
    torch.manual_seed(0)
    return attack_suite(tiny_cnn().eval(), data.images, data.labels, MEAN, STD, samples=20, strong_steps=2,
                        strong_restarts=2, apgd_steps=2, apgd_targets=2, square_queries=5, sweep_samples=10)


def _fake_suite_record(evaluation, method, seed, accs, hours):
    config = adv_preset("cpu-robust", method=method, seed=seed, evaluation="suite", eval_samples=1000)
    ev = json.loads(json.dumps(evaluation))
    ev.update(dict(zip(("clean_acc", "fgsm_acc", "pgd20_acc", "pgd100_acc", "apgd_t_acc", "robust_acc"), accs)))
    return dict(kind="robust", config=config.identity(), seed=seed, name=adv_run_name(config), status="complete",
                epochs=[dict(time_s=hours * 3600 * 0.75)], evaluation=ev, clean_acc=accs[0], fgsm_acc=accs[1],
                pgd_acc=accs[2], robust_acc=accs[5], checks_passed=ev["checks_passed"], wall_time_s=hours * 3600,
                eval_time_s=hours * 3600 * 0.25,
                provenance=dict(git_commit="abcdef0123", device="Intel Xeon (1 threads)"))


def test_report_suite_view_pairs_differences_by_seed(tmp_path, suite_evaluation):
    bn = [(0.70, 0.45, 0.38, 0.36, 0.34, 0.33), (0.72, 0.47, 0.40, 0.38, 0.36, 0.35)]
    paper = [(0.66, 0.44, 0.39, 0.37, 0.35, 0.34), (0.69, 0.45, 0.41, 0.40, 0.38, 0.36)]
    records = [_fake_suite_record(suite_evaluation, "bn", s, a, 2.0) for s, a in enumerate(bn)]
    records += [_fake_suite_record(suite_evaluation, "convnorm-paper", s, a, 4.5) for s, a in enumerate(paper)]
    records.append(_fake_record("bn", 0, 0.5, 0.2, 0.1))  # a standard-evaluation setting keeps its own table
    for r in records:
        (tmp_path / f"{r['name']}.json").write_text(json.dumps(r))
    lines = report_section(str(tmp_path))
    text = "\n".join(lines)
    assert lines == report_section(str(tmp_path))
    assert "### cifar10, resnet18, full training set, 12 passes of free AT" in text and ": the attack suite" in text
    assert "| bn | 2 | 71.00 ± 1.41 | 46.00 ± 1.41 | 39.00 ± 1.41 | 37.00 ± 1.41 | 35.00 ± 1.41 | 34.00 ± 1.41 " \
           "| 51.72 | not given | 4.0 |" in lines
    assert "| convnorm-paper | 2 | 67.50 ± 2.12 | 44.50 ± 0.71 | 40.00 ± 1.41 | 38.50 ± 2.12 | 36.50 ± 2.12 | " \
           "35.00 ± 1.41 | 52.87 | 44.75 | 9.0 |" in lines
    # paired differences, computed here from the numbers above: clean -4 and -3, PGD-20 +1 and +1
    row = next(line for line in lines if line.startswith("| convnorm-paper | 2 | -"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "-3.50 ± 0.71 (within spread)"  # |-3.5| < 2 x max(1.41, 2.12)
    assert cells[4] == "1.00 ± 0.00 (within spread)"
    assert "4 run(s), 13.0 process-hours in all (training 9.8, evaluation 3.2)" in text
    assert "at commit(s) abcdef0" in text
    assert "BN 71.00% clean, 39.00% PGD-20, reached." in text
    checks = suite_evaluation["checks"]
    black = checks["black_box_not_stronger"]
    assert f"{black['fooled_by_square']} of {black['white_box_standing']})" in text
    assert "| bn | 1 | 50.00 | 20.00 | 10.00 | 1/1 |" in lines


def test_attack_command_runs_the_suite_on_a_checkpoint(tmp_path, capsys):
    pytest.importorskip("torchattacks", reason="the attack suite needs torchattacks (make install installs it)")
    from convnorm.experiments.cli import main

    config = adv_preset("test", epochs=1)
    train_free_at(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    out = tmp_path / "suite.json"
    assert main(["attack", "--checkpoint", str(tmp_path / "c" / f"{adv_run_name(config)}.pt"), "--suite",
                 "--samples", "12", "--square-queries", "10", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    record = json.loads(out.read_text())
    assert record["kind"] == "attack" and record["config"]["suite"] is True and record["config"]["samples"] == 12
    assert printed["samples"] == 12 and printed["attack"]["square"]["queries"] == 10
    assert printed["robust_acc"] <= printed["pgd20_acc"] and printed["test_images"] == 1000
    assert record["result"]["correct"] == printed["correct"]
