"""ConvNorm in the models people use: torchvision and timm, converted, trained a step, checked.

Runs in its own environment (``make test-zoo``: torch 2.14.1, torchvision 0.29.1 and timm),
apart from the main suite, which keeps the CPU torch 2.13 wheel. Every model is built at
random init: no weights are downloaded. The layers run on the spatial path (the one that
takes every geometry; ``algorithm='auto'`` would time both paths on every new shape, which
is the subject of the main suite); one model also runs on the Fourier path.
"""
from __future__ import annotations

import copy
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

tv_models = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")

from convnorm import ConvNorm2d, autotune, convert_convnorm, revert_convnorm  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import reference as R  # noqa: E402  (the main suite's float64 dense reference)

TORCHVISION = ["resnet18", "resnet50", "wide_resnet50_2", "vgg11_bn", "densenet121", "mobilenet_v2",
               "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x1_0", "convnext_tiny"]
TIMM = ["resnet50d", "efficientnet_b0", "convnext_nano", "regnetz_b16", "resnest14d"]
MODELS = [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM]
SIZES = (64, 96)
#: Convs that convert_convnorm leaves alone (with a warning naming each), per model: none of
#: these models has one.
SKIPPED = {}


@pytest.fixture(autouse=True, scope="module")
def spatial_path():
    autotune.set_enabled(False)  # 'auto' means 'spatial': no timing of every new shape
    yield
    autotune.set_enabled(True)


def build(source: str, name: str) -> nn.Module:
    torch.manual_seed(0)
    if source == "torchvision":
        return tv_models.get_model(name, weights=None, num_classes=10)
    return timm.create_model(name, pretrained=False, num_classes=10)


def convnorm_layers(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ConvNorm2d)]


@pytest.mark.parametrize("batchnorm", ["keep", "remove"])
@pytest.mark.parametrize("source,name", MODELS, ids=[f"{s}-{n}" for s, n in MODELS])
def test_converted_model_trains_and_evaluates(source, name, batchnorm):
    original = build(source, name)
    plain_convs = sum(type(m) is nn.Conv2d for m in original.modules())
    reference = copy.deepcopy(original).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = convert_convnorm(original, batchnorm=batchnorm)
    skipped = [str(w.message) for w in caught if str(w.message).startswith("convert_convnorm: left")]
    layers = convnorm_layers(model)
    assert skipped == SKIPPED.get(name, []), skipped  # the convs ConvNorm cannot take, by model
    assert len(layers) + len(skipped) == plain_convs > 0
    if batchnorm == "remove":
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    for size in SIZES:
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected_shape = reference(x).shape
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(x)
        assert out.shape == expected_shape and torch.isfinite(out).all()
        out.square().mean().backward()
        missing = [n for n, m in layers if m.weight.grad is None or not torch.isfinite(m.weight.grad).all()]
        assert not missing, f"no finite gradient for {missing[:5]}"
        model.eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == expected_shape and torch.isfinite(out).all()


def _small_twin(layer: ConvNorm2d) -> ConvNorm2d:
    """The layer's geometry and options with few channels, in float64: its dense operator fits
    in memory. Depthwise stays depthwise, grouped stays grouped."""
    if layer.groups == layer.in_channels == layer.out_channels:
        c_in, c_out, groups = 3, 3, 3
    elif layer.groups > 1:
        c_in, c_out, groups = 4, 4, 2
    else:
        c_in, c_out, groups = 3, 4, 1
    torch.manual_seed(1)
    twin = ConvNorm2d(c_in, c_out, layer.kernel_size, layer.stride, layer.padding, layer.dilation, groups,
                      bias=layer.bias is not None, padding_mode=layer.padding_mode, eps=layer.eps,
                      affine_init="random", dtype=torch.float64, algorithm=layer.algorithm)
    return twin


def _picked(model: nn.Module):
    """A depthwise, a strided and a dilated converted layer where the model has them, then
    others up to two at least."""
    layers = [m for _, m in convnorm_layers(model) if max(m.kernel_size) > 1]
    picks = []
    for wanted in (lambda m: m.groups == m.in_channels == m.out_channels, lambda m: max(m.stride) > 1,
                   lambda m: max(m.dilation) > 1):
        found = next((m for m in layers if wanted(m) and m not in picks), None)
        if found is not None:
            picks.append(found)
    picks += [m for m in layers if m not in picks][:max(0, 2 - len(picks))]
    return picks


@pytest.mark.parametrize("source,name", MODELS, ids=[f"{s}-{n}" for s, n in MODELS])
def test_converted_layers_match_the_dense_reference(source, name):
    model = convert_convnorm(build(source, name))
    picks = _picked(model)
    assert len(picks) >= 2
    for layer in picks:
        twin = _small_twin(layer)
        k = [d * (kk - 1) + 1 for kk, d in zip(twin.kernel_size, twin.dilation)]
        size = (max(k[0], 5) + 2, max(k[1], 5) + 1)
        x = torch.randn(2, twin.in_channels, *size, dtype=torch.float64)
        with torch.no_grad():
            y = twin(x)
        dense = R.build(twin.weight.detach().numpy(), size, twin.stride, twin.padding, twin.dilation, twin.groups,
                        twin.padding_mode, twin.eps, twin.affine_weight.detach().numpy())
        expected = R.apply(dense, x.numpy(), twin.padding_mode, None if twin.bias is None else twin.bias.detach().numpy(),
                           twin.affine_bias.detach().numpy())
        assert np.abs(y.numpy() - expected).max() < 1e-10 * max(1.0, np.abs(expected).max()), (
            f"{layer}: kernel {layer.kernel_size} stride {layer.stride} dilation {layer.dilation} groups {layer.groups}")


@pytest.mark.parametrize("source,name", MODELS, ids=[f"{s}-{n}" for s, n in MODELS])
def test_revert_gives_back_the_layer_types_and_the_state_dict_round_trips(source, name):
    original = build(source, name)
    keys = set(original.state_dict())
    types = [type(m) for m in original.modules()]
    model = convert_convnorm(copy.deepcopy(original))
    fresh = convert_convnorm(build(source, name))
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))
    back = revert_convnorm(model)
    assert [type(m) for m in back.modules()] == types
    assert set(back.state_dict()) == keys


def test_the_fourier_path_on_a_real_model():
    model = convert_convnorm(build("torchvision", "resnet18"), algorithm="fourier")
    spatial = convert_convnorm(build("torchvision", "resnet18"), algorithm="spatial")
    spatial.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    model.eval(), spatial.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), spatial(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("source,name", [("torchvision", "resnet18"), ("timm", "resnest14d")])
def test_torch_compile(source, name):
    model = convert_convnorm(build(source, name)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model)(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
