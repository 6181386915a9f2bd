"""convert_convnorm / revert_convnorm on Sequential, nested and attribute-style models."""
import pytest
import torch
from torch import nn

from convnorm import ConvNorm1d, ConvNorm2d, ConvNorm3d, convert_convnorm, revert_convnorm
from convnorm.modules import _ConvNormNd


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock layout (attribute-style, downsample Sequential)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    """A torchvision-style ResNet: 7x7 stem, max-pool, two stages, avgpool, fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


def test_converts_every_conv_of_a_torchvision_style_resnet():
    torch.manual_seed(0)
    model = TinyResNet()
    convs = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    converted = convert_convnorm(model)
    assert count(converted, ConvNorm2d) == len(convs) == 10
    assert count(converted, nn.BatchNorm2d) == 10
    for name, m in converted.named_modules():
        if name in convs:
            assert isinstance(m, ConvNorm2d) and torch.equal(m.weight, convs[name])
    assert converted.layer2[0].downsample[0].stride == (2, 2)
    out = converted(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert converted.conv1.weight.grad is not None


def test_batchnorm_remove_and_options():
    model = TinyResNet()
    converted = convert_convnorm(model, batchnorm="remove", affine=False, eps=1e-3)
    assert count(converted, nn.modules.batchnorm._BatchNorm) == 0
    assert count(converted, nn.Identity) == 10
    assert all(not m.affine and m.eps == 1e-3 for m in converted.modules() if isinstance(m, ConvNorm2d))
    converted(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        convert_convnorm(TinyResNet(), batchnorm="drop")


def test_root_conv_dims_bias_dtype_and_mode_carry_over():
    for conv, cls in [(nn.Conv1d(2, 3, 3, bias=True), ConvNorm1d), (nn.Conv3d(2, 3, 3, padding=1), ConvNorm3d)]:
        conv = conv.double().eval()
        out = convert_convnorm(conv)
        assert type(out) is cls and out.weight.dtype == torch.float64 and not out.training
        assert (out.bias is None) == (conv.bias is None)
        if conv.bias is not None:
            assert torch.equal(out.bias, conv.bias)
    conv = nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect", groups=1, dilation=2)
    conv.weight.requires_grad_(False)
    out = convert_convnorm(conv)
    assert out.padding == "same" and out.padding_mode == "reflect" and out.dilation == (2, 2)
    assert not out.weight.requires_grad


def test_subclasses_and_transposed_convs_are_left_alone():
    class StdConv(nn.Conv2d):
        pass

    model = nn.Sequential(StdConv(3, 3, 3), nn.ConvTranspose2d(3, 3, 3), ConvNorm2d(3, 3, 3), nn.Conv2d(3, 3, 1))
    converted = convert_convnorm(model)
    assert type(converted[0]) is StdConv and type(converted[1]) is nn.ConvTranspose2d
    assert type(converted[3]) is ConvNorm2d and count(converted, _ConvNormNd) == 2


def test_revert_restores_plain_convs_with_the_same_weights():
    model = convert_convnorm(TinyResNet())
    weight = model.layer1[0].conv1.weight
    plain = revert_convnorm(model)
    assert count(plain, _ConvNormNd) == 0 and count(plain, nn.Conv2d) == 10
    assert plain.layer1[0].conv1.weight is weight


def test_a_conv_convnorm_cannot_take_is_left_with_a_warning_naming_it():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 3)))
    model[1][0].padding_mode = "bogus"  # a mode ConvNorm does not take
    with pytest.warns(UserWarning, match=r"left 1\.0 .* as it is: padding_mode must be one of"):
        out = convert_convnorm(model)
    assert isinstance(out[0], ConvNorm2d) and type(out[1][0]) is nn.Conv2d


def test_bad_options_fail_once_before_anything_is_converted():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        convert_convnorm(model, algorithm="winograd")
    assert type(model[0]) is nn.Conv2d
