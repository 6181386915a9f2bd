"""Named grids of training runs: the studies behind ``results/``.

``convnorm study <name>`` runs every config of a study in order, skipping finished runs and
resuming an interrupted one, so a study can be spread over many sessions: rerun the same
command until it reports nothing left. Records go to ``results/<name>/``.

Several processes may work on one study at once (``convnorm study <name>`` started twice,
on one machine or on machines sharing the folders): each run is claimed with an exclusive
lock on ``<checkpoints>/<name>.lock`` while it trains, and a process skips runs that another
one holds. The lock dies with its process, so a killed worker never blocks a run.

Every method in a study gets the same budget (epochs, batch size, learning rate, schedule).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from convnorm.experiments.gan import BASELINE_NORMS, GANConfig, gan_config_from_args, train_gan
from convnorm.experiments.gan import run_name as gan_run_name
from convnorm.experiments.records import read_json
from convnorm.experiments.robust import AdvConfig, adv_preset, adv_run_name, train_free_at
from convnorm.experiments.train import TrainConfig, preset, run_name, train
from convnorm.experiments.spectral_study import format_label

__all__ = ["STUDIES", "STUDY_SPECTRA", "study_configs", "run_config", "config_name", "claim_run", "run_is_claimed",
           "trained_spectra_label", "take_trained_spectra", "run_study", "study_states"]

StudyConfig = Union[TrainConfig, AdvConfig, GANConfig]

# Fashion-MNIST, small ResNet, full training set: 5 epochs keep the whole study near 8 CPU-hours
# (ConvNorm epochs cost about 4x BN epochs at these widths on one core).
_FMNIST_BUDGET = dict(epochs=5)
# CIFAR-10, small ResNet, 20% of the training set.
_CIFAR_BUDGET = dict(epochs=15, train_fraction=0.2)


def _label_noise_fashion_mnist() -> List[TrainConfig]:
    main = ("bn", "convnorm", "convnorm+bn", "sn")
    settings = [dict(noise="none"), dict(noise="symmetric", noise_rate=0.4), dict(noise="symmetric", noise_rate=0.8),
                dict(noise="asymmetric", noise_rate=0.4), dict(noise="none", train_fraction=0.1),
                dict(noise="none", train_fraction=0.25)]
    extra = [dict(noise="none"), dict(noise="symmetric", noise_rate=0.8)]
    configs = []
    for seed in (0, 1):  # seed-major: a partial study already covers every setting once
        for setting in settings:
            configs += [preset("cpu-fashion-mnist", method=m, seed=seed, **_FMNIST_BUDGET, **setting) for m in main]
        for setting in extra:
            configs += [preset("cpu-fashion-mnist", method=m, seed=seed, **_FMNIST_BUDGET, **setting)
                        for m in ("oni", "ocnn")]
    return configs


def _label_noise_cifar10() -> List[TrainConfig]:
    return [preset("cpu-cifar10", method=m, seed=0, **_CIFAR_BUDGET, **setting)
            for setting in (dict(noise="none"), dict(noise="symmetric", noise_rate=0.4))
            for m in ("bn", "convnorm", "convnorm+bn")]


#: The memorisation study's methods: the baseline, this project's ConvNorm+BN, the paper's
#: block, and spectral norm.
MEMORISATION_METHODS = ("bn", "convnorm+bn", "convnorm-paper", "sn")

#: The methods whose 27 runs the study must have; the other runs of sn are added where the
#: budget allows (its 40% runs come early, beside the other methods at that noise).
MEMORISATION_REQUIRED = ("bn", "convnorm+bn", "convnorm-paper")


def _memorisation_cifar10() -> List[TrainConfig]:
    # Long training in which BN memorises noisy labels (docs/experiments.md, "The memorisation
    # study"): clean, 40% and 80% symmetric noise, three seeds. The order puts first what the
    # paper's claim rests on, so a partial study answers the main question before the rest:
    # seed 0 of bn and convnorm-paper at clean and 40% noise (the trained-spectra chart needs
    # them; STUDY_SPECTRA measures them as they finish), then bn and convnorm-paper at 40% noise
    # on the other seeds (their seed spread), then every other run at 40% noise, then bn and
    # convnorm-paper on clean labels on the other seeds (the control that tells a lead under
    # noise from a lead on any labels), then the remaining runs of the required methods, then the
    # remaining sn runs (clean and 80% noise; optional). Within each group the order stays seed-major.
    settings = [dict(noise="none"), dict(noise="symmetric", noise_rate=0.4), dict(noise="symmetric", noise_rate=0.8)]
    configs = [preset("cpu-memorisation", method=m, seed=seed, **setting)
               for seed in (0, 1, 2) for setting in settings for m in MEMORISATION_METHODS]
    return sorted(configs, key=_memorisation_priority)


#: The comparison the paper's label-noise claim rests on: BN against the paper's own block.
MEMORISATION_HEADLINE = ("bn", "convnorm-paper")


def _memorisation_priority(config: TrainConfig) -> int:
    """Rank of a memorisation run in the study's order (0 first; ties keep seed-major order)."""
    headline = config.method in MEMORISATION_HEADLINE
    if headline and config.seed == 0 and config.noise_rate in (0.0, 0.4):
        return 0
    if headline and config.noise_rate == 0.4:
        return 1
    if config.noise_rate == 0.4:
        return 2
    if headline and config.noise_rate == 0.0:
        return 3
    return 4 if config.method in MEMORISATION_REQUIRED else 5


def _memorisation_spectra(config: StudyConfig) -> bool:
    # Seed 0 of every method at clean labels and 40% noise: the runs charted beside the
    # paper's figure of trained spectra (trained_spectra_report).
    return isinstance(config, TrainConfig) and config.seed == 0 and config.noise_rate in (0.0, 0.4)


def _free_at_cifar10() -> List[AdvConfig]:
    return [adv_preset("cpu-free-at", method=m, seed=seed)
            for seed in (0, 1) for m in ("bn", "convnorm+bn", "sn", "oni", "ocnn")]


def _robust_pilot_cifar10() -> List[AdvConfig]:
    # BN alone, to find the smallest free-AT setting in which it is robust (65% clean and 35%
    # PGD-20) before the study spends its budget there: 6 and 12 passes over the whole training
    # set at the study network's widths (docs/robustness.md).
    return [adv_preset("cpu-robust", method="bn", epochs=6, milestones=(2, 4)), adv_preset("cpu-robust", method="bn")]


#: The robustness study's methods: the baseline, the paper's block and spectral norm (three
#: seeds each), then, where the budget allows, this project's ConvNorm+BN, ONI and OCNN.
ROBUST_METHODS = ("bn", "convnorm-paper", "sn")
ROBUST_OPTIONAL = ("convnorm+bn", "oni", "ocnn")

#: The pilot's choice: the fewest passes (with their milestones) at which BN cleared the bar.
ROBUST_PASSES, ROBUST_MILESTONES = 12, (4, 8)

#: The robustness study's budget, chosen by the pilot (docs/robustness.md): the passes over the
#: whole training set and their milestones, the attack suite on the first 1000 test images.
ROBUST_BUDGET = dict(epochs=ROBUST_PASSES, milestones=ROBUST_MILESTONES, evaluation="suite", eval_samples=1000,
                     sweep_samples=500)


def _robust_cifar10() -> List[AdvConfig]:
    # Seed-major, so a partial study already compares the three methods on the same seeds; the
    # optional methods come after all nine required runs.
    return [adv_preset("cpu-robust", method=m, seed=seed, **ROBUST_BUDGET)
            for methods in (ROBUST_METHODS, ROBUST_OPTIONAL) for seed in (0, 1, 2) for m in methods]


# The generator/discriminator normalizations compared on CIFAR-10: the SN-GAN baseline, then
# ConvNorm in place of SN, ConvNorm with SN in D, and ConvNorm before BN in G.
GAN_PLACEMENTS = (BASELINE_NORMS, ("convnorm", "bn"), ("convnorm+sn", "bn"), ("sn", "convnorm+bn"))


def _gan_cifar10_resnet() -> List[GANConfig]:
    # One seed per placement fills the CPU budget (docs/gan.md); a second seed of the baseline
    # measures the seed-to-seed spread the one-seed placements are read against.
    placements = [gan_config_from_args("cpu-resnet", d_norm=d, g_norm=g, seed=0) for d, g in GAN_PLACEMENTS]
    baseline_d, baseline_g = BASELINE_NORMS
    return placements + [gan_config_from_args("cpu-resnet", d_norm=baseline_d, g_norm=baseline_g, seed=1)]


STUDIES: Dict[str, Callable[[], List[StudyConfig]]] = {
    "label-noise-fashion-mnist": _label_noise_fashion_mnist,
    "label-noise-cifar10": _label_noise_cifar10,
    "memorisation-cifar10": _memorisation_cifar10,
    "free-at-cifar10": _free_at_cifar10,
    "robust-pilot-cifar10": _robust_pilot_cifar10,
    "robust-cifar10": _robust_cifar10,
    "gan-cifar10-resnet": _gan_cifar10_resnet,
}


#: Studies whose final networks are measured by ``convnorm spectral --checkpoint`` as soon as
#: they finish, by the process that trained them (checkpoints are not kept with the records):
#: study -> (which configs, the folder under the records' parent folder, the network's input
#: shape ``(1, C, H, W)``).
STUDY_SPECTRA: Dict[str, Tuple[Callable[[StudyConfig], bool], str, Tuple[int, ...]]] = {
    "memorisation-cifar10": (_memorisation_spectra, os.path.join("spectral", "memorisation-trained"), (1, 3, 32, 32)),
}


def trained_spectra_label(config: TrainConfig) -> str:
    """The spectral record's label of a run (:func:`spectral_study.format_label`)."""
    return format_label(config.method, config.noise, config.noise_rate, config.seed)


def take_trained_spectra(study: str, config: StudyConfig, *, out_dir: str, checkpoint_dir: str,
                         log: Optional[Callable[[str], None]] = print) -> Optional[str]:
    """Measure the final checkpoint of a finished run of ``study`` if the study asks for it.

    Writes ``<parent of out_dir>/<STUDY_SPECTRA folder>/<label>.json`` (and its table and
    chart) with :func:`convnorm.experiments.spectral_study.run_spectral_report`, without the
    isometry gaps. Does nothing when the study measures no spectra, the config is not one it
    measures, the run has no complete record, the record already exists, or the checkpoint
    is not on this machine (said in the log). Returns the record's path when one was written.
    """
    if study not in STUDY_SPECTRA or not STUDY_SPECTRA[study][0](config):
        return None
    name = config_name(config)
    record_path = os.path.join(out_dir, name + ".json")
    if not os.path.exists(record_path) or read_json(record_path).get("status") != "complete":
        return None
    label = trained_spectra_label(config)
    spectra_dir = os.path.join(os.path.dirname(os.path.normpath(out_dir)), STUDY_SPECTRA[study][1])
    if os.path.exists(os.path.join(spectra_dir, label + ".json")):
        return None
    checkpoint = os.path.join(checkpoint_dir, name + ".pt")
    if not os.path.exists(checkpoint):
        if log:
            log(f"{name}: no final checkpoint {checkpoint} here, so its trained spectra ({label}) cannot be taken")
        return None
    from convnorm.experiments.spectral_study import run_spectral_report

    path = run_spectral_report(spectra_dir, checkpoint=checkpoint, label=label, isometry=False,
                               input_shape=STUDY_SPECTRA[study][2])
    if log:
        log(f"{name}: trained spectra in {path}")
    return path


# Per config type: its run name and its (resumable) trainer.
_RUNNERS: Dict[type, Tuple[Callable[[Any], str], Callable[..., Dict[str, Any]]]] = {
    TrainConfig: (run_name, train),
    AdvConfig: (adv_run_name, train_free_at),
    GANConfig: (gan_run_name, train_gan),
}


def config_name(config: StudyConfig) -> str:
    """The run (record) name of a study config."""
    return _RUNNERS[type(config)][0](config)


def run_config(config: StudyConfig, *, out_dir: str, checkpoint_dir: str, device=None) -> Dict[str, Any]:
    """Train (or resume, or return) one config of a study with the right trainer."""
    return _RUNNERS[type(config)][1](config, out_dir=out_dir, checkpoint_dir=checkpoint_dir, device=device)


@contextlib.contextmanager
def claim_run(checkpoint_dir: str, name: str) -> Iterator[bool]:
    """Claim run ``name`` for this process while the block runs; yields whether it got it.

    An exclusive, non-blocking ``flock`` on ``<checkpoint_dir>/<name>.lock``: False means
    another process (or another claim in this one) holds the run. Where ``fcntl`` does not
    exist (Windows) every claim succeeds, so run one process per study there.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the platforms tested here
        yield True
        return
    os.makedirs(checkpoint_dir, exist_ok=True)
    with open(os.path.join(checkpoint_dir, f"{name}.lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = True
        except BlockingIOError:  # held elsewhere; any other OSError (no flock support) is the caller's to see
            mine = False
        try:
            yield mine
        finally:
            if mine:
                fcntl.flock(handle, fcntl.LOCK_UN)


def run_is_claimed(checkpoint_dir: str, name: str) -> bool:
    """Whether a process holds the claim on run ``name`` now (read-only probe: creates nothing).

    Takes a shared lock for an instant, so a worker claiming the run at that very moment
    can miss it; the study command retries a failed claim once for that reason.
    """
    path = os.path.join(checkpoint_dir, f"{name}.lock")
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    if not os.path.exists(path):
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def study_configs(name: str) -> List[StudyConfig]:
    """The configs of study ``name``, in the order they run."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid studies are {', '.join(STUDIES)}")
    return STUDIES[name]()


def _run_state(out_dir: str, name: str) -> str:
    """The record's status; a running one with how far it got (``"running, 8 of 12 epochs"``)."""
    path = os.path.join(out_dir, name + ".json")
    if not os.path.exists(path):
        return "not started"
    try:
        record = read_json(path)
    except ValueError:
        return "corrupt record"
    status = record.get("status", "?")
    if status != "running":
        return status
    config = record.get("config", {})
    if "iterations_done" in record:  # a GAN counts iterations
        done, total, unit = record["iterations_done"], config.get("iterations"), "iterations"
    else:  # free AT counts passes, the others epochs
        done, total, unit = len(record.get("epochs", [])), record.get("passes", config.get("epochs")), "epochs"
    return f"running, {done} of {total} {unit}" if total else status


def study_states(name: str, *, out_dir: str, checkpoint_dir: str) -> List[Tuple[str, str]]:
    """(state, run name) for every run of study ``name``, in order: the record's status, or
    ``"not started"``, with ``" (training in another process)"`` where a worker holds it."""
    states = []
    for config in study_configs(name):
        run = config_name(config)
        state = _run_state(out_dir, run)
        if state != "complete" and run_is_claimed(checkpoint_dir, run):
            state += " (training in another process)"
        states.append((state, run))
    return states


def run_study(name: str, *, out_dir: str, checkpoint_dir: str, data_root: Optional[str] = None, device=None,
              log: Callable[[str], None] = print) -> List[str]:
    """Train every run of study ``name`` that no other process holds, in order.

    Finished runs return at once and interrupted ones resume (the run shell); a run that
    another worker holds is skipped. Returns the names of the runs that other processes were
    still training at the end (empty: the study is complete).
    """
    configs = [dataclasses.replace(c, data_root=data_root) for c in study_configs(name)]
    held = []
    for i, config in enumerate(configs):
        run = config_name(config)
        for attempt in range(2):  # a second try: `--list` may have probed the lock at that instant
            with claim_run(checkpoint_dir, run) as mine:
                if mine:
                    log(f"[{i + 1}/{len(configs)}] {run}")
                    run_config(config, out_dir=out_dir, checkpoint_dir=checkpoint_dir, device=device)
                    take_trained_spectra(name, config, out_dir=out_dir, checkpoint_dir=checkpoint_dir, log=log)
                    break
            if attempt == 0:
                time.sleep(1.0)
        else:
            log(f"[{i + 1}/{len(configs)}] {run}: training in another process, skipped")
            held.append(run)
    return [run for run in held if _run_state(out_dir, run) != "complete"]  # others may have finished them
