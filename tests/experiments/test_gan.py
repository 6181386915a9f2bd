"""SN-GAN models with each normalization placement, hinge losses, resumable GAN training, report."""
import json
import os

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from convnorm import ConvNorm2d
from convnorm.experiments.data import decode_png
from convnorm.experiments.gan import (
    GAN_PRESETS,
    encode_png,
    gan_config_from_args,
    hinge_loss_discriminator,
    hinge_loss_generator,
    image_grid,
    run_name,
    train_gan,
)
from convnorm.experiments.gan_report import report_section
from convnorm.experiments.models.sngan import (
    ARCHS,
    D_NORMS,
    G_NORMS,
    SpectralNormConvNorm2d,
    build_discriminator,
    build_generator,
)

TINY = {"cnn": 16, "resnet": 8}


# -- models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", G_NORMS)
def test_generator_makes_32x32_images_in_range(arch, norm):
    torch.manual_seed(0)
    g = build_generator(arch, norm=norm, z_dim=8, width=TINY[arch])
    out = g(torch.randn(5, 8))
    assert out.shape == (5, 3, 32, 32)
    assert out.min() >= -1 and out.max() <= 1
    g.eval()
    assert g(torch.randn(2, 8)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("norm", D_NORMS)
def test_discriminator_gives_one_logit_per_image(arch, norm):
    torch.manual_seed(0)
    d = build_discriminator(arch, norm=norm, width=TINY[arch])
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    logits = d(x)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in d.parameters())


def _convs(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@pytest.mark.parametrize("arch", ARCHS)
def test_discriminator_normalization_placement(arch):
    w = TINY[arch]
    sn = build_discriminator(arch, norm="sn", width=w)
    layers = [m for m in sn.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(type(m) is not ConvNorm2d for m in layers)
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)

    cn = build_discriminator(arch, norm="convnorm", width=w)
    assert _convs(cn) and all(isinstance(m, ConvNorm2d) for m in _convs(cn))
    assert not any(parametrize.is_parametrized(m) for m in cn.modules())

    both = build_discriminator(arch, norm="convnorm+sn", width=w)
    convs = _convs(both)
    assert convs and all(isinstance(m, ConvNorm2d) and parametrize.is_parametrized(m, "weight") for m in convs)
    wrapped = [m for m in both.modules() if isinstance(m, SpectralNormConvNorm2d)]
    assert len(wrapped) == len(convs)
    assert parametrize.is_parametrized(both.linear, "weight")

    plain = build_discriminator(arch, norm="none", width=w)
    assert all(type(m) is nn.Conv2d for m in _convs(plain))
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_generator_normalization_placement(arch):
    w = TINY[arch]
    bn_kinds = (nn.BatchNorm1d, nn.BatchNorm2d)
    base = build_generator(arch, norm="bn", width=w)
    assert any(isinstance(m, bn_kinds) for m in base.modules())
    assert not any(isinstance(m, ConvNorm2d) for m in base.modules())
    if arch == "cnn":  # the paper's deconvolutions
        assert sum(isinstance(m, nn.ConvTranspose2d) for m in base.modules()) == 3
    cn = build_generator(arch, norm="convnorm", width=w)
    assert all(isinstance(m, ConvNorm2d) for m in _convs(cn))
    assert not any(isinstance(m, bn_kinds) for m in cn.modules())
    cnbn = build_generator(arch, norm="convnorm+bn", width=w)
    assert all(isinstance(m, ConvNorm2d) for m in _convs(cnbn))
    assert any(isinstance(m, bn_kinds) for m in cnbn.modules())


def test_bad_norm_names_are_rejected():
    with pytest.raises(ValueError, match="norm"):
        build_discriminator("cnn", norm="bn")
    with pytest.raises(ValueError, match="arch"):
        build_generator("dcgan")


def test_spectral_norm_convnorm_uses_one_weight_per_forward():
    """The forward equals a plain ConvNorm2d whose weight is W / sigma after exactly one power iteration."""
    torch.manual_seed(0)
    layer = SpectralNormConvNorm2d(ConvNorm2d(4, 6, 3, 1, 1))
    x = torch.randn(2, 4, 8, 8)
    for _ in range(3):  # training mode: one power iteration per forward
        out = layer(x)
        layer.eval()
        weight = layer.conv.weight.detach().clone()  # W / sigma with the updated u, v (no iteration in eval)
        layer.train()
        reference = ConvNorm2d(4, 6, 3, 1, 1)
        reference.load_state_dict({"weight": weight, "affine_weight": layer.conv.affine_weight,
                                   "affine_bias": layer.conv.affine_bias})
        torch.testing.assert_close(out, reference(x), rtol=1e-5, atol=1e-6)
    sigma = torch.linalg.matrix_norm(layer.conv.parametrizations.weight.original.flatten(1), ord=2)
    torch.testing.assert_close(torch.linalg.matrix_norm(weight.flatten(1), ord=2), torch.tensor(1.0), rtol=0.05,
                               atol=0)
    assert sigma > 0


# -- losses ---------------------------------------------------------------------------------

def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, 0.5, 2] -> 5/6; relu(1 + fake) = [0, 1, 2] -> 1
    assert hinge_loss_discriminator(real, fake).item() == pytest.approx(5 / 6 + 1)
    assert hinge_loss_generator(fake).item() == pytest.approx(1 / 3)
    assert hinge_loss_discriminator(torch.tensor([1.5]), torch.tensor([-3.0])).item() == 0.0


# -- images ---------------------------------------------------------------------------------

def test_png_round_trip_and_grid_layout():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 4, 5), dtype=torch.uint8)
    grid = image_grid(images, nrow=4, padding=1)
    assert grid.shape == (1 + 3 * 5, 1 + 4 * 6, 3)
    assert torch.equal(grid[1:5, 1:6], images[0].permute(1, 2, 0))
    assert torch.equal(grid[6:10, 7:12], images[5].permute(1, 2, 0))
    decoded = decode_png(encode_png(grid))
    assert decoded.shape == tuple(grid.shape) and (decoded == grid.numpy()).all()
    grey = torch.randint(0, 256, (3, 7), dtype=torch.uint8)
    assert (decode_png(encode_png(grey))[..., 0] == grey.numpy()).all()


# -- config ---------------------------------------------------------------------------------

def test_config_from_args_ignores_none_and_parses_betas():
    config = gan_config_from_args(arch="resnet", d_norm="convnorm", iterations=None, betas="0.5,0.99")
    assert config.arch == "resnet" and config.iterations == 100_000 and config.betas == (0.5, 0.99)
    assert config.identity()["betas"] == [0.5, 0.99] and "data_root" not in config.identity()
    with pytest.raises(ValueError, match="unknown GANConfig field"):
        gan_config_from_args(d_nrom="sn")
    with pytest.raises(ValueError, match="d_norm"):
        gan_config_from_args(d_norm="bn")
    with pytest.raises(ValueError, match="preset"):
        gan_config_from_args("nope")
    assert run_name(gan_config_from_args(seed=1)) != run_name(gan_config_from_args(seed=2))
    assert run_name(gan_config_from_args(sample_every=7)) == run_name(gan_config_from_args())
    assert set(GAN_PRESETS) >= {"paper-cnn", "paper-resnet", "cpu-cnn", "cpu-resnet", "test"}


# -- training -------------------------------------------------------------------------------

class _FakeFeatures:
    """A cheap stand-in for Inception: per-channel means and a few pixel values."""

    fingerprint = "fake-features-v1"
    dim = 12

    def __call__(self, images):
        x = images.double() / 255
        return torch.cat([x.mean((2, 3)), x[:, :, ::11, ::11].flatten(1)[:, :9]], 1)


def _tiny(**overrides):
    values = dict(fid_samples=24, fid_reference_samples=40, fid_every=2)
    values.update(overrides)
    return gan_config_from_args("test", **values)


# The two finished runs shared by the tests below: the baseline and the most machinery
# (ConvNorm with spectral norm in D, ConvNorm in G, EMA).
RUNS = {"sn": dict(d_norm="sn", g_norm="bn", ema=False),
        "convnorm": dict(d_norm="convnorm+sn", g_norm="convnorm", ema=True)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    records = {key: train_gan(_tiny(**opts), out_dir=str(root / "results" / "gan"), checkpoint_dir=str(root / "ckpt"),
                              log=None, feature_extractor=_FakeFeatures(), fid_cache_dir=str(root / "cache"))
               for key, opts in RUNS.items()}
    return root, records


def test_tiny_run_writes_record_samples_and_fid_curve(finished):
    root, records = finished
    config, record = _tiny(**RUNS["sn"]), records["sn"]
    out = root / "results" / "gan"
    on_disk = json.loads((out / f"{run_name(config)}.json").read_text())
    assert on_disk == record
    assert record["kind"] == "gan" and record["status"] == "complete" and record["config"] == config.identity()
    assert record["iterations_done"] == 3 and record["iterations_per_s"] > 0
    assert [row["iteration"] for row in record["fid_curve"]] == [2, 3]
    assert record["final_fid"] == record["fid_curve"][-1]["fid"] > 0
    assert all(row["samples"] == 24 and row["reference_samples"] == 40 for row in record["fid_curve"])
    assert [s["iteration"] for s in record["samples"]] == [2, 3]
    png = (out / record["samples"][-1]["path"]).read_bytes()
    assert decode_png(png).shape == (8 * 34 + 2, 8 * 34 + 2, 3)
    assert os.listdir(root / "cache")  # the reference features were cached
    for key in ("git_commit", "versions", "device"):
        assert key in record["provenance"]


@pytest.mark.parametrize("key", sorted(RUNS))
def test_interrupted_and_resumed_run_equals_uninterrupted(finished, tmp_path, key):
    root, records = finished
    config, full = _tiny(**RUNS[key]), records[key]
    kw = dict(out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"), log=None,
              feature_extractor=_FakeFeatures(), fid_cache_dir=None)
    part = train_gan(config, stop_after=1, **kw)
    assert part["status"] == "running" and part["iterations_done"] == 1
    resumed = train_gan(config, **kw)
    assert resumed["status"] == "complete"
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip(resumed["fid_curve"]) == strip(full["fid_curve"])
    assert resumed["loss_curve"] == full["loss_curve"]
    name = run_name(config)
    a = torch.load(root / "ckpt" / f"{name}.pt", weights_only=False)
    b = torch.load(tmp_path / "cb" / f"{name}.pt", weights_only=False)
    for part_name in ("generator", "discriminator") + (("ema",) if RUNS[key]["ema"] else ()):
        for k in a[part_name]:
            assert torch.equal(a[part_name][k], b[part_name][k]), (part_name, k)
    assert (root / "results" / "gan" / full["samples"][-1]["path"]).read_bytes() == \
        (tmp_path / "b" / resumed["samples"][-1]["path"]).read_bytes()


def test_finished_run_is_returned_not_retrained(finished, tmp_path):
    root, records = finished
    config = _tiny(**RUNS["sn"])
    # no checkpoint to resume from: a retraining attempt would start over
    again = train_gan(config, out_dir=str(root / "results" / "gan"), checkpoint_dir=str(tmp_path / "none"),
                      log=None)
    assert again == records["sn"] and not (tmp_path / "none").exists()


# -- report ---------------------------------------------------------------------------------

def test_report_section_is_generated_from_records_and_reproducible(finished, tmp_path):
    root, _ = finished
    folder = root / "results"
    lines = report_section(str(folder))
    text = "\n".join(lines)
    assert "| run |" in text and text.count("| synthetic | cnn |") == 2
    assert "published, not run here" in text and "16.77" in text and "21.7" in text
    assert "![FID over iterations](figures/gan-fid.png)" in text
    assert "](gan/gan-synthetic-cnn-" in text and "samples-000003.png" in text
    plot = (folder / "figures" / "gan-fid.png").read_bytes()
    assert report_section(str(folder)) == lines
    assert (folder / "figures" / "gan-fid.png").read_bytes() == plot
    assert report_section(str(tmp_path)) == []


def test_report_section_shows_fid_validation_records(tmp_path):
    from convnorm.experiments.records import write_json

    pair = {"fid": 12.345, "kid": 0.00123, "kid_std": 0.0002, "n1": 2000, "n2": 2000}
    write_json(str(tmp_path / "fid-validation" / "v.json"),
               {"kind": "fid-validation", "config": {}, "results": {"self": {"fid": 1e-9, "n1": 2000, "n2": 2000},
                                                                  "train_halves": pair, "train_vs_test": pair}})
    text = "\n".join(report_section(str(tmp_path)))
    assert "| train[:N] vs train[N:2N] | 2000 + 2000 | 12.35 | 1.230 ± 0.200 |" in text
    assert "train[:N] vs test[:M]" in text and "published, not run here" in text
    assert "| all training vs all test images (published; not run here) | 50000 + 10000 | 3.1508 |" in text
    assert "Against the published figure" not in text


def test_report_section_sets_the_full_comparison_beside_the_published_fid(tmp_path):
    from convnorm.experiments.fid_validation import published_comparison
    from convnorm.experiments.records import write_json

    def shown(pooled_fid):
        folder = tmp_path / str(pooled_fid)
        half = {"fid": 0.9, "kid": 0.0, "kid_std": 0.0, "n1": 25000, "n2": 25000}
        results = {"self": {"fid": 1e-9, "n1": 25000, "n2": 25000}, "train_halves": half,
                   "train_vs_test": dict(half, n2=10000),
                   "train_pooled_vs_test": dict(half, fid=pooled_fid, n1=50000, n2=10000)}
        write_json(str(folder / "fid-validation" / "v.json"),
                   {"kind": "fid-validation", "config": {}, "results": results,
                    "published": published_comparison(results, dataset="cifar10")})
        return "\n".join(report_section(str(folder)))

    near = shown(3.16)
    assert "| train[:2N] vs test[:M] | 50000 + 10000 | 3.1600 |" in near
    assert "| all training vs all test images, published (TensorFlow Inception) | 50000 + 10000 | 3.1508 |" in near
    assert "(`fid-validation/v.json`): this project's FID" in near
    assert "is 3.1600, +0.0092 from the published 3.1508, within the ±0.05" in near
    assert "is 3.0900, -0.0608 from the published 3.1508, outside the ±0.05" in shown(3.09)


def test_kid_cell_is_one_estimate_exactly_when_every_subset_is_both_whole_sets(tmp_path):
    from convnorm.experiments.records import write_json

    def shown(n1, n2, subsets=100, subset_size=1000):
        folder = tmp_path / f"{n1}-{n2}-{subsets}"
        pair = {"fid": 12.345, "kid": 0.00123, "kid_std": 0.0002, "n1": n1, "n2": n2}
        write_json(str(folder / "fid-validation" / "v.json"),
                   {"kind": "fid-validation", "config": {"kid": {"subsets": subsets, "subset_size": subset_size}},
                    "results": {"self": {"fid": 1e-9, "n1": n1, "n2": n1}, "train_halves": pair}})
        return "\n".join(report_section(str(folder)))

    one, spread = "| 12.35 | 1.230 (one estimate) |", "| 12.35 | 1.230 ± 0.200 |"
    assert one in shown(1000, 1000) and one in shown(800, 800)
    assert one in shown(2000, 2000, subsets=1)
    # the larger set is resampled when the sizes differ, or when a subset is smaller than both
    for n1, n2 in ((1000, 500), (500, 1000), (2000, 2000), (1000, 1001)):
        assert spread in shown(n1, n2), (n1, n2)


def test_curve_at_its_own_sample_count_and_final_at_the_full_count(tmp_path):
    config = _tiny(fid_samples=24, fid_curve_samples=10)
    record = train_gan(config, out_dir=str(tmp_path / "r"), checkpoint_dir=str(tmp_path / "c"), log=None,
                       feature_extractor=_FakeFeatures(), fid_cache_dir=None)
    assert [(row["iteration"], row["samples"]) for row in record["fid_curve"]] == [(2, 10), (3, 10), (3, 24)]
    full = record["fid_curve"][-1]
    assert record["final_fid"] == full["fid"] and record["final_kid"] == full["kid"]
    # the curve's last point scores the first 10 of the 24 final images: a different, larger-bias number
    assert record["fid_curve"][1]["fid"] != full["fid"]
    # ... and exactly those: regenerate the final 24 images from the checkpoint and score them
    from convnorm.experiments import gan as ganlib
    from convnorm.experiments.fid import fid_from_features
    from convnorm.experiments.models.sngan import build_sngan

    state = torch.load(tmp_path / "c" / f"{run_name(config)}.pt", weights_only=False)
    g, _ = build_sngan(config.arch, d_norm=config.d_norm, g_norm=config.g_norm, z_dim=config.z_dim,
                       g_width=config.g_width, d_width=config.d_width)
    g.load_state_dict(state["generator"])
    images = ganlib._generate(g, ganlib._fixed_noise(config.seed, 24, config.z_dim, stream=2), torch.device("cpu"))
    feats = _FakeFeatures()(images).double()
    # the reference features pass through float32, as cached features do
    reference = _FakeFeatures()(ganlib._training_images("synthetic", None)[:40]).float().double()
    assert fid_from_features(feats, reference) == pytest.approx(full["fid"], rel=1e-6)
    assert fid_from_features(feats[:10], reference) == pytest.approx(record["fid_curve"][1]["fid"], rel=1e-6)
    text = "\n".join(report_section(str(tmp_path)))
    assert "Finished runs, mean ± sample standard deviation over seeds" in text
    assert f"| 24 vs 40 | {full['fid']:.2f} | {full['kid'] * 1e3:.2f} ± {full['kid_std'] * 1e3:.2f} | " \
        f"{record['fid_curve'][1]['fid']:.2f} (10, it 3) |" in text
    for bad in (dict(fid_samples=24, fid_curve_samples=1), dict(fid_samples=24, fid_curve_samples=25),
                dict(fid_samples=0, fid_curve_samples=10)):
        with pytest.raises(ValueError, match="fid_curve_samples"):
            _tiny(**bad)


def test_interrupted_run_with_a_curve_count_resumes_to_the_same_rows(tmp_path):
    config = _tiny(fid_samples=24, fid_curve_samples=10)
    kw = dict(log=None, feature_extractor=_FakeFeatures(), fid_cache_dir=None)
    full = train_gan(config, out_dir=str(tmp_path / "a"), checkpoint_dir=str(tmp_path / "ca"), **kw)
    part = train_gan(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"), stop_after=2, **kw)
    assert [(row["iteration"], row["samples"]) for row in part["fid_curve"]] == [(2, 10)]
    resumed = train_gan(config, out_dir=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "cb"), **kw)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip(resumed["fid_curve"]) == strip(full["fid_curve"]) and resumed["final_fid"] == full["final_fid"]


def test_gan_train_command_uses_the_preset_and_fits_the_curve_to_fewer_samples(tmp_path, capsys):
    from convnorm.experiments.cli import main

    args = ["gan-train", "--preset", "cpu-cnn", "--dataset", "synthetic", "--iterations", "1", "--n-dis", "1",
            "--batch-size", "4", "--g-width", "16", "--d-width", "16", "--fid-samples", "0",
            "--out", str(tmp_path / "r"), "--checkpoints", str(tmp_path / "c")]
    assert main(args) == 0
    assert "status complete" in capsys.readouterr().out
    (path,) = (tmp_path / "r").glob("*.json")
    cfg = json.loads(path.read_text())["config"]
    assert (cfg["fid_samples"], cfg["fid_curve_samples"], cfg["g_width"], cfg["fid_reference_samples"]) == \
        (0, 0, 16, GAN_PRESETS["cpu-cnn"]["fid_reference_samples"])


def test_summary_averages_seeds_of_one_setting(tmp_path):
    kw = dict(out_dir=str(tmp_path / "gan"), checkpoint_dir=str(tmp_path / "c"), log=None,
              feature_extractor=_FakeFeatures(), fid_cache_dir=None)
    fids = [train_gan(_tiny(seed=seed), **kw)["final_fid"] for seed in (0, 1)]
    mean = sum(fids) / 2
    std = abs(fids[0] - fids[1]) / 2 ** 0.5
    placed = train_gan(_tiny(d_norm="convnorm"), **kw)["final_fid"]
    placed_g = train_gan(_tiny(g_norm="convnorm+bn"), **kw)["final_fid"]
    unmatched = train_gan(_tiny(d_norm="convnorm", n_dis=2), **kw)["final_fid"]  # no baseline at n_dis 2
    text = "\n".join(report_section(str(tmp_path)))
    assert f"| 2 | 24 vs 40 | {mean:.2f} ± {std:.2f} | baseline |" in text
    assert f"| 1 | 24 vs 40 | {placed:.2f} | {placed - mean:+.2f} |" in text
    assert f"| 1 | 24 vs 40 | {placed_g:.2f} | {placed_g - mean:+.2f} |" in text
    assert f"| 1 | 24 vs 40 | {unmatched:.2f} | — |" in text


def test_sample_diversity_measures_spread_across_images():
    from convnorm.experiments.gan import sample_diversity

    same = torch.full((5, 3, 4, 4), 77, dtype=torch.uint8)
    assert sample_diversity(same) == 0.0
    pair = torch.stack([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.full((3, 4, 4), 255, dtype=torch.uint8)])
    assert sample_diversity(pair) == pytest.approx(2 ** -0.5)  # std (ddof 1) of {0, 1}
    with pytest.raises(ValueError, match="N >= 2"):
        sample_diversity(same[:1])


def test_records_carry_sample_diversity(finished):
    root, records = finished
    record = records["sn"]
    assert all(0 <= s["diversity"] <= 1 for s in record["samples"]) and 0 < record["real_diversity"] < 1
    text = "\n".join(report_section(str(root / "results")))
    last = max(record["samples"], key=lambda s: s["iteration"])
    assert f"| {last['diversity']:.3f} ({record['real_diversity']:.3f}) |" in text
