"""The `convnorm` command: every subcommand documented, the demo and spectral paths end to end."""
import json
import subprocess
import sys

import pytest

from convnorm.experiments.cli import COMMANDS, build_parser, main


def test_help_documents_every_subcommand(capsys):
    out = subprocess.run([sys.executable, "-m", "convnorm.experiments", "--help"], capture_output=True, text=True,
                         check=True).stdout
    build_parser()
    assert COMMANDS
    for name in COMMANDS:
        assert name in out
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: convnorm " + name in capsys.readouterr().out


def test_the_library_entry_point_says_where_the_command_line_lives():
    done = subprocess.run([sys.executable, "-m", "convnorm"], capture_output=True, text=True)
    assert done.returncode == 2 and "python -m convnorm.experiments" in done.stderr


def test_demo_runs_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    assert main(["demo", "--dataset", "synthetic", "--epochs", "1", "--train-fraction", "0.1", "--out", str(tmp_path / "demo"),
                 "--checkpoints", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "| BN |" in out and "| ConvNorm+BN (paper) |" in out and "| ConvNorm |" not in out
    assert "plot:" in out and (tmp_path / "demo" / "demo.png").exists()
    records = sorted((tmp_path / "demo").glob("*.json"))
    assert sorted(json.loads(p.read_text())["config"]["method"] for p in records) == ["bn", "bn", "convnorm-paper",
                                                                                   "convnorm-paper"]
    assert all(json.loads(p.read_text())["status"] == "complete" for p in records)
    assert (tmp_path / "demo" / "README.md").exists()
    reading = next(line for line in out.splitlines() if line.startswith("Reading:"))
    for r in (json.loads(p.read_text()) for p in records):  # the reading quotes every final accuracy
        assert f"{r['final_test_acc'] * 100:.2f}%" in reading


def test_train_then_spectral_of_its_checkpoint(tmp_path, capsys):
    args = ["train", "--preset", "test", "--epochs", "1", "--out", str(tmp_path / "runs"),
            "--checkpoints", str(tmp_path / "ckpt")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert sum("test accuracy" in line for line in out.splitlines()) == 1  # completion said once, not twice
    best = next((tmp_path / "ckpt").glob("*.best.pt"))
    assert main(["spectral", "--checkpoint", str(best), "--input-shape", "1,3,16,16", "--out", str(tmp_path / "sp"),
                 "--max-iter", "20"]) == 0
    record = json.loads(next((tmp_path / "sp").glob("*.json")).read_text())
    assert record["kind"] == "spectral" and record["report"]["rows"]
    assert all(r["isometry_gap_max"] is not None for r in record["report"]["rows"] if r["type"] != "Linear")


def test_spectral_chart_compares_records(tmp_path):
    for method in ("plain", "convnorm"):
        assert main(["spectral", "--model", "small_resnet", "--method", method, "--no-isometry", "--input-shape",
                     "1,1,28,28", "--max-iter", "30", "--out", str(tmp_path)]) == 0
    records = [str(tmp_path / f"small_resnet-{m}.json") for m in ("plain", "convnorm")]
    assert main(["spectral-chart", *records, "--out", str(tmp_path)]) == 0
    table = (tmp_path / "comparison.md").read_text()
    assert "small_resnet-plain norm | small_resnet-convnorm norm" in table
    assert (tmp_path / "comparison.png").stat().st_size > 1000


def test_bad_arguments_give_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["spectral", "--input-shape", "3,32"])
    assert "input shape" in capsys.readouterr().err
    assert main(["spectral", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--preset", "test", "--method", "batchnorm", "--out", str(tmp_path)])
    assert "invalid choice: 'batchnorm'" in capsys.readouterr().err
    for extra in (["--samples", "10"], ["--test-samples", "10"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["fid-validate", "--full", *extra])
        assert exit_info.value.code == 2 and "--full sets --samples and --test-samples" in capsys.readouterr().err


@pytest.mark.parametrize("argv,expected", [([], (2000, None)), (["--samples", "300"], (300, None)),
                                           (["--samples", "300", "--test-samples", "0"], (300, 0)),
                                           (["--full"], (25000, 10000))])
def test_fid_validate_passes_its_sample_counts(monkeypatch, capsys, argv, expected):
    from convnorm.experiments import fid_validation

    seen = {}

    def fake(out_dir, *, samples, test_samples, **kwargs):
        seen.update(samples=samples, test_samples=test_samples)
        return {"results": {}}

    monkeypatch.setattr(fid_validation, "run_fid_validation", fake)
    assert main(["fid-validate", *argv]) == 0
    samples, test_samples = expected
    assert seen == {"samples": samples, "test_samples": test_samples}


@pytest.mark.parametrize("command,config_module,config_class", [
    ("train", "convnorm.experiments.train", "TrainConfig"),
    ("adv-train", "convnorm.experiments.robust", "AdvConfig"),
    ("gan-train", "convnorm.experiments.gan", "GANConfig")])
def test_every_run_option_is_a_config_field(command, config_module, config_class):
    """The overrides come from the config's fields: an option that is not one would be dropped."""
    import dataclasses
    import importlib

    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(config_module), config_class))}
    args = vars(build_parser().parse_args([command]))
    assert set(args) - fields == {"command", "preset", "out", "checkpoints", "device"}
