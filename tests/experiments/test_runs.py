"""The run shell: every kind of run finishes, resumes or starts by the same rules."""
from __future__ import annotations

import json
import os

import pytest
import torch

from convnorm.experiments import cli
from convnorm.experiments.gan import gan_config_from_args, train_gan
from convnorm.experiments.gan import run_name as gan_run_name
from convnorm.experiments.robust import adv_preset, adv_run_name, train_free_at
from convnorm.experiments.provenance import process_id, running_commit
from convnorm.experiments.runs import Run, choose_device
from convnorm.experiments.studies import config_name, run_config
from convnorm.experiments.train import preset, run_name, train


pytestmark = pytest.mark.usefixtures("one_thread")


class _FakeFeatures:
    """A cheap stand-in for the Inception features (FID needs some features, not these)."""

    fingerprint = "fake-features-runs"
    dim = 6

    def __call__(self, images):
        x = images.double() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _train_kind():
    config = preset("test", epochs=1)
    return config, run_name(config), lambda out, ckpt, log: train(config, out_dir=out, checkpoint_dir=ckpt, log=log)


def _study_kind():
    config = preset("test", epochs=1, seed=1)
    return config, config_name(config), lambda out, ckpt, log: run_config(config, out_dir=out, checkpoint_dir=ckpt)


def _adv_kind():
    config = adv_preset("test", epochs=1)
    return config, adv_run_name(config), lambda out, ckpt, log: train_free_at(config, out_dir=out, checkpoint_dir=ckpt,
                                                                              log=log)


def _gan_kind():
    config = gan_config_from_args("test", fid_samples=16, fid_reference_samples=24, fid_every=0)
    return config, gan_run_name(config), lambda out, ckpt, log: train_gan(
        config, out_dir=out, checkpoint_dir=ckpt, log=log, feature_extractor=_FakeFeatures(), fid_cache_dir=None)


KINDS = {"train": _train_kind, "study": _study_kind, "adv-train": _adv_kind, "gan-train": _gan_kind}
HEADLINES = {"train": ("final_test_acc", "best_val_test_acc"), "study": ("final_test_acc", "best_val_test_acc"),
             "adv-train": ("clean_acc", "fgsm_acc", "pgd_acc"), "gan-train": ("final_fid", "iterations_done")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run of every kind, with its folders: kind -> (name, out, ckpt, record, runner)."""
    runs = {}
    for kind, make in KINDS.items():
        root = tmp_path_factory.mktemp(kind.replace("-", "_"))
        config, name, runner = make()
        out, ckpt = str(root / "results"), str(root / "checkpoints")
        record = runner(out, ckpt, None)
        assert record["status"] == "complete"
        runs[kind] = (name, out, ckpt, record, runner)
    return runs


def _copy_run(run, tmp_path):
    """The finished run's two files, copied to a fresh pair of folders."""
    name, out, ckpt, record, runner = run
    new_out, new_ckpt = tmp_path / "results", tmp_path / "checkpoints"
    new_out.mkdir()
    new_ckpt.mkdir()
    (new_out / f"{name}.json").write_bytes(open(os.path.join(out, f"{name}.json"), "rb").read())
    (new_ckpt / f"{name}.pt").write_bytes(open(os.path.join(ckpt, f"{name}.pt"), "rb").read())
    return str(new_out), str(new_ckpt)


def _same_headline(kind, a, b):
    for field in HEADLINES[kind]:
        assert a[field] == b[field], field


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_deleted_record_of_a_finished_run_is_rebuilt_from_its_checkpoint(finished, tmp_path, kind):
    name, _, _, record, runner = finished[kind]
    out, ckpt = _copy_run(finished[kind], tmp_path)
    os.remove(os.path.join(out, f"{name}.json"))
    rebuilt = runner(out, ckpt, None)
    assert rebuilt["status"] == "complete"
    _same_headline(kind, rebuilt, record)
    on_disk = json.loads(open(os.path.join(out, f"{name}.json")).read())
    assert on_disk["status"] == "complete"
    _same_headline(kind, on_disk, record)


def test_demo_rerun_after_deleting_its_records_prints_its_table(tmp_path, capsys):
    args = ["demo", "--dataset", "synthetic", "--epochs", "1", "--out", str(tmp_path / "demo"),
            "--checkpoints", str(tmp_path / "ckpt")]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    for f in os.listdir(tmp_path / "demo"):
        if f.endswith(".json"):
            os.remove(tmp_path / "demo" / f)
    assert cli.main(args) == 0
    again = capsys.readouterr().out
    table = [line for line in first.splitlines() if line.startswith("|")]
    assert len(table) == 4  # header, rule, BN, the paper's block
    assert table == [line for line in again.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("kind", ["train", "adv-train", "gan-train"])
@pytest.mark.parametrize("damage", ["truncated", "missing field", "not a record"])
def test_damaged_record_names_the_file_and_resumes(finished, tmp_path, kind, damage):
    name, _, _, record, runner = finished[kind]
    out, ckpt = _copy_run(finished[kind], tmp_path)
    path = os.path.join(out, f"{name}.json")
    text = open(path).read()
    if damage == "truncated":
        open(path, "w").write(text[: len(text) // 2])
    elif damage == "missing field":
        broken = json.loads(text)
        del broken[HEADLINES[kind][0]]
        open(path, "w").write(json.dumps(broken))
    else:
        open(path, "w").write("[1, 2, 3]")
    messages = []
    rebuilt = runner(out, ckpt, messages.append)
    assert any(path in m and "resuming from the last checkpoint" in m for m in messages), messages
    assert rebuilt["status"] == "complete"
    _same_headline(kind, rebuilt, record)


@pytest.mark.parametrize("kind", ["train", "adv-train", "gan-train"])
@pytest.mark.parametrize("damage", ["unreadable", "another config"])
def test_damaged_checkpoint_names_the_file_and_starts_over(finished, tmp_path, kind, damage):
    name, _, _, record, runner = finished[kind]
    out, ckpt = _copy_run(finished[kind], tmp_path)
    os.remove(os.path.join(out, f"{name}.json"))
    path = os.path.join(ckpt, f"{name}.pt")
    if damage == "unreadable":
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 3])
    else:
        state = torch.load(path, weights_only=False)
        identity = state["identity"] if "identity" in state else state["config"]["identity"]
        identity["seed"] = 12345  # the checkpoint of another config under this run's name
        torch.save(state, path)
    # Another run's finished record in the same folder must come through untouched.
    bystander = os.path.join(out, "someone-else.json")
    open(bystander, "w").write('{"kind": "train", "status": "complete"}\n')
    messages = []
    again = runner(out, ckpt, messages.append)
    expected = "unreadable" if damage == "unreadable" else "belongs to another config"
    assert any(path in m and expected in m and "starting over" in m for m in messages), messages
    assert again["status"] == "complete"
    _same_headline(kind, again, record)  # trained again from the start, deterministically
    assert open(bystander).read() == '{"kind": "train", "status": "complete"}\n'


@pytest.mark.parametrize("kind", ["train", "adv-train", "gan-train"])
def test_a_resumed_run_keeps_the_provenance_of_the_processes_before_it(finished, tmp_path, kind):
    """The record names the process that finished the run; the ones that trained it before stay
    under ``earlier_provenance``, oldest first, so a study run across sessions shows every commit."""
    name, _, _, record, runner = finished[kind]
    out, ckpt = _copy_run(finished[kind], tmp_path)
    path = os.path.join(out, f"{name}.json")
    first = dict(record["provenance"], git_commit="1" * 40 + "-dirty", date="2026-01-01T00:00:00+00:00",
                 process="a" * 12)
    second = dict(record["provenance"], git_commit="2" * 40, device="another machine (1 threads)", process="b" * 12)
    interrupted = dict(json.loads(open(path).read()), status="running", provenance=second,
                       earlier_provenance=[first])
    open(path, "w").write(json.dumps(interrupted))
    checkpoint = os.path.join(ckpt, f"{name}.pt")
    state = torch.load(checkpoint, weights_only=False)
    if "processes" in state:  # free AT's checkpoint keeps the list itself (it saves between record writes)
        state["processes"] = [first, second]
        torch.save(state, checkpoint)
    resumed = runner(out, ckpt, None)
    assert resumed["status"] == "complete"
    assert resumed["earlier_provenance"] == [first, second]
    assert resumed["provenance"]["git_commit"] == running_commit()
    assert resumed["provenance"]["process"] == process_id()
    assert json.loads(open(path).read())["earlier_provenance"] == [first, second]


def test_a_run_stopped_and_resumed_in_one_process_does_not_list_that_process_twice(tmp_path):
    config = adv_preset("test")
    folders = dict(out_dir=str(tmp_path / "r"), checkpoint_dir=str(tmp_path / "c"), log=None)
    part = train_free_at(config, stop_after_epoch=1, **folders)
    assert part["status"] == "running" and "earlier_provenance" not in part
    whole = train_free_at(config, **folders)
    assert whole["status"] == "complete" and "earlier_provenance" not in whole
    assert whole["provenance"]["process"] == part["provenance"]["process"] == process_id()


def test_earlier_provenance_of_a_run_without_a_readable_record_is_empty(tmp_path):
    run = Run("r", {"lr": 0.1}, str(tmp_path), str(tmp_path / "c"))
    assert run.earlier_provenance() == []  # no record
    (tmp_path / "r.json").write_text("{not json")
    assert run.earlier_provenance() == []
    (tmp_path / "r.json").write_text(json.dumps({"config": {"lr": 0.1}, "status": "running"}))
    assert run.earlier_provenance() == []  # a record without provenance
    record = {"provenance": {"git_commit": "abc", "process": "p"}}
    run.keep_earlier_provenance(record)
    assert "earlier_provenance" not in record
    # A checkpoint's list wins over the record's: it holds work no record mentions yet.
    older = [{"git_commit": "old", "process": "q"}, {"git_commit": "abc", "process": "p"}]
    run.keep_earlier_provenance(record, {"processes": older})
    assert record["earlier_provenance"] == older[:1]  # this process itself is left out


def test_a_record_of_another_config_is_refused(tmp_path):
    run = Run("r", {"lr": 0.1}, str(tmp_path), str(tmp_path / "c"))
    (tmp_path / "r.json").write_text(json.dumps({"config": {"lr": 0.2}, "status": "complete"}))
    with pytest.raises(ValueError, match="different config"):
        run.finished_record()


def test_finished_record_rules(tmp_path):
    run = Run("r", {"lr": 0.1}, str(tmp_path), str(tmp_path / "c"), headline=("acc",))
    assert run.finished_record() is None  # missing
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"config": {"lr": 0.1}, "status": "diverged"}))
    assert run.finished_record()["status"] == "diverged"
    path.write_text(json.dumps({"config": {"lr": 0.1}, "status": "running"}))
    assert run.finished_record() is None
    path.write_text(json.dumps({"config": {"lr": 0.1}, "status": "complete", "acc": 0.5}))
    assert run.finished_record()["acc"] == 0.5
    messages = []
    path.write_text(json.dumps({"config": {"lr": 0.1}, "status": "weird"}))
    assert run.finished_record(messages.append) is None and "status 'weird'" in messages[0]


def test_choose_device():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
