"""Experiment records: atomic writes, corrupt files named, config identity and digests, record discovery."""
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pytest
import torch

from convnorm.experiments import records
from convnorm.experiments.records import (
    atomic_write_bytes,
    config_digest,
    config_from_preset,
    config_identity,
    iter_records,
    new_record,
    read_json,
    save_checkpoint,
    write_json,
)


def _leftovers(folder):
    """The names in ``folder``: a temp file left behind by a write would show up here."""
    return sorted(os.listdir(folder))


# -- atomic writes ----------------------------------------------------------------------------

def test_atomic_write_creates_folders_and_leaves_only_the_file(tmp_path):
    path = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write_bytes(str(path), b"\x00\x01payload") == str(path)
    assert path.read_bytes() == b"\x00\x01payload"
    assert _leftovers(path.parent) == ["out.bin"]
    atomic_write_bytes(str(path), b"second")  # replaces, not appends
    assert path.read_bytes() == b"second"
    assert _leftovers(path.parent) == ["out.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_rename_keeps_the_old_file_and_removes_the_temp_file(tmp_path, monkeypatch, error):
    path = tmp_path / "record.json"
    path.write_bytes(b"old contents")
    seen = []

    def failing_replace(src, dst):
        seen.append(src)
        assert os.path.exists(src)  # the new bytes were written to a temp file beside the target
        raise error

    monkeypatch.setattr(records.os, "replace", failing_replace)
    with pytest.raises(type(error)):
        atomic_write_bytes(str(path), b"new contents")
    monkeypatch.undo()
    assert len(seen) == 1 and os.path.dirname(seen[0]) == str(tmp_path)
    assert path.read_bytes() == b"old contents"
    assert _leftovers(tmp_path) == ["record.json"]


def test_a_write_failing_midway_keeps_the_old_json_and_removes_the_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    write_json(str(path), {"kind": "train", "value": 1})
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError("I/O error while flushing")

    monkeypatch.setattr(records.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        write_json(str(path), {"kind": "train", "value": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert json.loads(path.read_text())["value"] == 1
    assert _leftovers(tmp_path) == ["record.json"]


def test_data_that_cannot_be_serialized_leaves_the_old_json_untouched(tmp_path):
    path = tmp_path / "record.json"
    write_json(str(path), {"kind": "train", "value": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json(str(path), {"kind": "train", "value": object()})
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == ["record.json"]


def test_write_json_is_indented_key_sorted_and_ends_with_a_newline(tmp_path):
    data = {"zeta": 1, "alpha": {"y": [1, 2], "b": None}, "mid": "text", "nan": float("nan")}
    path = tmp_path / "r.json"
    write_json(str(path), data)
    text = path.read_text()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    top_keys = re.findall(r'^  "(\w+)":', text, flags=re.M)  # two-space indent at the top level
    assert top_keys == ["alpha", "mid", "nan", "zeta"]
    assert re.findall(r'^    "(\w+)":', text, flags=re.M) == ["b", "y"]  # nested keys sorted and indented again
    back = json.loads(text)
    assert math.isnan(back.pop("nan")) and back == {k: v for k, v in data.items() if k != "nan"}
    first = path.read_bytes()
    write_json(str(path), dict(reversed(list(data.items()))))  # insertion order does not matter
    assert path.read_bytes() == first


# -- reading ----------------------------------------------------------------------------------

def test_read_json_round_trips_what_write_json_wrote(tmp_path):
    data = {"kind": "gan", "config": {"betas": [0.0, 0.9], "seed": 3}, "values": [1.5, -2, "x"]}
    path = write_json(str(tmp_path / "r.json"), data)
    assert read_json(path) == data


@pytest.mark.parametrize("cut", [0, 1, 10, -2])
def test_read_json_on_a_truncated_file_raises_value_error_naming_the_path(tmp_path, cut):
    path = tmp_path / "torn.json"
    full = json.dumps({"kind": "train", "config": {"a": 1, "b": [1, 2, 3]}}, indent=2)
    path.write_text(full[:cut] if cut >= 0 else full[:len(full) + cut])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_json(str(path))


def test_read_json_on_a_missing_file_is_not_called_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_json(str(tmp_path / "absent.json"))


# -- config identity, digests and presets ------------------------------------------------------

@dataclass
class _Config:
    name: str = "base"
    lr: float = 0.1
    milestones: Sequence[int] = (10, 20)
    added_later: int = field(default=0, metadata={"identity": "unless-default"})
    data_root: Optional[str] = field(default=None, metadata={"identity": False})
    options: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def _sha1_digest(identity):
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


def test_config_identity_drops_non_identity_fields_and_unless_default_fields_at_their_default():
    identity = config_identity(_Config(data_root="/data/elsewhere"))
    assert identity == {"name": "base", "lr": 0.1, "milestones": [10, 20], "options": {}}
    assert isinstance(identity["milestones"], list)  # tuples become lists, as in a JSON record
    moved = config_identity(_Config(added_later=5))
    assert moved["added_later"] == 5 and "data_root" not in moved
    assert set(moved) == {"name", "lr", "milestones", "added_later", "options"}


def test_config_identity_is_json_data_that_equals_a_written_records_config(tmp_path):
    config = _Config(milestones=(3,), options={"widths": (4, 8)})
    identity = config_identity(config)
    write_json(str(tmp_path / "r.json"), {"kind": "x", "config": identity})
    assert json.loads((tmp_path / "r.json").read_text())["config"] == identity
    assert identity["options"] == {"widths": [4, 8]}


def test_config_digest_is_a_short_sha1_of_the_identity():
    config = _Config(lr=0.05)
    digest = config_digest(config)
    assert re.fullmatch(r"[0-9a-f]{8}", digest)
    expected = _sha1_digest({"lr": 0.05, "milestones": [10, 20], "name": "base", "options": {}})
    assert digest == expected


def test_config_digest_follows_identity_fields_only():
    base = config_digest(_Config())
    assert config_digest(_Config(lr=0.2)) != base
    assert config_digest(_Config(milestones=(10,))) != base
    assert config_digest(_Config(options={"w": 1})) != base
    assert config_digest(_Config(data_root="/somewhere/else")) == base  # where the data lives is not identity
    # a field added later leaves earlier names unchanged while at its default, and changes them otherwise
    assert config_digest(_Config(added_later=0)) == base
    assert config_digest(_Config(added_later=1)) != base
    assert config_digest(_Config(added_later=1)) == _sha1_digest(
        {"name": "base", "lr": 0.1, "milestones": [10, 20], "added_later": 1, "options": {}})


def test_config_from_preset_applies_non_none_overrides_and_validates():
    presets = {"small": {"name": "small", "lr": 0.01}, "big": {"name": "big", "lr": 1.0, "milestones": (1,)}}
    config = config_from_preset(_Config, presets, "small", {"lr": None, "data_root": None, "milestones": (5,)})
    assert isinstance(config, _Config)
    assert (config.name, config.lr, tuple(config.milestones), config.data_root) == ("small", 0.01, (5,), None)
    assert config_from_preset(_Config, presets, "big", {}).milestones == (1,)
    assert presets["small"] == {"name": "small", "lr": 0.01}  # the preset table is not changed by overrides
    with pytest.raises(ValueError, match="lr must be positive"):
        config_from_preset(_Config, presets, "small", {"lr": -1.0})
    with pytest.raises(TypeError):
        config_from_preset(_Config, presets, "small", {"not_a_field": 3})


def test_config_from_preset_rejects_unknown_presets_naming_the_valid_ones():
    presets = {"small": {}, "big": {}}
    with pytest.raises(ValueError, match="unknown preset 'huge'") as err:
        config_from_preset(_Config, presets, "huge", {})
    assert "small" in str(err.value) and "big" in str(err.value)


# -- records ----------------------------------------------------------------------------------

def test_new_record_carries_kind_config_seed_and_provenance():
    config = {"lr": 0.1, "milestones": [1, 2]}
    record = new_record("train", config, seed=7, device=torch.device("cpu"))
    assert record["kind"] == "train" and record["seed"] == 7 and record["config"] == config
    record["config"]["lr"] = 99.0
    assert config["lr"] == 0.1  # the record holds its own copy
    assert set(record["provenance"]) == {"git_commit", "process", "versions", "device", "device_type", "date"}
    assert record["provenance"]["device_type"] == "cpu"
    assert new_record("fid-validation", {}, seed=None, device=torch.device("cpu"))["seed"] is None


def test_iter_records_walks_recursively_in_sorted_order_and_filters_by_kind(tmp_path):
    write_json(str(tmp_path / "b.json"), {"kind": "train", "id": "b"})
    write_json(str(tmp_path / "a.json"), {"kind": "gan", "id": "a"})
    write_json(str(tmp_path / "sub" / "deeper" / "c.json"), {"kind": "train", "id": "c"})
    write_json(str(tmp_path / "sub" / "a.json"), {"kind": "spectral", "id": "sub-a"})
    # not records: no "kind", not a dict, not .json, hidden (a temp file of a write in progress)
    write_json(str(tmp_path / "metrics.json"), {"accuracy": 0.9})
    write_json(str(tmp_path / "list.json"), [{"kind": "train"}])
    (tmp_path / "notes.txt").write_text('{"kind": "train"}')
    (tmp_path / ".tmp-xyz-d.json").write_text('{"kind": "train", "id": "tmp"')  # torn, and must not be read
    found = list(iter_records(str(tmp_path)))
    expected_paths = sorted(str(tmp_path / p) for p in ("a.json", "b.json", "sub/a.json", "sub/deeper/c.json"))
    assert [p for p, _ in found] == expected_paths
    assert {r["id"] for _, r in found} == {"a", "b", "c", "sub-a"}
    for path, record in found:
        assert record == json.loads(open(path).read())
    assert [r["id"] for _, r in iter_records(str(tmp_path), kind="train")] == ["b", "c"]
    assert list(iter_records(str(tmp_path), kind="robust")) == []


def test_iter_records_of_an_empty_or_missing_folder_is_empty(tmp_path):
    assert list(iter_records(str(tmp_path))) == []
    assert list(iter_records(str(tmp_path / "does-not-exist"))) == []


def test_iter_records_names_a_corrupt_record(tmp_path):
    write_json(str(tmp_path / "good.json"), {"kind": "train"})
    (tmp_path / "zbad.json").write_text('{"kind": "tra')
    with pytest.raises(ValueError, match="zbad.json"):
        list(iter_records(str(tmp_path)))


# -- checkpoints ------------------------------------------------------------------------------

def test_save_checkpoint_round_trips_with_torch_load(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {"config": {"model": "small_resnet", "widths": [4, 8]}, "epoch": 3,
             "model": {"w": torch.randn(3, 4, generator=gen), "b": torch.arange(5, dtype=torch.int64)},
             "curve": [0.5, 0.25]}
    path = tmp_path / "ckpt" / "run.pt"
    assert save_checkpoint(str(path), state) == str(path)
    loaded = torch.load(path, weights_only=False)
    assert loaded["config"] == state["config"] and loaded["epoch"] == 3 and loaded["curve"] == [0.5, 0.25]
    assert set(loaded["model"]) == {"w", "b"}
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert torch.equal(loaded["model"]["b"], state["model"]["b"]) and loaded["model"]["b"].dtype == torch.int64
    assert _leftovers(path.parent) == ["run.pt"]


def test_an_interrupted_checkpoint_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_checkpoint(str(path), {"epoch": 1, "w": torch.ones(2)})
    before = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(records.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(str(path), {"epoch": 2, "w": torch.zeros(2)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=False)["epoch"] == 1
    assert _leftovers(tmp_path) == ["run.pt"]



def test_a_record_of_undecodable_bytes_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe{not text")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        records.read_json(str(path))


def test_unless_default_fields_with_a_default_factory_are_left_out_at_their_default():
    @dataclass
    class WithFactory:
        lr: float = 0.1
        options: dict = field(default_factory=dict, metadata={"identity": "unless-default"})

    assert records.config_identity(WithFactory()) == {"lr": 0.1}
    assert records.config_identity(WithFactory(options={"a": 1})) == {"lr": 0.1, "options": {"a": 1}}
