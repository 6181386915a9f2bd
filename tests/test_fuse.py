"""fuse_for_inference: the fused model computes the unfused eval model, in float64."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convnorm import ConvNorm2d, convert_convnorm, fuse_for_inference
from convnorm.experiments.methods import apply_method
from convnorm.experiments.models import cifar_resnet18


def _trained(method: str, algorithm: str) -> nn.Module:
    """A small ResNet after a few SGD steps, so BN statistics, affine kernels and the running
    spectrum are all away from their initial values."""
    torch.manual_seed(0)
    model = apply_method(cifar_resnet18(widths=(4, 8, 8, 8)), method).model.double()
    for m in model.modules():
        if isinstance(m, ConvNorm2d):
            m.algorithm = algorithm
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("method", ["convnorm", "convnorm+bn", "convnorm-paper"])
@pytest.mark.parametrize("algorithm", ["spatial", "fourier"])
def test_fused_model_equals_unfused_in_float64(method, algorithm):
    model = _trained(method, algorithm)
    fused = fuse_for_inference(copy.deepcopy(model))
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    if method == "convnorm":
        assert batchnorms == 0 and left == 0
    else:
        # Every BN of the ResNet follows a ConvNorm (shortcut BNs too): all are folded.
        assert batchnorms > 0 and left == 0
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert (expected - got).abs().max() < 1e-10 * max(1.0, expected.abs().max().item())


def test_layers_without_affine_or_with_bias_fold_too():
    torch.manual_seed(1)
    block = nn.Sequential(ConvNorm2d(3, 5, 3, padding=1, affine=False, bias=True, dtype=torch.float64),
                          nn.BatchNorm2d(5, dtype=torch.float64), nn.ReLU())
    block.train()
    for _ in range(2):
        block(torch.randn(4, 3, 6, 6, dtype=torch.float64))
    with torch.no_grad():
        block[1].weight.uniform_(0.5, 2.0)
        block[1].bias.uniform_(-1.0, 1.0)
    block.eval()
    fused = fuse_for_inference(copy.deepcopy(block))
    assert isinstance(fused[1], nn.Identity)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        assert (block(x) - fused(x)).abs().max() < 1e-12


def test_a_batchnorm_whose_input_is_shared_is_left_alone():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ConvNorm2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output is read twice: the BN cannot absorb it

    model = fuse_for_inference(Shared().eval())
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_untraceable_model_falls_back_to_sequential_neighbours():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(ConvNorm2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.body(x)
            return -self.body(x)

    model = Branchy().eval()
    with pytest.warns(UserWarning, match="could not trace"):
        fuse_for_inference(model)
    assert isinstance(model.body[1], nn.Identity)


def test_training_mode_is_refused():
    model = convert_convnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="eval mode"):
        fuse_for_inference(model)
    model.eval()
    model[1] = nn.BatchNorm2d(4, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="no running statistics"):
        fuse_for_inference(model)
