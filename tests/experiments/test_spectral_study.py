"""Spectral reports of whole networks: models by method, checkpoints, records checked against dense
operators, charts."""
import json
import os
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from convnorm import ConvNorm2d
from convnorm.experiments.baselines import ONIConv2d
from convnorm.experiments.records import read_json, save_checkpoint, write_json
from convnorm.experiments.runs import model_description
from convnorm.experiments.spectral_study import (
    build_method_model,
    chart_spectral_reports,
    load_model,
    run_spectral_report,
)
from convnorm.experiments.train import preset

PNG = b"\x89PNG\r\n\x1a\n"
TINY = dict(in_channels=3, num_classes=5, model_options={"widths": (4, 8, 8)})


pytestmark = pytest.mark.usefixtures("one_thread")


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _bns(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _randomize(model, seed):
    """Parameters and BatchNorm statistics unlike a fresh initialization's."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
        for bn in _bns(model):
            bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=gen))
            bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)
    return model


# -- models by method -------------------------------------------------------------------------

def test_convnorm_replaces_every_conv_and_removes_batchnorm():
    model = build_method_model("small_resnet", "convnorm", **TINY)
    convs = _convs(model)
    assert convs and all(isinstance(c, ConvNorm2d) for c in convs)
    assert _bns(model) == []
    assert convs[0].in_channels == 3 and convs[0].out_channels == 4  # the model options reach the builder
    assert model.eval()(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_convnorm_with_bn_keeps_the_batchnorm_layers():
    reference = build_method_model("small_resnet", "bn", **TINY)
    model = build_method_model("small_resnet", "convnorm+bn", **TINY)
    assert all(isinstance(c, ConvNorm2d) for c in _convs(model))
    assert len(_bns(model)) == len(_bns(reference)) > 0
    assert len(_convs(model)) == len(_convs(reference))


def test_plain_bn_sn_and_oni_models_have_their_layer_types():
    plain = build_method_model("small_resnet", "plain", **TINY)
    assert all(type(c) is nn.Conv2d for c in _convs(plain)) and _bns(plain) == []
    bn = build_method_model("small_resnet", "bn", **TINY)
    assert all(type(c) is nn.Conv2d for c in _convs(bn)) and len(_bns(bn)) > 0
    sn = build_method_model("small_resnet", "sn", **TINY)
    assert all(parametrize.is_parametrized(c, "weight") for c in _convs(sn))
    oni = build_method_model("small_resnet", "oni", **TINY)
    assert all(isinstance(c, ONIConv2d) for c in _convs(oni))
    for model in (plain, bn, sn, oni):
        assert model.eval()(torch.randn(1, 3, 8, 8)).shape == (1, 5)


def test_unknown_models_and_methods_are_refused():
    with pytest.raises(ValueError, match="unknown method 'dropout'"):
        build_method_model("small_resnet", "dropout", in_channels=3, num_classes=10)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_method_model("nope", "bn", in_channels=3, num_classes=10)


# -- loading checkpoints ----------------------------------------------------------------------

@pytest.mark.parametrize("method", ["convnorm+bn", "bn"])
def test_load_model_rebuilds_a_training_checkpoint(tmp_path, method):
    config = preset("test", method=method)
    model = _randomize(build_method_model(config.model, method, in_channels=3, num_classes=10,
                                          model_options=config.model_options), seed=1)
    path = tmp_path / "run.pt"
    save_checkpoint(str(path), {"config": model_description(config, 3, 10), "model": model.state_dict(),
                                "optimizer": {}, "epoch": 2})
    loaded = load_model(str(path))
    assert type(loaded) is type(model)
    assert [type(c) for c in _convs(loaded)] == [type(c) for c in _convs(model)]
    state, expected = loaded.state_dict(), model.state_dict()
    assert state.keys() == expected.keys()
    for key in expected:
        assert torch.equal(state[key], expected[key]), key
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-6)


def test_load_model_reads_a_robust_checkpoint_and_defaults_missing_options(tmp_path):
    config = preset("test", method="convnorm", model_options={})
    model = _randomize(build_method_model("small_resnet", "convnorm", in_channels=1, num_classes=3), seed=2)
    description = model_description(config, 1, 3, dataset="fashion-mnist", mean=[0.5], std=[0.25])
    description["model_options"] = None
    save_checkpoint(str(tmp_path / "r.pt"), {"config": description, "model": model.state_dict(),
                                             "perturbation": torch.zeros(1)})
    loaded = load_model(str(tmp_path / "r.pt"))
    assert _convs(loaded)[0].out_channels == 16 and _convs(loaded)[0].in_channels == 1  # default widths
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_load_model_returns_a_pickled_module(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    torch.save(net, tmp_path / "net.pt")
    loaded = load_model(str(tmp_path / "net.pt"))
    assert isinstance(loaded, nn.Sequential) and torch.equal(loaded[0].weight, net[0].weight)


def test_load_model_refuses_missing_files_other_objects_and_mismatched_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_model(str(tmp_path / "absent.pt"))
    torch.save({"model": {}}, tmp_path / "no-config.pt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    for name in ("no-config.pt", "tensor.pt"):
        with pytest.raises(ValueError, match=re.escape(name)):
            load_model(str(tmp_path / name))
    config = preset("test", method="bn")  # widths (4, 8, 8)
    other = build_method_model("small_resnet", "bn", in_channels=3, num_classes=10,
                               model_options={"widths": (4, 8, 16)})
    save_checkpoint(str(tmp_path / "wrong.pt"),
                    {"config": model_description(config, 3, 10), "model": other.state_dict()})
    with pytest.raises(RuntimeError):
        load_model(str(tmp_path / "wrong.pt"))


# -- reports checked against dense operators ----------------------------------------------------

def _dense(layer, shape):
    """The matrix of the linear map ``x -> layer(x) - layer(0)`` on inputs of ``shape`` (batch 1), column by column
    from impulse responses."""
    n = int(np.prod(shape[1:]))
    impulses = torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])
    with torch.no_grad():
        out = layer(impulses) - layer(torch.zeros(1, *shape[1:], dtype=torch.float64))
    return out.reshape(n, -1).T.numpy()


@pytest.fixture(scope="module")
def tiny_net():
    """A conv and a linear layer in float64, weights large enough that the isometry gaps differ per channel."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()
    with torch.no_grad():
        net[0].weight.mul_(2.5)
    return net


def test_record_numbers_match_the_dense_operators(tmp_path, tiny_net):
    torch.save(tiny_net, tmp_path / "tiny.pt")
    out = tmp_path / "reports"
    path = run_spectral_report(str(out), checkpoint=str(tmp_path / "tiny.pt"), input_shape=(1, 2, 4, 4), seed=5,
                               tol=1e-12, max_iter=5000)
    assert path == str(out / "tiny.json")
    record = json.loads((out / "tiny.json").read_text())
    assert record["kind"] == "spectral" and record["seed"] == 5
    assert record["config"] == {"checkpoint": "tiny.pt", "label": "tiny", "input_shape": [1, 2, 4, 4],
                                "isometry": True, "tol": 1e-12, "max_iter": 5000, "data": None,
                                "lower_bound_inputs": 0}
    assert set(record["provenance"]) >= {"git_commit", "versions", "device", "date"}
    assert record["wall_time_s"] >= 0
    conv_row, linear_row = record["report"]["rows"]
    assert (conv_row["name"], conv_row["type"], conv_row["input_shape"]) == ("0", "Conv2d", [1, 2, 4, 4])
    assert (linear_row["name"], linear_row["type"], linear_row["input_shape"]) == ("3", "Linear", [1, 48])

    A = _dense(tiny_net[0], (1, 2, 4, 4))  # (3 * 16, 2 * 16)
    assert conv_row["spectral_norm"] == pytest.approx(np.linalg.svd(A, compute_uv=False)[0], rel=1e-6)
    gaps = [np.abs(np.linalg.eigvalsh(A[i * 16:(i + 1) * 16] @ A[i * 16:(i + 1) * 16].T) - 1).max() for i in range(3)]
    assert len(set(np.round(gaps, 3))) == 3  # distinct channels: max and mean say different things
    assert conv_row["isometry_gap_max"] == pytest.approx(max(gaps), rel=1e-6)
    assert conv_row["isometry_gap_mean"] == pytest.approx(np.mean(gaps), rel=1e-6)
    assert "isometry_gap_max" not in linear_row
    linear_norm = np.linalg.svd(tiny_net[3].weight.detach().numpy(), compute_uv=False)[0]
    assert linear_row["spectral_norm"] == pytest.approx(linear_norm, rel=1e-6)
    assert record["report"]["lipschitz_upper"] == pytest.approx(np.linalg.svd(A, compute_uv=False)[0] * linear_norm,
                                                                rel=1e-6)
    assert record["report"]["lipschitz_lower"] is None

    table = (out / "tiny.md").read_text()
    assert table.startswith("## tiny\n")
    assert f"| 0 | 0 | Conv2d | 2x4x4 | {conv_row['spectral_norm']:.4g} |" in table
    assert f"| 1 | 3 | Linear | 48 | {linear_row['spectral_norm']:.4g} |" in table
    assert (out / "tiny.png").read_bytes()[:8] == PNG


def test_the_lower_bound_is_the_largest_input_jacobian_norm(tmp_path, tiny_net):
    torch.save(tiny_net, tmp_path / "tiny.pt")
    inputs = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    path = run_spectral_report(str(tmp_path), checkpoint=str(tmp_path / "tiny.pt"), label="with-data",
                               input_shape=(1, 2, 4, 4), isometry=False, lower_bound_inputs=inputs, data="synthetic")
    record = read_json(path)
    assert os.path.basename(path) == "with-data.json"
    assert record["config"]["label"] == "with-data" and record["config"]["data"] == "synthetic"
    assert record["config"]["lower_bound_inputs"] == 3 and record["report"]["lower_bound_inputs"] == 3
    assert all("isometry_gap_max" not in row for row in record["report"]["rows"])
    norms = []
    for x in inputs:
        J = torch.autograd.functional.jacobian(lambda v: tiny_net(v.unsqueeze(0)).squeeze(0), x)
        norms.append(np.linalg.svd(J.reshape(4, -1).numpy(), compute_uv=False)[0])
    assert record["report"]["lipschitz_lower"] == pytest.approx(max(norms), rel=1e-4)
    assert record["report"]["lipschitz_lower"] <= record["report"]["lipschitz_upper"] * (1 + 1e-6)
    assert "Largest input-Jacobian norm over 3 inputs" in (tmp_path / "with-data.md").read_text()


def test_a_model_by_name_is_seeded_and_measured_at_each_layers_input(tmp_path):
    def report(folder, method, seed):
        path = run_spectral_report(str(tmp_path / folder), model="small_resnet", method=method, seed=seed,
                                   input_shape=(1, 1, 8, 8), num_classes=3, isometry=False, max_iter=15)
        return read_json(path)

    convnorm = report("a", "convnorm", 0)
    assert convnorm["config"]["label"] == "small_resnet-convnorm"
    assert (convnorm["config"]["model"], convnorm["config"]["method"], convnorm["config"]["initialization"]) == \
        ("small_resnet", "convnorm", "seeded")
    assert "checkpoint" not in convnorm["config"]
    rows = convnorm["report"]["rows"]
    assert [r["type"] for r in rows] == ["ConvNorm2d"] * (len(rows) - 1) + ["Linear"]
    assert rows[0]["input_shape"] == [1, 1, 8, 8]  # in_channels from the input shape
    assert rows[-1]["input_shape"] == [1, 64]
    assert min(r["input_shape"][-1] for r in rows[:-1]) == 2  # the last stage sees 8 / 2 / 2
    assert (tmp_path / "a" / "small_resnet-convnorm.md").exists()

    plain = report("b", "plain", 0)
    assert [r["type"] for r in plain["report"]["rows"]] == ["Conv2d"] * (len(rows) - 1) + ["Linear"]
    again = report("c", "plain", 0)
    assert again["report"] == plain["report"]  # same seed, same initialization, same numbers
    other = report("d", "plain", 1)
    norms = lambda record: [r["spectral_norm"] for r in record["report"]["rows"]]  # noqa: E731
    assert norms(other) != norms(plain)


def test_a_missing_checkpoint_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_spectral_report(str(tmp_path / "out"), checkpoint=str(tmp_path / "absent.pt"), input_shape=(1, 1, 4, 4))
    assert not (tmp_path / "out").exists()


# -- charts -----------------------------------------------------------------------------------

def _spectral_record(folder, label, norms, gaps, upper, lower=None, kind="spectral"):
    rows = [dict(name=f"layer{i}", type="Conv2d" if g is not None else "Linear", input_shape=[1, 2, 4, 4],
                 spectral_norm=n, converged=True,
                 **({} if g is None else dict(isometry_gap_max=g, isometry_gap_mean=g)))
            for i, (n, g) in enumerate(zip(norms, gaps))]
    report = dict(input_shape=[1, 2, 4, 4], rows=rows, lipschitz_upper=upper, lipschitz_lower=lower,
                  lower_bound_inputs=0 if lower is None else 4, settings={})
    return write_json(os.path.join(folder, f"{label}.json"),
                      {"kind": kind, "config": {"label": label}, "report": report})


def _md_rows(text, first_cell_pattern):
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if re.match(rf"\| {first_cell_pattern} \|", line)]


def test_chart_table_puts_each_records_numbers_in_its_column(tmp_path):
    a = _spectral_record(str(tmp_path), "vanilla", [2.71828, 1.5, 0.333333], [0.91234, 0.5, None], 1.35914, 0.987654)
    b = _spectral_record(str(tmp_path), "convnorm", [1.000012, 0.998, 0.25], [0.0123, None, None], 0.2495, 0.2)
    out = tmp_path / "chart"
    paths = chart_spectral_reports([a, b], str(out), name="cmp", title="Tiny comparison")
    assert paths == {"png": str(out / "cmp.png"), "markdown": str(out / "cmp.md")}
    assert (out / "cmp.png").read_bytes()[:8] == PNG
    text = (out / "cmp.md").read_text()
    assert text.startswith("# Tiny comparison\n")
    assert "Generated by `convnorm spectral-chart` from: `vanilla.json`, `convnorm.json`" in text
    assert ("| # | layer | vanilla norm | convnorm norm | vanilla isometry gap (max) | convnorm isometry gap (max) |"
            in text)
    rows = _md_rows(text, r"\d")
    expected = [("layer0", (2.71828, 1.000012), (0.91234, 0.0123)), ("layer1", (1.5, 0.998), (0.5, None)),
                ("layer2", (0.333333, 0.25), (None, None))]
    assert len(rows) == 3
    for i, (row, (name, norms, gaps)) in enumerate(zip(rows, expected)):
        assert row[:2] == [str(i), name]
        for cell, value in zip(row[2:4], norms):
            assert float(cell) == pytest.approx(value, rel=5e-4)
        for cell, value in zip(row[4:6], gaps):
            assert cell == "—" if value is None else float(cell) == pytest.approx(value, rel=5e-3)
    (upper,) = _md_rows(text, "product of layer norms")
    assert [float(c) for c in upper[1:]] == [pytest.approx(1.35914, rel=5e-4), pytest.approx(0.2495, rel=5e-4)]
    (lower,) = _md_rows(text, "largest input-Jacobian norm")
    assert [float(c) for c in lower[1:]] == [pytest.approx(0.987654, rel=5e-4), pytest.approx(0.2, rel=5e-4)]


def test_chart_leaves_out_the_lower_bound_unless_every_record_has_one(tmp_path):
    a = _spectral_record(str(tmp_path), "a", [1.0], [0.1], 1.0, lower=0.9)
    b = _spectral_record(str(tmp_path), "b", [2.0], [0.2], 2.0)
    chart_spectral_reports([a, b], str(tmp_path / "out"))
    text = (tmp_path / "out" / "comparison.md").read_text()
    assert text.startswith("# Per-layer spectral norms\n")
    assert _md_rows(text, "product of layer norms") and not _md_rows(text, "largest input-Jacobian norm")


def test_chart_of_records_written_by_run_spectral_report(tmp_path, tiny_net):
    torch.save(tiny_net, tmp_path / "tiny.pt")
    paths = [run_spectral_report(str(tmp_path / "r"), checkpoint=str(tmp_path / "tiny.pt"), label=label,
                                 input_shape=(1, 2, 4, 4), isometry=iso, max_iter=50)
             for label, iso in (("with-gaps", True), ("without", False))]
    chart_spectral_reports(paths, str(tmp_path / "c"))
    records = [read_json(p) for p in paths]
    rows = _md_rows((tmp_path / "c" / "comparison.md").read_text(), r"\d")
    assert [row[1] for row in rows] == ["0", "3"]
    for row, (first, second) in zip(rows, zip(records[0]["report"]["rows"], records[1]["report"]["rows"])):
        assert float(row[2]) == pytest.approx(first["spectral_norm"], rel=5e-4)
        assert float(row[3]) == pytest.approx(second["spectral_norm"], rel=5e-4)
        assert row[5] == "—"  # no isometry gaps measured in the second record
    assert float(rows[0][4]) == pytest.approx(records[0]["report"]["rows"][0]["isometry_gap_max"], rel=5e-3)


def test_chart_refuses_no_records_other_kinds_and_different_architectures(tmp_path):
    with pytest.raises(ValueError, match="at least one record"):
        chart_spectral_reports([], str(tmp_path / "out"))
    spectral = _spectral_record(str(tmp_path), "a", [1.0, 2.0], [0.1, None], 2.0)
    train = _spectral_record(str(tmp_path), "train-run", [1.0, 2.0], [0.1, None], 2.0, kind="train")
    with pytest.raises(ValueError, match="train-run.json is not a spectral record"):
        chart_spectral_reports([spectral, train], str(tmp_path / "out"))
    shorter = _spectral_record(str(tmp_path), "b", [1.0], [0.1], 1.0)
    with pytest.raises(ValueError, match="different numbers of layers"):
        chart_spectral_reports([spectral, shorter], str(tmp_path / "out2"))
    assert not (tmp_path / "out2" / "comparison.md").exists()


def test_chart_refuses_two_records_with_one_label_and_writes_nothing(tmp_path):
    os.makedirs(tmp_path / "x")
    os.makedirs(tmp_path / "y")
    a = _spectral_record(str(tmp_path / "x"), "same", [1.0, 2.0], [0.1, None], 2.0)
    b = _spectral_record(str(tmp_path / "y"), "same", [3.0, 4.0], [0.2, None], 4.0)
    with pytest.raises(ValueError, match="label 'same' is used by another record"):
        chart_spectral_reports([a, b], str(tmp_path / "out"))
    shorter = _spectral_record(str(tmp_path), "b", [1.0], [0.1], 1.0)
    with pytest.raises(ValueError, match="different numbers of layers"):
        chart_spectral_reports([a, shorter], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # neither the chart nor the table was written
