"""The training harness: records, resume equality, presets, DDP."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from convnorm.experiments.train import PRESETS, preset, prepare_data, run_name, train


def tiny(**overrides):
    return preset("test", **overrides)


def test_record_has_config_seed_provenance_and_metrics(tmp_path):
    config = tiny(method="convnorm", noise="symmetric", noise_rate=0.4)
    record = train(config, out_dir=str(tmp_path / "r"), checkpoint_dir=str(tmp_path / "c"), log=None)
    on_disk = json.loads((tmp_path / "r" / f"{run_name(config)}.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["status"] == "complete" and record["kind"] == "train"
    assert record["config"] == config.identity() and record["seed"] == config.seed
    for key in ("git_commit", "versions", "device"):
        assert key in record["provenance"]
    assert len(record["epochs"]) == config.epochs
    assert record["final_test_acc"] == record["epochs"][-1]["test_acc"]
    best = max(record["epochs"], key=lambda r: r["val_acc"])
    assert record["best_val_test_acc"] == best["test_acc"]
    # the realised noise is the fraction of training labels that differ from the truth
    data = prepare_data(config)
    assert record["data"]["realised_noise_rate_train"] == pytest.approx(
        float((data.train_labels != data.train_clean).double().mean()))
    assert 0.2 < record["data"]["realised_noise_rate"] < 0.45


@pytest.mark.parametrize("method", ["bn", "convnorm+bn", "convnorm-paper"])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, method):
    config = tiny(method=method, epochs=3, noise="symmetric", noise_rate=0.2)
    full = train(config, out_dir=str(tmp_path / "a"), checkpoint_dir=str(tmp_path / "ca"), log=None)
    part = train(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"), stop_after_epoch=1,
                 log=None)
    assert part["status"] == "running" and len(part["epochs"]) == 1
    resumed = train(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"), log=None)
    strip = lambda rec: [{k: v for k, v in row.items() if k != "time_s"} for row in rec["epochs"]]
    assert strip(resumed) == strip(full)
    a = torch.load(tmp_path / "ca" / f"{run_name(config)}.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cb" / f"{run_name(config)}.pt", weights_only=False)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_log_says_when_a_run_completes_whether_trained_now_or_before(tmp_path):
    config = tiny(epochs=2)
    kw = dict(out_dir=str(tmp_path / "r"), checkpoint_dir=str(tmp_path / "c"))
    done = f"{run_name(config)}: complete, test accuracy "
    part, resumed, again = [], [], []
    train(config, stop_after_epoch=1, log=part.append, **kw)
    assert part and not any(line.startswith(done) for line in part)
    record = train(config, log=resumed.append, **kw)
    assert resumed[-1] == (f"{done}{record['final_test_acc']:.4f}, best-validation test accuracy "
                           f"{record['best_val_test_acc']:.4f} (record {tmp_path / 'r' / run_name(config)}.json)")
    train(config, log=again.append, **kw)
    assert again == resumed[-1:]


def test_test_subset_scores_a_fixed_part_each_epoch_and_everything_at_the_end(tmp_path):
    from convnorm.experiments.corruptions import per_class_subset
    from convnorm.experiments.data import load_dataset

    config = tiny(epochs=2, test_subset=300)
    record = train(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "ckpt"), log=None)
    first, last = record["epochs"]
    assert record["data"]["test_part_size"] == 300 and record["data"]["test_size"] == 1000
    assert "test_acc_full" not in first and "test_acc_full" in last
    assert record["final_test_acc"] == last["test_acc_full"]
    # Recompute both accuracies from the final checkpoint on the same images.
    from convnorm.experiments.spectral_study import load_model

    model = load_model(str(tmp_path / "ckpt" / f"{run_name(config)}.pt")).eval()
    data = prepare_data(config)
    test = load_dataset("synthetic", train=False)
    part = per_class_subset(test.labels, 0.3, seed=0)
    assert torch.equal(data.test_part, part)
    with torch.no_grad():
        from convnorm.experiments.augment import normalize

        pred = model(normalize(test.images, data.mean, data.std)).argmax(1)
    assert last["test_acc"] == pytest.approx(float((pred[part] == test.labels[part]).double().mean()))
    assert last["test_acc_full"] == pytest.approx(float((pred == test.labels).double().mean()))
    # The field stays out of the identity (and so out of the run name) while it is 0.
    assert "test_subset" not in tiny().identity() and tiny(test_subset=300).identity()["test_subset"] == 300
    assert run_name(tiny()) != run_name(config)


def test_finished_run_is_not_retrained(tmp_path):
    config = tiny(epochs=1)
    first = train(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    os.remove(tmp_path / "c" / f"{run_name(config)}.pt")  # nothing left to resume from
    again = train(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    assert again == json.loads(json.dumps(first))


def test_changed_config_in_same_record_name_is_an_error(tmp_path):
    config = tiny(epochs=1)
    train(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    path = tmp_path / f"{run_name(config)}.json"
    record = json.loads(path.read_text())
    record["config"]["lr"] = 123.0
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="different config"):
        train(config, out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)


def test_run_names_differ_when_anything_differs():
    base = tiny()
    names = {run_name(base), run_name(tiny(seed=1)), run_name(tiny(lr=0.01)), run_name(tiny(method="convnorm")),
             run_name(tiny(noise="symmetric", noise_rate=0.4)), run_name(tiny(train_fraction=0.5))}
    assert len(names) == 6
    assert run_name(tiny(data_root="/elsewhere")) == run_name(base)  # where the data lives is not the run


def test_ocnn_adds_its_loss_term(tmp_path):
    record = train(tiny(method="ocnn", epochs=1), out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    plain = train(tiny(method="ocnn", epochs=1, ocnn_weight=0.0), out_dir=str(tmp_path), checkpoint_dir=str(tmp_path / "c"), log=None)
    assert record["epochs"][0]["train_loss"] > plain["epochs"][0]["train_loss"]


@pytest.mark.parametrize("bad, match", [
    (dict(method="batchnorm"), "unknown method"), (dict(model="resnet9"), "unknown model"),
    (dict(noise="gaussian"), "noise must be"), (dict(noise="symmetric", noise_rate=1.5), "noise_rate"),
    (dict(train_fraction=0.0), "train_fraction"), (dict(noise_rate=0.3), "noise is 'none'"),
    (dict(schedule="linear"), "schedule"), (dict(epochs=0), "epochs"),
])
def test_bad_config_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(**bad)


def test_presets_are_valid_configs():
    for name in PRESETS:
        preset(name).validate()
    paper = preset("paper-cifar10-resnet18")
    assert (paper.epochs, paper.lr, list(paper.milestones), paper.batch_size, paper.weight_decay) == (
        120, 0.1, [40, 80], 128, 1e-4)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("imagenet")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    record = train(tiny(method="convnorm+bn", epochs=2), out_dir=os.path.join(out_dir, "records"),
                   checkpoint_dir=os.path.join(out_dir, "ckpt"), log=None)
    assert not torch.distributed.is_initialized()  # train() created the group, so it tore it down
    torch.save(record, os.path.join(out_dir, f"record{rank}.pt"))


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    records = [torch.load(tmp_path / f"record{r}.pt", weights_only=False) for r in range(2)]
    # every rank sees the same all-reduced metrics; rank 0 alone writes the files
    assert records[0]["epochs"][-1]["test_acc"] == records[1]["epochs"][-1]["test_acc"]
    assert records[0]["world_size"] == 2
    assert len(os.listdir(tmp_path / "records")) == 1
    saved = json.loads(next((tmp_path / "records").iterdir()).read_text())
    assert saved["status"] == "complete"
