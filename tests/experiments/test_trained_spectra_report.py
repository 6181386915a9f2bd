"""The trained-spectra view: its numbers are the spectral records' numbers, beside the paper's ranges."""
import os
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convnorm.experiments.records import write_json
from convnorm.experiments.published import PAPER_TRAINED_NORMS
from convnorm.experiments.spectral_study import parse_label
from convnorm.experiments.trained_spectra_report import FOLDER, trained_spectra_section

_NAME = "cifar10-resnet18-bn-clean-frac0.2-s0-abc"


def _spectral(folder, label, conv_norms, classifier=2.5, checkpoint=_NAME + ".pt", converged=True):
    rows = [dict(name=f"c{i}", type="ConvNorm2d" if "convnorm" in label else "Conv2d", spectral_norm=v,
                 converged=converged, input_shape=[1, 16, 32 >> min(i, 3), 32 >> min(i, 3)])
            for i, v in enumerate(conv_norms)] + [dict(name="fc", type="Linear", spectral_norm=classifier)]
    write_json(os.path.join(folder, f"{label}.json"),
               {"kind": "spectral", "config": {"label": label, "checkpoint": checkpoint, "input_shape": [1, 3, 32, 32]},
                "report": {"rows": rows}})


def _training(folder):
    cfg = dict(dataset="cifar10", model="resnet18", model_options={"widths": [16, 32, 64, 128]}, epochs=50,
               batch_size=32, lr=0.1, schedule="step", milestones=[20, 35], weight_decay=1e-4, augment=False,
               train_fraction=0.2)
    write_json(os.path.join(folder, f"{_NAME}.json"), {"kind": "train", "status": "complete", "config": cfg})


@settings(max_examples=30, deadline=None)
@given(method=st.sampled_from(["bn", "convnorm-paper", "convnorm+bn", "sn"]),
       labels=st.sampled_from(["clean", "sym0.4", "sym0.8", "asym0.3"]), seed=st.integers(0, 99))
def test_parse_label_reads_method_labels_and_seed(method, labels, seed):
    assert parse_label(f"{method}-{labels}-seed{seed}") == {"method": method, "labels": labels, "seed": seed}


@pytest.mark.parametrize("label", ["bn-clean", "bn-noisy-seed0", "resnet18-init", "bn-sym0.4-seedx"])
def test_other_labels_are_not_read(label):
    assert parse_label(label) is None


@settings(max_examples=15, deadline=None)
@given(bn=st.lists(st.floats(0.5, 30), min_size=1, max_size=8), cn=st.lists(st.floats(0.5, 30), min_size=1, max_size=8))
def test_table_is_each_runs_smallest_median_and_largest_conv_norm(tmp_path_factory, bn, cn):
    root = tmp_path_factory.mktemp("results")
    folder = root / "spectral" / FOLDER
    _spectral(str(folder), "bn-clean-seed0", bn, classifier=3.25)
    _spectral(str(folder), "convnorm-paper-sym0.4-seed0", cn)
    _spectral(str(root / "spectral" / "elsewhere"), "bn-clean-seed1", [99.0])  # not in the view's folder
    _training(str(root / "memorisation-cifar10"))
    text = "\n".join(trained_spectra_section(str(root), str(root / "figures")))
    low, high = PAPER_TRAINED_NORMS["vanilla conv (BN network)"]
    assert (f"| bn-clean-seed0 | bn | clean | {len(bn)} | {min(bn):.2f} | {statistics.median(bn):.2f} | "
            f"{max(bn):.2f} | 3.25 | vanilla conv (BN network): {low:g}–{high:g} |") in text
    low, high = PAPER_TRAINED_NORMS["ConvNorm"]
    assert (f"| convnorm-paper-sym0.4-seed0 | convnorm-paper | sym0.4 | {len(cn)} | {min(cn):.2f} | "
            f"{statistics.median(cn):.2f} | {max(cn):.2f} | 2.50 | ConvNorm: {low:g}–{high:g} |") in text
    assert "seed1" not in text and "(seed 0)" in text and "*" not in text.split("|", 1)[1].split("![")[0]
    assert text.index("bn-clean-seed0") < text.index("convnorm-paper-sym0.4-seed0")  # clean labels first
    assert "cifar10 20%, resnet18 (widths 16-32-64-128), 50 epochs, batch 32" in text
    assert (root / "figures" / "memorisation-trained-spectra.png").stat().st_size > 0


def test_input_sizes_unconverged_norms_and_what_cannot_be_shown(tmp_path):
    folder = tmp_path / "spectral" / FOLDER
    _spectral(str(folder), "bn-sym0.4-seed2", [4.0, 6.0, 5.0], converged=False, checkpoint="other-run.pt")
    _spectral(str(folder), "bn-clean-seed2", [1.0], checkpoint=_NAME + ".best.pt")
    write_json(str(folder / "convnorm-paper-clean-seed2.json"),
               {"kind": "spectral", "config": {"label": "convnorm-paper-clean-seed2", "checkpoint": "x.pt"},
                "report": {"rows": [dict(name="fc", type="Linear", spectral_norm=1.0)]}})
    text = "\n".join(trained_spectra_section(str(tmp_path), str(tmp_path / "figures")))
    assert "| bn-sym0.4-seed2 | bn | sym0.4 | 3 | 4.00* | 5.00 | 6.00* |" in text
    assert "bn-clean-seed2 (not measured on a run's final checkpoint)" in text
    assert "convnorm-paper-clean-seed2 (no conv layers)" in text
    assert "(seed 2)" in text and "no training record of these checkpoints is here" in text
    assert "a forward pass of a 1x3x32x32 input (the layers see 32x32 down to 8x8)" in text


def test_no_records_no_section(tmp_path):
    assert trained_spectra_section(str(tmp_path), str(tmp_path / "figures")) == []
    _spectral(str(tmp_path / "spectral" / FOLDER), "resnet18-init", [1.0])
    assert trained_spectra_section(str(tmp_path), str(tmp_path / "figures")) == []


def test_paper_ranges_are_the_figures_values():
    assert PAPER_TRAINED_NORMS == {"vanilla conv (BN network)": (5.0, 18.7), "ConvNorm": (3.2, 8.7)}
