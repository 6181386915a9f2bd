"""``convnorm-paper`` is the public code's ConvNorm block, exactly.

The reference is a port of the public block's forward (``PreConv`` in the paper's
``models/prec_conv.py``, final version, default options) written here from its description,
with ``torch.fft.rfft2`` / ``irfft2`` in place of the removed ``torch.rfft`` / ``irfft``. It
shares nothing with the library: its own conv with padding k-1, its own FFTs of the
zero-padded kernel, its own running average, crop and stride.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnorm import ConvNorm2d
from convnorm.experiments.methods import PAPER_BLOCK, apply_method

DT = torch.float64


def public_factor(n: int) -> float:
    """The public code's EMA factor at its n-th training forward."""
    c = min(max(n, 0), 40000)
    return max(0.5 * (math.cos(math.pi * c / 40000) + 1), 1e-2)


class PublicBlock(nn.Module):
    """The public ConvNorm block (conv, preconditioner, crop/stride, affine, BN), ported."""

    def __init__(self, c_in, c_out, k, stride, padding):
        super().__init__()
        self.k, self.stride, self.padding = k, stride, padding
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k, dtype=DT) / (c_in * k * k) ** 0.5)
        self.bpconv = nn.Conv2d(c_out, c_out, k, padding=(k - 1) // 2, groups=c_out, bias=True, dtype=DT)
        self.batch_norm = nn.BatchNorm2d(c_out, dtype=DT)
        self.running_V = torch.zeros(1, dtype=DT)
        self.num_batches_tracked = 0

    def _running(self, V):
        self.num_batches_tracked += 1
        f = public_factor(self.num_batches_tracked)
        self.running_V = f * V + (1 - f) * self.running_V

    def preconditioner(self, c, use_running):
        kernel = self.weight.detach()
        if self.k == 1:
            V = torch.exp(-0.5 * torch.log((kernel ** 2).sum(1)))
            if use_running:
                V = self.running_V
            elif self.training:
                self._running(V)
            return V * c
        n1, n2 = c.shape[-2:]
        spectrum = torch.fft.rfft2(c)
        if use_running:
            V = self.running_V
        else:
            padded = F.pad(kernel, [0, n2 - self.k, 0, n1 - self.k])
            V = torch.exp(-0.5 * torch.log((torch.fft.rfft2(padded).abs() ** 2).sum(1)))
            if self.training:
                self._running(V)
        return torch.fft.irfft2(spectrum * V, s=(n1, n2))

    def forward(self, x, use_running=None):
        use_running = (not self.training) if use_running is None else use_running
        c = F.conv2d(x, self.weight, None, 1, self.k - 1)
        p = self.preconditioner(c, use_running)
        crop = self.k - 1 - self.padding
        if crop:
            p = p[:, :, crop:-crop, crop:-crop]
        if self.stride > 1:
            p = p[..., ::self.stride, ::self.stride]
        return self.batch_norm(self.bpconv(p))


def ours_from(public: PublicBlock, c_in, c_out, k, stride, padding) -> nn.Module:
    """``convnorm-paper`` applied to Conv + BN, holding the reference block's parameters."""
    block = nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding, bias=False, dtype=DT),
                          nn.BatchNorm2d(c_out, dtype=DT))
    block = apply_method(block, "convnorm-paper").model
    with torch.no_grad():
        block[0].weight.copy_(public.weight)
        block[0].affine_weight.copy_(public.bpconv.weight)
        block[0].affine_bias.copy_(public.bpconv.bias)
    return block


def sgd_step(params, lr):
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad = None


@pytest.mark.parametrize("algorithm", ["spatial", "fourier"])
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (1, 1), (1, 2)])
def test_convnorm_paper_matches_the_public_block_in_train_and_eval(k, stride, algorithm):
    torch.manual_seed(0)
    c_in, c_out, padding = 3, 4, (k - 1) // 2
    public = PublicBlock(c_in, c_out, k, stride, padding)
    ours = ours_from(public, c_in, c_out, k, stride, padding)
    layer = ours[0]
    layer.algorithm = algorithm  # both exact paths (a 1x1 kernel takes the folded one under any)
    assert isinstance(layer, ConvNorm2d) and layer.eps == 0 and layer.track_running_spectrum
    g = torch.Generator().manual_seed(1)

    def train_steps(count, lr):
        for _ in range(count):
            x = torch.randn(2, c_in, 7, 7, generator=g, dtype=DT)
            probe = torch.randn(2, c_out, (7 - 1) // stride + 1, (7 - 1) // stride + 1, generator=g, dtype=DT)
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = public(xa), ours(xb)
            torch.testing.assert_close(yb, ya, rtol=1e-10, atol=1e-10)
            (ya * probe).sum().backward()
            (yb * probe).sum().backward()
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-10)
            pairs = [(layer.weight, public.weight), (layer.affine_weight, public.bpconv.weight),
                     (layer.affine_bias, public.bpconv.bias), (ours[1].weight, public.batch_norm.weight),
                     (ours[1].bias, public.batch_norm.bias)]
            for mine, theirs in pairs:
                torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-10, atol=1e-10)
            sgd_step([p for p, _ in pairs], lr)
            sgd_step([p for _, p in pairs], lr)

    public.train(), ours.train()
    # From a fresh start: the public average starts from 0 with factor f(1) = 1 - 1.5e-9, this
    # layer from the first v̂; after three forwards the two differ by less than 1e-16.
    train_steps(3, lr=0.05)
    # Then late in the ramp, across the forward (37,450) where the factor reaches its 0.01
    # floor, so the average lags the moving weights.
    public.num_batches_tracked = 37_445
    layer.num_batches_tracked.fill_(37_445)
    train_steps(8, lr=0.05)
    assert public.num_batches_tracked == int(layer.num_batches_tracked) == 37_453
    assert public_factor(37_449) > 0.01 == public_factor(37_450)
    running = layer.running_spectrum
    assert running.shape == ((c_out,) if k == 1 else public.running_V.shape)
    torch.testing.assert_close(running, public.running_V.reshape(running.shape), rtol=1e-12, atol=0)

    public.eval(), ours.eval()
    x = torch.randn(2, c_in, 7, 7, generator=g, dtype=DT)
    expected = public(x)
    torch.testing.assert_close(ours(x), expected, rtol=1e-10, atol=1e-10)
    # Eval reads the running average, not the current weights' v̂ (which differs by now).
    from_current = public(x, use_running=False)
    assert (from_current - expected).abs().max() > 1e-4


def test_paper_block_options_are_the_public_defaults():
    assert PAPER_BLOCK == dict(affine=True, affine_init="random", eps=0.0, preconditioner_grad=False,
                               track_running_spectrum=True, momentum=None)
    torch.manual_seed(0)
    model = apply_method(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)),
                         "convnorm-paper").model
    affine = model[0].affine_weight
    centre = torch.zeros_like(affine)
    centre[:, 0, 1, 1] = 1
    assert not torch.equal(affine, centre)  # random, not the identity this project starts from
    with pytest.raises(TypeError, match="takes no options"):
        apply_method(nn.Conv2d(2, 3, 3), "convnorm-paper", eps=1e-5)


def test_running_state_round_trips_and_a_resumed_run_is_bit_identical():
    def net():
        return apply_method(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                          nn.Conv2d(4, 4, 1, stride=2, bias=False), nn.BatchNorm2d(4)),
                            "convnorm-paper").model

    def steps(model, optimizer, start, count):
        for i in range(start, start + count):
            g = torch.Generator().manual_seed(i)
            x, target = torch.randn(4, 2, 6, 6, generator=g), torch.randn(4, 4, 3, 3, generator=g)
            loss = F.mse_loss(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    torch.manual_seed(0)
    a = net()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    steps(a, opt_a, 0, 3)
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(opt_a.state_dict())
    assert {"0.running_spectrum", "0.running_grid", "0.num_batches_tracked", "3.running_spectrum"} <= set(saved_model)
    steps(a, opt_a, 3, 4)

    torch.manual_seed(1)  # another init: everything must come from the saved state
    b = net()
    b.load_state_dict(saved_model, strict=True)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    opt_b.load_state_dict(saved_opt)
    steps(b, opt_b, 3, 4)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name
    a.eval(), b.eval()
    x = torch.randn(2, 2, 6, 6)
    assert torch.equal(a(x), b(x))
