"""Experiment records: JSON files that carry their config, seed and provenance.

Every experiment writes one record; tables and plots are generated from records only.
Writes are atomic (temp file, then rename), so an interrupted run never leaves a torn file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from typing import Any, Dict, Iterator, List, Tuple

import torch

from convnorm.experiments.provenance import provenance

__all__ = ["atomic_write_bytes", "write_json", "read_json", "new_record", "iter_records", "save_checkpoint",
           "config_identity", "config_from_preset", "config_digest"]


def atomic_write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str, state: Dict[str, Any]) -> str:
    """``torch.save`` ``state`` to ``path`` atomically (an interrupted save keeps the old file)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def config_identity(config: Any) -> Dict[str, Any]:
    """A config dataclass as JSON-ready data, without fields marked ``metadata={"identity": False}``
    (such as where the data lives): what defines a run's result, and so its name and record.

    A field marked ``metadata={"identity": "unless-default"}`` is left out while it holds its
    default: a field added later then leaves the names and records of earlier runs unchanged.
    """
    out = {}
    for f in dataclasses.fields(config):
        rule = f.metadata.get("identity", True)
        value = getattr(config, f.name)
        default = f.default_factory() if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING \
            else f.default
        if rule is False or (rule == "unless-default" and value == default):
            continue
        out[f.name] = value
    return json.loads(json.dumps(out))  # tuples become lists, as they are in a JSON record


def config_from_preset(cls, presets: Dict[str, Dict[str, Any]], name: str, overrides: Dict[str, Any]):
    """``cls(**presets[name])`` with the non-``None`` ``overrides`` applied, validated."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; valid presets are {', '.join(presets)}")
    values = dict(presets[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = cls(**values)
    config.validate()
    return config


def config_digest(config: Any) -> str:
    """A short hash of :func:`config_identity`, for run names."""
    return hashlib.sha1(json.dumps(config_identity(config), sort_keys=True).encode()).hexdigest()[:8]


def write_json(path: str, data: Any) -> str:
    """Atomically write ``data`` as indented, key-sorted JSON (stable diffs)."""
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n"
    return atomic_write_bytes(path, text.encode())


def read_json(path: str) -> Any:
    """Read a JSON record; a corrupt file raises ``ValueError`` naming the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"corrupt JSON record {path}: {err}") from err


def new_record(kind: str, config: Dict[str, Any], *, seed: int | None, device: torch.device) -> Dict[str, Any]:
    """The common envelope: kind, config, seed, git commit, versions, device, date."""
    return {"kind": kind, "config": dict(config), "seed": seed, "provenance": provenance(device)}


def iter_records(folder: str, kind: str | None = None) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(path, record) for every ``*.json`` record under ``folder`` (recursive, sorted).

    Files that are not records (no ``kind`` key) are skipped; ``kind`` filters by it.
    """
    paths: List[str] = []
    for root, _, files in os.walk(folder):
        paths += [os.path.join(root, f) for f in files if f.endswith(".json") and not f.startswith(".")]
    for path in sorted(paths):
        record = read_json(path)
        if isinstance(record, dict) and "kind" in record and (kind is None or record["kind"] == kind):
            yield path, record
