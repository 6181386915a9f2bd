"""A re-implementation of the paper's public ConvNorm algorithm, as a speed baseline.

DESIGN section 1.2, training path: the full stride-1 correlation (padding k - 1), rfft2,
multiply by v̂ recomputed from the weight at every call (no gradient through it), irfft2,
crop k - 1 - p per side, subsample by the stride, a depthwise affine conv with 'same'
padding, then BatchNorm. 1x1 kernels scale by the row norm. Written for the current
``torch.fft`` API; used only to time the algorithm, not as a reference for values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PublicConvNorm2d(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        k = self.kernel_size
        self.affine = nn.Conv2d(out_channels, out_channels, k, padding="same", groups=out_channels, bias=True)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        w = self.weight.detach()
        if kh == 1 and kw == 1:
            scale = w.square().sum(dim=(1, 2, 3)).rsqrt()
            out = F.conv2d(x, self.weight, None, self.stride, self.padding) * scale[None, :, None, None]
        else:
            c = F.conv2d(x, self.weight, None, 1, (kh - 1, kw - 1))
            n_h, n_w = c.shape[-2:]
            spec = torch.fft.rfft2(c)
            v = torch.fft.rfft2(F.pad(w, (0, n_w - kw, 0, n_h - kh))).abs().square().sum(1).rsqrt()
            out = torch.fft.irfft2(spec * v, s=(n_h, n_w))
            ch, cw = kh - 1 - self.padding[0], kw - 1 - self.padding[1]
            out = out[..., ch : n_h - ch, cw : n_w - cw][..., :: self.stride[0], :: self.stride[1]]
        return self.bn(self.affine(out))


def convert_public(module: nn.Module) -> nn.Module:
    """Conv2d -> PublicConvNorm2d (which carries its own BN); BatchNorm2d -> Identity."""
    if type(module) is nn.Conv2d:
        new = PublicConvNorm2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                               module.padding, module.bias is not None).to(module.weight.device)
        new.weight = module.weight
        return new
    out = nn.Identity() if isinstance(module, nn.BatchNorm2d) else module
    for name, child in module.named_children():
        out.add_module(name, convert_public(child))
    return out
