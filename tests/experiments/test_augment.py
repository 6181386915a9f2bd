"""Batched crop/flip and normalization against slow per-sample references."""
import pytest
import torch
import torch.nn.functional as F

from convnorm.experiments.augment import crop_flip, normalize, random_crop_flip


def reference_crop_flip(images, top, left, flip, padding):
    out = torch.empty_like(images)
    h, w = images.shape[-2:]
    for n in range(images.shape[0]):
        padded = F.pad(images[n], (padding,) * 4)
        crop = padded[:, int(top[n]):int(top[n]) + h, int(left[n]):int(left[n]) + w]
        out[n] = crop.flip(-1) if flip[n] else crop
    return out


@pytest.mark.parametrize("shape,padding", [((16, 3, 8, 8), 4), ((9, 1, 5, 7), 2), ((4, 2, 6, 3), 0),
                                           ((7, 3, 4, 4), 5)])
def test_crop_flip_matches_per_sample_loop(shape, padding):
    g = torch.Generator().manual_seed(sum(shape) + padding)
    images = torch.randn(shape, generator=g)
    n = shape[0]
    top = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g) == 1
    assert torch.equal(crop_flip(images, top, left, flip, padding=padding),
                       reference_crop_flip(images, top, left, flip, padding))


@pytest.mark.parametrize("flip", [True, False])
def test_random_crop_flip_is_documented_draws_then_crop_flip(flip):
    images = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = random_crop_flip(images, padding=3, flip=flip, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    top = torch.randint(0, 7, (32,), generator=g)
    left = torch.randint(0, 7, (32,), generator=g)
    mirror = torch.randint(0, 2, (32,), generator=g) == 1 if flip else torch.zeros(32, dtype=torch.bool)
    assert torch.equal(out, reference_crop_flip(images, top, left, mirror, 3))
    assert out.dtype == images.dtype and out.shape == images.shape
    again = random_crop_flip(images, padding=3, flip=flip, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again)


def test_random_crop_flip_identity_without_padding_or_flip():
    images = torch.randn(4, 2, 5, 5)
    assert torch.equal(random_crop_flip(images, padding=0, flip=False), images)
    flipped = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    for n in range(4):
        assert torch.equal(flipped[n], images[n]) or torch.equal(flipped[n], images[n].flip(-1))


def test_crop_flip_checks_arguments():
    images = torch.randn(2, 1, 4, 4)
    with pytest.raises(ValueError, match="top"):
        crop_flip(images, torch.tensor([0, 9]), torch.tensor([0, 0]), torch.tensor([False, False]), padding=2)
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(images, padding=-1)
    with pytest.raises(ValueError, match="floating"):
        random_crop_flip(images.to(torch.uint8))


def test_normalize():
    images = torch.randint(0, 256, (3, 2, 4, 4), dtype=torch.uint8)
    out = normalize(images, (0.5, 0.25), (0.2, 0.4))
    expected = torch.stack([(images[:, 0].double() / 255 - 0.5) / 0.2, (images[:, 1].double() / 255 - 0.25) / 0.4], 1)
    assert out.dtype == torch.float32 and torch.allclose(out.double(), expected, atol=1e-6)
    assert normalize(images, 0.5, 0.5, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="uint8"):
        normalize(images.float(), 0.5, 0.5)
    with pytest.raises(ValueError, match="mean"):
        normalize(images, (0.1, 0.2, 0.3), (1, 1))
    with pytest.raises(ValueError, match="std"):
        normalize(images, 0.5, 0.0)
