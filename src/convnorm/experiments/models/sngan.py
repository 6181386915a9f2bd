"""SN-GAN generators and discriminators for 32x32 images, normalization chosen by name.

The two architecture pairs of Miyato et al. 2018 ("Spectral Normalization for Generative
Adversarial Networks", Tables 3 and 4), for ``z`` of dimension 128 and 32x32 RGB images:

``arch="cnn"``, the "standard CNN" (DCGAN-like):

* G: ``z -> linear 4x4x512 -> BN, ReLU -> [4x4 stride-2 deconv, BN, ReLU] to 256, 128, 64
  channels -> 3x3 conv to 3 -> tanh``;
* D: ``3x3 conv 64, 4x4 s2 conv 64, 3x3 128, 4x4 s2 128, 3x3 256, 4x4 s2 256, 3x3 512``,
  each followed by LeakyReLU(0.1), then a linear layer to one logit.

``arch="resnet"``:

* G: ``z -> linear 4x4x256 -> 3 up-ResBlocks (256 ch) -> BN, ReLU -> 3x3 conv to 3 -> tanh``;
  an up-block is ``BN, ReLU, nearest x2, 3x3 conv, BN, ReLU, 3x3 conv`` plus a shortcut
  ``nearest x2, 1x1 conv``;
* D: an "optimized" first down-block, a down-block and two plain blocks (128 ch), ReLU,
  global sum pooling, linear to one logit.

Normalization (the point of this module):

* discriminator ``d_norm``:

  - ``"sn"`` (baseline): ``torch.nn.utils.parametrizations.spectral_norm`` on every conv
    and linear weight (one power iteration per forward);
  - ``"convnorm"``: every conv is a :class:`convnorm.ConvNorm2d` (identity-initialized
    affine kernel, whose bias plays the conv bias), no spectral normalization anywhere;
  - ``"convnorm+sn"``: the ``"sn"`` network with its convs replaced by ConvNorm2d; each
    ConvNorm conv weight is spectrally normalized (:class:`SpectralNormConvNorm2d`) and so
    is the linear head;
  - ``"none"``: plain convs and linear layer.

* generator ``g_norm``:

  - ``"bn"`` (baseline): BatchNorm as in the paper;
  - ``"convnorm"``: every conv is a ConvNorm2d and every BatchNorm is removed;
  - ``"convnorm+bn"``: ConvNorm2d convs, BatchNorm kept after them (the ConvNorm paper's
    default placement).

ConvNorm has no transposed version, so in the CNN generator with ``g_norm`` ``"convnorm"``
or ``"convnorm+bn"`` each 4x4 stride-2 deconvolution becomes nearest-neighbour x2
upsampling followed by a 3x3 ConvNorm conv (the ResNet generator upsamples that way in
every variant). All convs and linear layers start from Xavier-uniform weights (gain 1;
sqrt(2) on the residual-branch convs of the ResNets, as in the reference implementations)
and zero biases.

Spectral norm on a ConvNorm weight: the parametrization itself works on a ConvNorm2d (it is
an ``nn.Conv2d`` subclass), but a plain parametrized ConvNorm2d is wrong in two ways,
both fixed by :class:`SpectralNormConvNorm2d`: ConvNorm reads ``self.weight`` several
times per forward, and each read of a spectrally normalized weight in training mode runs a
power iteration (several iterations per forward, and the spectrum and the convolution see
slightly different weights); and ConvNorm caches its spectrum keyed on the weight tensor's
version counter and storage address, which a freshly computed parametrized weight can
reuse, so a stale spectrum could be served. The wrapper computes the weight once per
forward (``torch.nn.utils.parametrize.cached``) and clears the spectrum cache first.
Note also what SN does there: ConvNorm rescales each output channel to a tight frame, so
its output is invariant to the scale of the conv weight except through ``eps``
(``y ∝ â x̂ / sqrt(Σ|â|² + eps σ²)``); dividing the weight by its spectral norm ``σ`` thus
mainly changes the gradient (with ``preconditioner_grad=False`` the preconditioner is a
constant for backprop) and the effective ``eps``, while the learned affine kernel, which
sets the layer's gain, stays unconstrained.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from convnorm import ConvNorm2d

__all__ = ["ARCHS", "D_NORMS", "G_NORMS", "SpectralNormConvNorm2d", "CNNGenerator", "CNNDiscriminator",
           "ResNetGenerator", "ResNetDiscriminator", "build_generator", "build_discriminator", "build_sngan"]

ARCHS = ("cnn", "resnet")
D_NORMS = ("sn", "convnorm", "convnorm+sn", "none")
G_NORMS = ("bn", "convnorm", "convnorm+bn")

_SQRT2 = math.sqrt(2.0)


class SpectralNormConvNorm2d(nn.Module):
    """A :class:`~convnorm.ConvNorm2d` whose conv weight is spectrally normalized.

    Wraps ``spectral_norm(conv)`` so that each forward computes the normalized weight once
    (one power iteration in training mode) and ConvNorm's spectrum cache never outlives a
    forward (see the module docstring for why both are needed).

    Args:
        conv: the ConvNorm2d to parametrize (its weight becomes
            ``conv.parametrizations.weight.original``).
        n_power_iterations: power iterations per forward in training mode.
    """

    def __init__(self, conv: ConvNorm2d, n_power_iterations: int = 1) -> None:
        super().__init__()
        if not isinstance(conv, ConvNorm2d):
            raise TypeError(f"conv must be a ConvNorm2d, got {type(conv).__name__}")
        self.conv = spectral_norm(conv, n_power_iterations=n_power_iterations)

    def forward(self, input: Tensor) -> Tensor:
        self.conv.clear_spectrum_cache()
        with parametrize.cached():
            return self.conv(input)


def _init(layer: nn.Module, gain: float) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return layer


class _Layers:
    """Builds the convs, linear layers and norms of one network for a normalization name."""

    def __init__(self, norm: str) -> None:
        self.norm = norm

    @property
    def convnorm(self) -> bool:
        return self.norm.startswith("convnorm")

    @property
    def sn(self) -> bool:
        return self.norm in ("sn", "convnorm+sn")

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
             gain: float = 1.0) -> nn.Module:
        if self.convnorm:
            # The affine bias plays the conv bias (both are per-channel offsets after the conv).
            layer = _init(ConvNorm2d(cin, cout, kernel, stride, padding, bias=False, affine=True), gain)
            return SpectralNormConvNorm2d(layer) if self.sn else layer
        layer = _init(nn.Conv2d(cin, cout, kernel, stride, padding), gain)
        return spectral_norm(layer) if self.sn else layer

    def linear(self, fin: int, fout: int, gain: float = 1.0) -> nn.Module:
        layer = _init(nn.Linear(fin, fout), gain)
        return spectral_norm(layer) if self.sn else layer

    def bn(self, channels: int, dims: int = 2) -> nn.Module:
        if self.norm in ("bn", "convnorm+bn"):
            return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
        return nn.Identity()

    def up(self, cin: int, cout: int) -> nn.Module:
        """x2 upsampling conv of the CNN generator: 4x4 stride-2 deconv, or nearest + 3x3 conv."""
        if self.convnorm:
            return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), self.conv(cin, cout, 3, 1, 1))
        return _init(nn.ConvTranspose2d(cin, cout, 4, 2, 1), 1.0)


def _check(value: str, valid: Tuple[str, ...], name: str) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


# -- standard CNN ---------------------------------------------------------------------------

class CNNGenerator(nn.Module):
    """The SN-GAN "standard CNN" generator: ``(N, z_dim)`` noise to ``(N, 3, 32, 32)`` in [-1, 1].

    Args:
        z_dim: noise dimension.
        width: channels at 4x4 (512 in the paper); the up-convs halve it three times.
        norm: ``"bn"``, ``"convnorm"`` or ``"convnorm+bn"`` (see the module docstring).
    """

    def __init__(self, z_dim: int = 128, width: int = 512, norm: str = "bn") -> None:
        super().__init__()
        _check(norm, G_NORMS, "norm")
        if width % 8:
            raise ValueError(f"width must be a multiple of 8, got {width}")
        layers = _Layers(norm)
        self.z_dim, self.width = z_dim, width
        self.linear = layers.linear(z_dim, 4 * 4 * width)
        self.bn0 = layers.bn(4 * 4 * width, dims=1)
        chans = (width, width // 2, width // 4, width // 8)
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [layers.up(cin, cout), layers.bn(cout), nn.ReLU()]
        self.blocks = nn.Sequential(*blocks)
        self.to_rgb = layers.conv(chans[-1], 3, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = F.relu(self.bn0(self.linear(z))).view(-1, self.width, 4, 4)
        return torch.tanh(self.to_rgb(self.blocks(h)))


class CNNDiscriminator(nn.Module):
    """The SN-GAN "standard CNN" discriminator: ``(N, 3, 32, 32)`` images to ``(N,)`` logits.

    Args:
        width: channels of the last conv (512 in the paper); the convs have
            ``width/8, width/8, width/4, width/4, width/2, width/2, width`` channels.
        norm: one of :data:`D_NORMS`.
    """

    def __init__(self, width: int = 512, norm: str = "sn") -> None:
        super().__init__()
        _check(norm, D_NORMS, "norm")
        if width % 8:
            raise ValueError(f"width must be a multiple of 8, got {width}")
        layers = _Layers(norm)
        w = width
        spec = [(3, w // 8, 3, 1), (w // 8, w // 8, 4, 2), (w // 8, w // 4, 3, 1), (w // 4, w // 4, 4, 2),
                (w // 4, w // 2, 3, 1), (w // 2, w // 2, 4, 2), (w // 2, w, 3, 1)]
        body = []
        for cin, cout, k, s in spec:
            body += [layers.conv(cin, cout, k, s, 1), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*body)
        self.linear = layers.linear(4 * 4 * w, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.body(x).flatten(1)).squeeze(1)


# -- ResNet ---------------------------------------------------------------------------------

class _GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: _Layers) -> None:
        super().__init__()
        self.bn1, self.conv1 = layers.bn(cin), layers.conv(cin, cout, 3, 1, 1, gain=_SQRT2)
        self.bn2, self.conv2 = layers.bn(cout), layers.conv(cout, cout, 3, 1, 1, gain=_SQRT2)
        self.shortcut = layers.conv(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class _DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: _Layers, *, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.first, self.downsample = first, downsample
        self.conv1 = layers.conv(cin, cout, 3, 1, 1, gain=_SQRT2)
        self.conv2 = layers.conv(cout, cout, 3, 1, 1, gain=_SQRT2)
        self.shortcut = layers.conv(cin, cout, 1) if (cin != cout or downsample) else None

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:  # the "optimized" block: pool, then 1x1 conv
            s = self.shortcut(F.avg_pool2d(x, 2))
        elif self.shortcut is not None:
            s = self.shortcut(x)
            if self.downsample:
                s = F.avg_pool2d(s, 2)
        return h + s


class ResNetGenerator(nn.Module):
    """The SN-GAN ResNet generator for 32x32: ``(N, z_dim)`` to ``(N, 3, 32, 32)`` in [-1, 1].

    Args:
        z_dim: noise dimension.
        width: channels of every block (256 in the paper).
        norm: one of :data:`G_NORMS`.
    """

    def __init__(self, z_dim: int = 128, width: int = 256, norm: str = "bn") -> None:
        super().__init__()
        _check(norm, G_NORMS, "norm")
        layers = _Layers(norm)
        self.z_dim, self.width = z_dim, width
        self.linear = layers.linear(z_dim, 4 * 4 * width)
        self.blocks = nn.Sequential(*[_GBlock(width, width, layers) for _ in range(3)])
        self.bn = layers.bn(width)
        self.to_rgb = layers.conv(width, 3, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.blocks(self.linear(z).view(-1, self.width, 4, 4))
        return torch.tanh(self.to_rgb(F.relu(self.bn(h))))


class ResNetDiscriminator(nn.Module):
    """The SN-GAN ResNet discriminator for 32x32: images to ``(N,)`` logits.

    Args:
        width: channels of every block (128 in the paper).
        norm: one of :data:`D_NORMS`.
    """

    def __init__(self, width: int = 128, norm: str = "sn") -> None:
        super().__init__()
        _check(norm, D_NORMS, "norm")
        layers = _Layers(norm)
        self.blocks = nn.Sequential(
            _DBlock(3, width, layers, downsample=True, first=True),
            _DBlock(width, width, layers, downsample=True),
            _DBlock(width, width, layers, downsample=False),
            _DBlock(width, width, layers, downsample=False),
        )
        self.linear = layers.linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling
        return self.linear(h).squeeze(1)


# -- builders -------------------------------------------------------------------------------

_DEFAULT_WIDTH = {("cnn", "g"): 512, ("cnn", "d"): 512, ("resnet", "g"): 256, ("resnet", "d"): 128}


def build_generator(arch: str = "cnn", *, norm: str = "bn", z_dim: int = 128, width: int | None = None) -> nn.Module:
    """The generator of ``arch`` (``"cnn"`` or ``"resnet"``); ``width`` None: the paper's."""
    _check(arch, ARCHS, "arch")
    width = _DEFAULT_WIDTH[(arch, "g")] if width is None else int(width)
    cls = CNNGenerator if arch == "cnn" else ResNetGenerator
    return cls(z_dim=z_dim, width=width, norm=norm)


def build_discriminator(arch: str = "cnn", *, norm: str = "sn", width: int | None = None) -> nn.Module:
    """The discriminator of ``arch``; ``width`` None: the paper's."""
    _check(arch, ARCHS, "arch")
    width = _DEFAULT_WIDTH[(arch, "d")] if width is None else int(width)
    cls = CNNDiscriminator if arch == "cnn" else ResNetDiscriminator
    return cls(width=width, norm=norm)


def build_sngan(arch: str = "cnn", *, d_norm: str = "sn", g_norm: str = "bn", z_dim: int = 128,
                g_width: int | None = None, d_width: int | None = None) -> Tuple[nn.Module, nn.Module]:
    """``(generator, discriminator)`` of ``arch`` with the given normalizations."""
    return (build_generator(arch, norm=g_norm, z_dim=z_dim, width=g_width),
            build_discriminator(arch, norm=d_norm, width=d_width))
