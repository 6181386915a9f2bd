"""build_model: every model takes 1x28x28 (Fashion-MNIST) and 3x32x32 (CIFAR) images."""
import pytest
import torch
from torch import nn

from convnorm.experiments.models import MODELS, build_model, cifar_resnet18


def test_model_names():
    assert set(MODELS) == {"resnet18", "resnet34", "resnet50", "vgg16", "small_resnet"}


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_give_logits(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=7)
    assert isinstance(model, nn.Module)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ValueError, match="resnet18.*small_resnet"):
        build_model("resnet101")


def test_options_reach_the_builders():
    m = build_model("small_resnet", widths=(8, 16), blocks_per_stage=2)
    assert m.fc.in_features == 16 and len(m.layers) == 2 and len(m.layers[0]) == 2
    v = build_model("vgg16", widths=(4, 8, 8, 8, 16), num_classes=3)
    assert v.classifier.in_features == 16 and v.classifier.out_features == 3
    assert sum(isinstance(x, nn.Conv2d) for x in v.modules()) == 13
    with pytest.raises(ValueError, match="widths"):
        build_model("vgg16", widths=(4, 8))
    with pytest.raises(ValueError, match="blocks_per_stage"):
        build_model("small_resnet", blocks_per_stage=0)


def test_standard_sizes_and_old_positional_api():
    assert sum(p.numel() for p in cifar_resnet18(10, 3).parameters()) == 11_173_962
    vgg = build_model("vgg16")
    # CIFAR VGG-16 (conv biases dropped: BN follows every conv).
    assert sum(p.numel() for p in vgg.parameters()) == 14_728_266 - 4224
