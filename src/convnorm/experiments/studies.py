"""Named grids of training runs: the studies behind ``results/``.

``convnorm study <name>`` runs every config of a study in order, skipping finished runs and
resuming an interrupted one, so a study can be spread over many sessions: rerun the same
command until it reports nothing left. Records go to ``results/<name>/``.

Every method in a study gets the same budget (epochs, batch size, learning rate, schedule).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Union

from convnorm.experiments.robust import AdvConfig, adv_preset, adv_run_name, train_free_at
from convnorm.experiments.train import TrainConfig, preset, run_name, train

__all__ = ["STUDIES", "study_configs", "run_config", "config_name"]

StudyConfig = Union[TrainConfig, AdvConfig]

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


def _free_at_cifar10() -> List[AdvConfig]:
    return [adv_preset("cpu-free-at", method=m, seed=seed)
            for seed in (0, 1) for m in ("bn", "convnorm+bn", "sn", "oni", "ocnn")]


STUDIES: Dict[str, Callable[[], List[StudyConfig]]] = {
    "label-noise-fashion-mnist": _label_noise_fashion_mnist,
    "label-noise-cifar10": _label_noise_cifar10,
    "free-at-cifar10": _free_at_cifar10,
}


def config_name(config: StudyConfig) -> str:
    """The run (record) name of a study config."""
    return adv_run_name(config) if isinstance(config, AdvConfig) else run_name(config)


def run_config(config: StudyConfig, *, out_dir: str, checkpoint_dir: str, device=None) -> Dict[str, Any]:
    """Train (or resume, or return) one config of a study with the right trainer."""
    trainer = train_free_at if isinstance(config, AdvConfig) else train
    return trainer(config, out_dir=out_dir, checkpoint_dir=checkpoint_dir, device=device)


def study_configs(name: str) -> List[StudyConfig]:
    """The configs of study ``name``, in the order they run."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; valid studies are {', '.join(STUDIES)}")
    return STUDIES[name]()
