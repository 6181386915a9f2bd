"""The named studies: each holds exactly the runs its issue lists, with one budget per study,
and several processes can share a study without training a run twice."""
import json
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from convnorm.experiments import studies
from convnorm.experiments.cli import main
from convnorm.experiments.gan import GANConfig
from convnorm.experiments.robust import AdvConfig
from convnorm.experiments.studies import STUDIES, claim_run, config_name, study_configs
from convnorm.experiments.train import TrainConfig, preset, train

BUDGET_FIELDS = {TrainConfig: ("dataset", "model", "model_options", "epochs", "batch_size", "lr", "momentum",
                               "weight_decay", "schedule", "milestones", "augment", "val_fraction"),
                 AdvConfig: ("dataset", "model", "epochs", "batch_size", "lr", "train_fraction", "replays", "eps"),
                 GANConfig: ("arch", "iterations", "n_dis", "batch_size", "lr", "g_width", "d_width",
                             "fid_samples", "fid_curve_samples", "fid_reference_samples", "fid_every")}


@pytest.mark.parametrize("name", sorted(n for n in STUDIES if "pilot" not in n))
def test_every_run_of_a_study_has_the_same_budget_and_its_own_name(name):
    configs = study_configs(name)
    names = [config_name(c) for c in configs]
    assert len(set(names)) == len(names)
    fields = BUDGET_FIELDS[type(configs[0])]
    budgets = {tuple(repr(getattr(c, f)) for f in fields) for c in configs}
    assert len(budgets) == 1, budgets


def test_robust_pilot_varies_only_the_passes_of_bn():
    configs = study_configs("robust-pilot-cifar10")
    assert len({config_name(c) for c in configs}) == len(configs) == 2
    assert {(c.method, c.seed, c.dataset, c.model, c.train_fraction, c.replays) for c in configs} == {
        ("bn", 0, "cifar10", "resnet18", 1.0, 4)}
    assert [(c.epochs, tuple(c.milestones)) for c in configs] == [(6, (2, 4)), (12, (4, 8))]
    assert {tuple(c.model_options["widths"]) for c in configs} == {(16, 32, 64, 128)}


def _key(c):
    rate = c.noise_rate if c.noise != "none" else 0.0
    return (c.method, c.noise, rate, c.train_fraction, c.seed)


def test_fashion_mnist_study_is_the_listed_grid():
    configs = study_configs("label-noise-fashion-mnist")
    expected = set()
    for seed in (0, 1):
        for m in ("bn", "convnorm", "convnorm+bn", "sn"):
            expected |= {(m, "none", 0.0, 1.0, seed), (m, "symmetric", 0.4, 1.0, seed),
                         (m, "symmetric", 0.8, 1.0, seed), (m, "asymmetric", 0.4, 1.0, seed),
                         (m, "none", 0.0, 0.1, seed), (m, "none", 0.0, 0.25, seed)}
        for m in ("oni", "ocnn"):
            expected |= {(m, "none", 0.0, 1.0, seed), (m, "symmetric", 0.8, 1.0, seed)}
    assert Counter(map(_key, configs)) == Counter(expected)
    assert {c.dataset for c in configs} == {"fashion-mnist"} and {c.model for c in configs} == {"small_resnet"}
    # seed-major: the first half is seed 0, so a half-finished study covers every setting once
    assert {c.seed for c in configs[:len(configs) // 2]} == {0}


def test_cifar10_study_is_the_listed_grid():
    configs = study_configs("label-noise-cifar10")
    assert Counter(map(_key, configs)) == Counter(
        (m, noise, rate, 0.2, 0) for m in ("bn", "convnorm", "convnorm+bn")
        for noise, rate in (("none", 0.0), ("symmetric", 0.4)))
    assert {c.dataset for c in configs} == {"cifar10"}


def test_memorisation_study_is_the_listed_grid():
    configs = study_configs("memorisation-cifar10")
    assert Counter(map(_key, configs)) == Counter(
        (m, noise, rate, 0.2, seed) for seed in (0, 1, 2) for m in ("bn", "convnorm+bn", "convnorm-paper", "sn")
        for noise, rate in (("none", 0.0), ("symmetric", 0.4), ("symmetric", 0.8)))
    assert {(c.dataset, c.model, c.epochs, c.batch_size, c.lr, c.schedule) for c in configs} == {
        ("cifar10", "resnet18", 50, 32, 0.1, "step")}
    order = [(c.method, c.noise_rate, c.seed) for c in configs]
    headline = ("bn", "convnorm-paper")
    # The runs the claim rests on come first: seed 0 of bn and convnorm-paper at clean and 40%
    # noise, then those two at 40% noise on seeds 1 and 2, then every other 40% run, then those
    # two on clean labels on seeds 1 and 2 (the control of their comparison), then the other
    # required runs, and the optional sn runs last.
    assert order[:4] == [(m, rate, 0) for rate in (0.0, 0.4) for m in headline]
    assert order[4:8] == [(m, 0.4, seed) for seed in (1, 2) for m in headline]
    assert {rate for _, rate, _ in order[8:14]} == {0.4} and {rate for _, rate, _ in order[14:]} == {0.0, 0.8}
    assert order[8:14] == sorted(order[8:14], key=lambda run: run[2])
    assert order[14:18] == [(m, 0.0, seed) for seed in (1, 2) for m in headline]
    required, optional = order[18:30], order[30:]
    assert {m for m, _, _ in required} == set(studies.MEMORISATION_REQUIRED) and {m for m, _, _ in optional} == {"sn"}
    for group in (required, optional):
        assert group == sorted(group, key=lambda run: run[2])  # seed-major within each


def test_free_at_study_is_the_listed_grid():
    configs = study_configs("free-at-cifar10")
    assert Counter((c.method, c.seed) for c in configs) == Counter(
        (m, s) for m in ("bn", "convnorm+bn", "sn", "oni", "ocnn") for s in (0, 1))
    assert {c.dataset for c in configs} == {"cifar10"}


def test_robust_study_runs_the_required_methods_first_with_the_attack_suite():
    configs = study_configs("robust-cifar10")
    required = [(c.method, c.seed) for c in configs[:9]]
    assert required == [(m, s) for s in (0, 1, 2) for m in ("bn", "convnorm-paper", "sn")]
    assert Counter((c.method, c.seed) for c in configs[9:]) == Counter(
        (m, s) for m in ("convnorm+bn", "oni", "ocnn") for s in (0, 1, 2))
    assert {(c.evaluation, c.eval_samples, c.train_fraction, c.dataset) for c in configs} == {
        ("suite", 1000, 1.0, "cifar10")}
    assert {(c.epochs, tuple(c.milestones)) for c in configs} == {(studies.ROBUST_PASSES,
                                                                  tuple(studies.ROBUST_MILESTONES))}
    pilot = {(c.epochs, tuple(c.milestones)) for c in study_configs("robust-pilot-cifar10")}
    assert (studies.ROBUST_PASSES, tuple(studies.ROBUST_MILESTONES)) in pilot  # a budget the pilot tried


def test_gan_study_compares_placements_at_one_budget():
    configs = study_configs("gan-cifar10-resnet")
    assert Counter((c.d_norm, c.g_norm, c.seed) for c in configs) == Counter(
        [(d, g, 0) for d, g in studies.GAN_PLACEMENTS] + [("sn", "bn", 1)])
    assert len({config_name(c) for c in configs}) == len(configs)
    assert studies.GAN_PLACEMENTS[0] == ("sn", "bn")  # the SN-GAN baseline comes first
    assert {(c.arch, c.dataset, c.fid_samples) for c in configs} == {("resnet", "cifar10", 5000)}


def test_unknown_study_is_named_in_the_error():
    with pytest.raises(ValueError, match="unknown study 'nope'"):
        study_configs("nope")


def test_a_claim_is_exclusive_and_released(tmp_path):
    with claim_run(str(tmp_path), "a") as first:
        with claim_run(str(tmp_path), "a") as second, claim_run(str(tmp_path), "b") as other:
            assert first and not second and other
    with claim_run(str(tmp_path), "a") as again:
        assert again


def test_a_claim_held_by_another_process_is_seen_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from convnorm.experiments.studies import claim_run
        with claim_run({str(tmp_path)!r}, "run") as mine:
            print(mine, flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        with claim_run(str(tmp_path), "run") as mine:
            assert not mine
    finally:
        holder.kill()
        holder.wait()
    with claim_run(str(tmp_path), "run") as mine:
        assert mine


def test_study_command_skips_runs_held_elsewhere_and_finishes_them_later(tmp_path, monkeypatch, capsys):
    tiny = [preset("test", method="bn", epochs=1, seed=seed) for seed in (0, 1)]
    monkeypatch.setitem(STUDIES, "tiny", lambda: list(tiny))
    out, ckpt = tmp_path / "results", tmp_path / "ckpt"
    args = ["study", "tiny", "--out", str(out), "--checkpoints", str(ckpt)]
    held = config_name(tiny[0])
    with claim_run(str(ckpt), held):
        assert main(args) == 0
        text = capsys.readouterr().out
        assert f"{held}: training in another process, skipped" in text and "rerun this command" in text
        assert not (out / f"{held}.json").exists() and (out / f"{config_name(tiny[1])}.json").exists()
        assert main(args + ["--list"]) == 0
        assert "(training in another process)" in capsys.readouterr().out
    assert main(args) == 0
    assert "all 2 runs complete" in capsys.readouterr().out
    assert (out / f"{held}.json").exists()


def test_study_list_says_how_far_a_running_run_got(tmp_path, monkeypatch, capsys):
    tiny = [preset("test", method="bn", epochs=3, seed=seed) for seed in (0, 1, 2)]
    monkeypatch.setitem(STUDIES, "tiny", lambda: list(tiny))
    out, ckpt = tmp_path / "results", tmp_path / "ckpt"
    out.mkdir()
    names = [config_name(c) for c in tiny]
    train(tiny[0], out_dir=str(out), checkpoint_dir=str(ckpt), stop_after_epoch=2, log=None)
    (out / f"{names[1]}.json").write_text(json.dumps({"kind": "robust", "status": "running", "passes": 12,
                                                       "epochs": [{}] * 8, "config": {"epochs": 3}}))
    assert main(["study", "tiny", "--out", str(out), "--checkpoints", str(ckpt), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("running, 2 of 3 epochs") and lines[0].endswith(names[0])
    assert lines[1].startswith("running, 8 of 12 epochs")  # free AT counts passes
    assert lines[2].startswith("not started")
    (out / f"{names[1]}.json").write_text(json.dumps({"kind": "gan", "status": "running", "iterations_done": 500,
                                                       "config": {"iterations": 2000}}))
    assert main(["study", "tiny", "--out", str(out), "--checkpoints", str(ckpt), "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("running, 500 of 2000 iterations")


def test_study_command_does_not_count_skipped_runs_that_finished_elsewhere(tmp_path, monkeypatch, capsys):
    tiny = [preset("test", method="bn", epochs=1, seed=seed) for seed in (0, 1)]
    monkeypatch.setitem(STUDIES, "tiny", lambda: list(tiny))
    args = ["study", "tiny", "--out", str(tmp_path / "results"), "--checkpoints", str(tmp_path / "ckpt")]
    assert main(args) == 0
    capsys.readouterr()
    # The other process still holds the claim on a run whose record it has already completed.
    with claim_run(str(tmp_path / "ckpt"), config_name(tiny[0])):
        assert main(args) == 0
    text = capsys.readouterr().out
    assert "training in another process, skipped" in text
    assert "all 2 runs complete" in text and "rerun this command" not in text


def test_memorisation_study_measures_seed_0_of_every_method_clean_and_at_40_percent():
    select, folder, input_shape = studies.STUDY_SPECTRA["memorisation-cifar10"]
    labels = sorted(studies.trained_spectra_label(c) for c in study_configs("memorisation-cifar10") if select(c))
    assert labels == sorted(f"{m}-{n}-seed0" for m in studies.MEMORISATION_METHODS for n in ("clean", "sym0.4"))
    assert folder == "spectral/memorisation-trained" and input_shape == (1, 3, 32, 32)


@pytest.mark.parametrize("noise,rate,expected", [("none", 0.0, "clean"), ("symmetric", 0.4, "sym0.4"),
                                                 ("symmetric", 0.8, "sym0.8"), ("asymmetric", 0.3, "asym0.3")])
def test_trained_spectra_label_reads_back(noise, rate, expected):
    from convnorm.experiments.spectral_study import parse_label

    config = preset("test", method="convnorm-paper", noise=noise, noise_rate=rate, seed=3)
    label = studies.trained_spectra_label(config)
    assert label == f"convnorm-paper-{expected}-seed3"
    assert parse_label(label) == {"method": "convnorm-paper", "labels": expected, "seed": 3}


def test_study_command_takes_the_trained_spectra_of_finished_runs_once(tmp_path, monkeypatch, capsys):
    from convnorm.experiments.records import read_json
    from convnorm.experiments.spectral_study import load_model
    from convnorm.spectral import network_report

    tiny = [preset("test", method="bn", epochs=1, seed=seed) for seed in (0, 1)]
    monkeypatch.setitem(STUDIES, "tiny", lambda: list(tiny))
    monkeypatch.setitem(studies.STUDY_SPECTRA, "tiny", (lambda c: c.seed == 0, "spectral/tiny-trained", (1, 3, 32, 32)))
    out, ckpt = tmp_path / "results" / "tiny", tmp_path / "ckpt"
    args = ["study", "tiny", "--out", str(out), "--checkpoints", str(ckpt)]
    assert main(args) == 0
    spectra = tmp_path / "results" / "spectral" / "tiny-trained"
    assert sorted(p.name for p in spectra.glob("*.json")) == ["bn-clean-seed0.json"]
    record = read_json(str(spectra / "bn-clean-seed0.json"))
    assert record["config"]["checkpoint"] == config_name(tiny[0]) + ".pt" and not record["config"]["isometry"]
    direct = network_report(load_model(str(ckpt / (config_name(tiny[0]) + ".pt"))), record["config"]["input_shape"],
                            isometry=False, tol=1e-4, max_iter=200)
    assert [r["spectral_norm"] for r in record["report"]["rows"]] == pytest.approx(
        [r["spectral_norm"] for r in direct.rows], rel=1e-4)
    stamp = (spectra / "bn-clean-seed0.json").stat().st_mtime_ns
    assert main(args) == 0  # all complete: nothing trained, nothing measured again
    assert (spectra / "bn-clean-seed0.json").stat().st_mtime_ns == stamp
    (spectra / "bn-clean-seed0.json").unlink()
    (ckpt / (config_name(tiny[0]) + ".pt")).unlink()
    capsys.readouterr()
    assert main(args) == 0
    assert "cannot be taken" in capsys.readouterr().out and not (spectra / "bn-clean-seed0.json").exists()
