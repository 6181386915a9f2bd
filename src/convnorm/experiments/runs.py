"""The resumable-run shell that every experiment goes through.

A run has a config, a name derived from it, a JSON record and a checkpoint. This module
alone decides, from those two files, whether a run is finished, resumes, or starts:

==============================================  ==============================================
record                                          what happens
==============================================  ==============================================
complete (status and every headline field)      returned at once; nothing is trained
diverged                                        returned at once (a diverged run is finished)
missing                                         resume from the checkpoint, or start
incomplete (a headline field missing, or a      a message naming the file, then resume from
status that is neither) or corrupt (not JSON)   the last good checkpoint
holds another config                            ``ValueError``: names carry a digest of the
                                                config, so only a hand edit gets here
==============================================  ==============================================

==============================================  ==============================================
checkpoint                                      what happens
==============================================  ==============================================
missing                                         start
unreadable (truncated, not a checkpoint)        a message naming the file, then start over
another config                                  a message naming the file, then start over
==============================================  ==============================================

A checkpoint that holds a finished run (its last epoch or iteration) resumes straight into
the run's final step, which writes the complete record: deleting a record and rerunning
rebuilds it without training. Only the run's own two files are read or written, so the
records of other runs are never touched. Two workers on one study never train the same run
(:func:`convnorm.experiments.studies.claim_run`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from convnorm.experiments.records import read_json, save_checkpoint, write_json

__all__ = ["Run", "choose_device", "epoch_generator", "learning_rate", "model_description", "processes"]

Log = Optional[Callable[[str], None]]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle and augmentation, seeded by ``(seed, epoch)``: a
    resumed run replays exactly the epochs an uninterrupted run would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)


def learning_rate(base: float, schedule: str, *, epoch: int, step: int, steps_per_epoch: int, epochs: int,
                  milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """The learning rate at ``step`` (0-based, within the epoch) of ``epoch`` (0-based).

    ``schedule='step'``: ``base`` times ``gamma`` for every milestone epoch reached;
    ``'cosine'``: half a cosine from ``base`` to 0 over ``epochs * steps_per_epoch`` steps.
    """
    if schedule == "step":
        return base * gamma ** sum(epoch >= m for m in milestones)
    progress = (epoch * steps_per_epoch + step) / (epochs * steps_per_epoch)
    return 0.5 * base * (1 + math.cos(math.pi * progress))


def model_description(config: Any, in_channels: int, num_classes: int, **extra: Any) -> Dict[str, Any]:
    """What a checkpoint says about its model, enough to rebuild it without the config class:
    model, method, channels, classes, model options, the config's identity, and ``extra``."""
    return dict(model=config.model, method=config.method, in_channels=in_channels, num_classes=num_classes,
                model_options=config.model_options, identity=config.identity(), **extra)


def choose_device(device: Optional[str] = None) -> torch.device:
    """``device``, or CUDA when available (under ``torchrun``, the local rank's GPU), else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


@dataclass(frozen=True)
class Run:
    """One run's files and the rules that read them.

    Args:
        name: the run's name (a file stem, derived from its config).
        identity: the config as JSON data (``config.identity()``), stored in both files.
        out_dir: the folder of the record ``<name>.json``.
        checkpoint_dir: the folder of the checkpoint ``<name>.pt``.
        headline: the record fields a complete record must have.
    """

    name: str
    identity: Dict[str, Any]
    out_dir: str
    checkpoint_dir: str
    headline: Sequence[str] = ()

    @property
    def record_path(self) -> str:
        return os.path.join(self.out_dir, f"{self.name}.json")

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.checkpoint_dir, f"{self.name}.pt")

    def finished_record(self, log: Log = None) -> Optional[Dict[str, Any]]:
        """The run's record if it is finished and whole, else ``None`` (train: resume or start).

        Raises:
            ValueError: the record holds another config.
        """
        path = self.record_path
        if not os.path.exists(path):
            return None
        try:
            record = read_json(path)
        except (ValueError, OSError) as error:
            _say(log, f"{self.name}: {error}; resuming from the last checkpoint")
            return None
        if not isinstance(record, dict):
            _say(log, f"{self.name}: {path} is not a record (a JSON {type(record).__name__}); resuming from the "
                      "last checkpoint")
            return None
        if "config" in record and record["config"] != self.identity:
            raise ValueError(f"{path} holds a different config; remove it or change the output folder")
        status = record.get("status")
        if status == "diverged":
            return record
        if status == "complete":
            missing = [field for field in ("config", *self.headline) if field not in record]
            if not missing:
                return record
            _say(log, f"{self.name}: {path} is incomplete (missing {', '.join(missing)}); resuming from the "
                      "last checkpoint")
        elif status != "running":
            _say(log, f"{self.name}: {path} is incomplete (status {status!r}); resuming from the last checkpoint")
        return None

    def load_checkpoint(self, device: torch.device, log: Log = None,
                        identity_of: Callable[[Dict[str, Any]], Any] = lambda state: state["config"]["identity"]
                        ) -> Optional[Dict[str, Any]]:
        """The run's checkpoint, or ``None`` to start over (missing, unreadable, another config).

        Args:
            device: where tensors are loaded.
            identity_of: where the checkpoint keeps the config's identity.
        """
        path = self.checkpoint_path
        if not os.path.exists(path):
            return None
        try:
            state = torch.load(path, map_location=device, weights_only=False)
            identity = identity_of(state)
        except Exception as error:  # torch.load raises many kinds on a torn or foreign file
            _say(log, f"{self.name}: checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                      "starting over")
            return None
        if identity != self.identity:
            _say(log, f"{self.name}: checkpoint {path} belongs to another config; starting over")
            return None
        return state

    def earlier_provenance(self, state: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
        """The provenance of the processes that trained this run before, oldest first.

        From the checkpoint ``state`` when it keeps them (``state["processes"]``, see
        :func:`processes`: a trainer that saves inside an epoch has work in its checkpoint
        that no record mentions yet), else from the record: the list it keeps, then its own.
        Empty without either.
        """
        if state is not None and "processes" in state:
            return list(state["processes"])
        try:
            record = read_json(self.record_path)
        except (ValueError, OSError):
            return []
        if not isinstance(record, dict) or "provenance" not in record:
            return []
        return processes(record)

    def keep_earlier_provenance(self, record: Dict[str, Any], state: Optional[Dict[str, Any]] = None) -> None:
        """On resuming: put :meth:`earlier_provenance` into ``record`` (when there is any).

        A resumed run's record names the process that finished it (``provenance``) and keeps
        the ones before it under ``earlier_provenance``, so every commit and machine that
        trained it shows. This process's own earlier entries (a run stopped and resumed in one
        process) are left out: ``provenance`` already names it.
        """
        this = record["provenance"].get("process")
        earlier = [p for p in self.earlier_provenance(state) if this is None or p.get("process") != this]
        if earlier:
            record["earlier_provenance"] = earlier

    def save(self, state: Optional[Dict[str, Any]], record: Dict[str, Any]) -> None:
        """Write the checkpoint (when given), then the record, each atomically."""
        if state is not None:
            save_checkpoint(self.checkpoint_path, state)
        write_json(self.record_path, record)


def processes(record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every process that has trained the run of ``record`` so far, oldest first: its
    ``earlier_provenance`` then its ``provenance``. A checkpoint saved between record writes
    keeps this list as ``"processes"`` (:meth:`Run.earlier_provenance` reads it back)."""
    return list(record.get("earlier_provenance", [])) + [record["provenance"]]


def _say(log: Log, message: str) -> None:
    if log is not None:
        log(message)
