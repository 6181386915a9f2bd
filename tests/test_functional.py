"""convnorm.functional against the independent dense float64 reference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import reference as R
from convnorm import functional as CF
from strategies import conv_configs, fourier_applies

CONVS = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}


def make_weight(cfg, generator, dtype=torch.float64):
    shape = (cfg["out_channels"], cfg["in_channels"] // cfg["groups"], *cfg["kernel"])
    return torch.randn(shape, generator=generator, dtype=dtype)


def make_input(cfg, generator, dtype=torch.float64):
    return torch.randn((cfg["batch"], cfg["in_channels"], *cfg["size"]), generator=generator, dtype=dtype)


def relative_error(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max() / max(1.0, np.abs(b).max())


@settings(max_examples=120, deadline=None)
@given(cfg=conv_configs())
def test_reference_geometry_is_pytorch_conv(cfg):
    """The reference without the preconditioner is exactly PyTorch's conv (any mode)."""
    g = torch.Generator().manual_seed(0)
    w, x = make_weight(cfg, g), make_input(cfg, g)
    conv = CONVS[cfg["dims"]](
        cfg["in_channels"], cfg["out_channels"], cfg["kernel"], cfg["stride"], cfg["padding"],
        cfg["dilation"], cfg["groups"], bias=False, padding_mode=cfg["padding_mode"], dtype=torch.float64,
    )
    with torch.no_grad():
        conv.weight.copy_(w)
        expected = conv(x).numpy()
    dense = R.build(w.numpy(), cfg["size"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"],
                    cfg["padding_mode"], normalize=False)
    got = R.apply(dense, x.numpy(), cfg["padding_mode"])
    assert got.shape == expected.shape
    assert relative_error(got, expected) < 1e-12


@settings(max_examples=300, deadline=None)
@given(cfg=conv_configs(), use_bias=st.booleans(), use_affine=st.booleans(),
       eps=st.sampled_from([0.0, 1e-5, 0.1]), algorithm=st.sampled_from(CF.ALGORITHMS))
def test_conv_norm_matches_dense_reference(cfg, use_bias, use_affine, eps, algorithm):
    g = torch.Generator().manual_seed(1)
    w, x = make_weight(cfg, g), make_input(cfg, g)
    c_out, n = cfg["out_channels"], cfg["dims"]
    bias = torch.randn(c_out, generator=g, dtype=torch.float64) if use_bias else None
    affine_w = torch.randn((c_out, 1, *cfg["kernel"]), generator=g, dtype=torch.float64) if use_affine else None
    affine_b = torch.randn(c_out, generator=g, dtype=torch.float64) if use_affine else None
    args = (x, w, bias, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    kwargs = dict(padding_mode=cfg["padding_mode"], eps=eps, affine_weight=affine_w, affine_bias=affine_b,
                  algorithm=algorithm)
    if algorithm == "fourier" and not fourier_applies(cfg):
        with pytest.raises(ValueError, match="algorithm='fourier' needs"):
            CF.conv_norm(*args, **kwargs)
        return
    y = CF.conv_norm(*args, **kwargs)
    dense = R.build(w.numpy(), cfg["size"], cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"],
                    cfg["padding_mode"], eps, None if affine_w is None else affine_w.numpy())
    expected = R.apply(dense, x.numpy(), cfg["padding_mode"],
                       None if bias is None else bias.numpy(), None if affine_b is None else affine_b.numpy())
    assert y.dtype == torch.float64
    assert tuple(y.shape) == expected.shape
    assert relative_error(y.numpy(), expected) < 1e-10


# An ill-conditioned draw once seen to fail a fixed 1e-12 bound: Σ_j |â_ij|² ≈ 1.7e-3 on a
# 2 x 2 grid, relative error 2.4e-12.
_SMALL_POWER = dict(dims=2, kernel=(5, 5), stride=(1, 1), padding=(2, 2), dilation=(1, 1), groups=1,
                    in_channels=1, out_channels=2, padding_mode="zeros", size=(1, 1), batch=1)


@settings(max_examples=60, deadline=None)
@given(cfg=conv_configs(dims=st.sampled_from([1, 2])), grid_extra=st.integers(-3, 4))
@example(cfg=_SMALL_POWER, grid_extra=1)
def test_preconditioner_spectrum_is_the_definition(cfg, grid_extra):
    """v̂ equals (Σ_j |â_ij|² + eps)^(-1/2) by the defining DFT sum,
    also on grids smaller than the dilated kernel (circular wrap-around)."""
    g = torch.Generator().manual_seed(2)
    w = make_weight(cfg, g)
    grid = tuple(max(1, s + grid_extra) for s in cfg["size"])
    eps = 1e-3
    got = CF.preconditioner_spectrum(w, grid, dilation=cfg["dilation"], eps=eps)
    # Build the reference spectrum directly from the definition.
    taps = np.array(np.meshgrid(*[np.arange(k) for k in cfg["kernel"]], indexing="ij")).reshape(len(grid), -1).T
    freqs = np.array(np.meshgrid(*[np.arange(N) for N in grid], indexing="ij")).reshape(len(grid), -1).T
    phase = np.exp(-2j * np.pi * sum(
        np.outer(freqs[:, m], taps[:, m] * cfg["dilation"][m]) / grid[m] for m in range(len(grid))))
    ahat = w.numpy().reshape(w.shape[0], w.shape[1], -1) @ phase.T  # (C_out, C_in/g, freqs)
    power = (np.abs(ahat) ** 2).sum(1).reshape((w.shape[0], *grid))  # Σ_j |â_ij|²
    expected = (power + eps) ** -0.5
    assert got.shape == expected.shape
    # Rounding in Σ_j |â_ij|² is bounded by the kernel's energy, not by the power itself:
    # |δp| <= c u K Σ_j ||a_ij||² (K taps, u the float64 unit roundoff). The inverse square
    # root turns it into the relative error |δv̂| / v̂ <= |δp| / (2 (p + eps)), which grows
    # without limit where the power nearly vanishes; the bound follows it.
    taps_count = taps.shape[0]
    energy = (w.numpy() ** 2).reshape(w.shape[0], -1).sum(1).reshape((-1,) + (1,) * len(grid))
    power_bound = 64 * taps_count * np.finfo(np.float64).eps * energy
    got_power = got.numpy() ** -2.0 - eps
    assert np.all(np.abs(got_power - power) <= power_bound + 4 * np.finfo(np.float64).eps * (power + eps))
    relative = np.abs(got.numpy() - expected) / expected
    assert np.all(relative <= power_bound / (2 * (power + eps)) + 8 * np.finfo(np.float64).eps)


def test_spectrum_is_real_even_and_grid_independent_for_1x1():
    w = torch.randn(5, 3, 1, 1, dtype=torch.float64)
    v = CF.preconditioner_spectrum(w, (6, 7), eps=0.0)
    row = (w.flatten(1).square().sum(1)) ** -0.5
    assert torch.allclose(v, row[:, None, None].expand_as(v))


def test_spectrum_for_float32_and_half_weights_is_float32():
    w = torch.randn(4, 2, 3, 3)
    assert CF.preconditioner_spectrum(w, 8).dtype == torch.float32
    assert CF.preconditioner_spectrum(w.bfloat16(), 8).dtype == torch.float32
    assert CF.preconditioner_spectrum(w.double(), 8).dtype == torch.float64


@pytest.mark.parametrize("kernel", [(1,), (3,), (1, 1), (3, 1), (1, 4), (2, 3), (3, 1, 2)])
def test_explicit_spectrum_argument_matches_internal(kernel):
    n = len(kernel)
    w = torch.randn((4, 2, *kernel), dtype=torch.float64)
    x = torch.randn((2, 2, *([6] * n)), dtype=torch.float64)
    grid = CF.spectrum_grid_size(x.shape[2:], kernel, padding=1)
    spectrum = CF.preconditioner_spectrum(w, grid)
    y1 = CF.conv_norm(x, w, padding=1, spectrum=spectrum)
    y2 = CF.conv_norm(x, w, padding=1)
    assert torch.allclose(y1, y2, atol=1e-13)
    with pytest.raises(ValueError, match="spectrum has spatial shape"):
        CF.conv_norm(x, w, padding=1, spectrum=CF.preconditioner_spectrum(w, [g + 1 for g in grid]))


def test_single_tap_kernels_run_without_fft(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("FFT called for a 1x1 kernel")

    monkeypatch.setattr(torch.fft, "rfftn", fail)
    monkeypatch.setattr(torch.fft, "irfftn", fail)
    w = torch.randn(6, 4, 1, 1, dtype=torch.float64)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    y = CF.conv_norm(x, w, stride=2, padding=1)
    scale = w.flatten(1).square().sum(1).add(1e-5).rsqrt()
    expected = F.conv2d(x, w * scale[:, None, None, None], stride=2, padding=1)
    assert torch.allclose(y, expected, atol=1e-14)


def _dense_channel_operators(fn, in_shape):
    """Jacobian of a linear map of one image: (C_out, prod(out), C_in * prod(in))."""
    x = torch.zeros(in_shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(fn, x)  # (C_out, *out, C_in, *in)
    c_out = jac.shape[0]
    out_numel = int(np.prod(fn(x).shape[1:]))
    return jac.reshape(c_out, out_numel, -1)


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs(dims=st.sampled_from([1, 2]), modes=st.just("circular")))
def test_circular_convnorm_channels_are_isometries(cfg):
    """padding_mode='circular', stride 1, 'same' size: Q_i Q_i^T = I for every channel."""
    g = torch.Generator().manual_seed(3)
    w = make_weight(cfg, g)
    kernel, dil = cfg["kernel"], cfg["dilation"]
    size = tuple(max(s, 2) for s in cfg["size"])

    def layer(img):
        return CF.conv_norm(img[None], w, padding="same", dilation=dil, groups=cfg["groups"],
                            padding_mode="circular", eps=1e-14)[0]

    Q = _dense_channel_operators(layer, (cfg["in_channels"], *size))
    eye = torch.eye(Q.shape[1], dtype=torch.float64)
    for i in range(Q.shape[0]):
        gram = Q[i] @ Q[i].T
        assert torch.allclose(gram, eye, atol=1e-7), (i, (gram - eye).abs().max())


@settings(max_examples=40, deadline=None)
@given(cfg=conv_configs(dims=st.sampled_from([1, 2]), modes=st.just("zeros")))
def test_zero_padded_convnorm_channels_are_contractions(cfg):
    """With zero padding Q_i is a crop of a tight frame applied to an embedding: ||Q_i|| <= 1."""
    g = torch.Generator().manual_seed(4)
    w = make_weight(cfg, g)

    def layer(img):
        return CF.conv_norm(img[None], w, None, cfg["stride"], cfg["padding"], cfg["dilation"],
                            cfg["groups"], eps=0.0)[0]

    Q = _dense_channel_operators(layer, (cfg["in_channels"], *cfg["size"]))
    norms = torch.linalg.matrix_norm(Q, ord=2)
    assert (norms <= 1 + 1e-9).all(), norms


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect"])
@pytest.mark.parametrize("kernel,stride,algorithm", [((3, 2), (2, 1), "spatial"), ((3, 2), (2, 1), "fourier"),
                                                     ((1, 1), (2, 2), "auto"), ((1, 3), (1, 2), "spatial")])
def test_gradcheck_with_gradient_through_preconditioner(mode, kernel, stride, algorithm):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, *kernel, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(4, 1, *kernel, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x, w, a):
        return CF.conv_norm(x, w, None, stride, 1, 1, 2, padding_mode=mode,
                            preconditioner_grad=True, affine_weight=a, algorithm=algorithm)

    assert torch.autograd.gradcheck(fn, (x, w, a))


@pytest.mark.parametrize("mode", ["zeros", "replicate", "circular"])
@pytest.mark.parametrize("kernel,algorithm", [((3, 3), "spatial"), ((3, 3), "fourier"), ((1, 1), "auto"),
                                              ((2, 1), "spatial")])
def test_gradcheck_with_constant_preconditioner(mode, kernel, algorithm):
    """Default mode: the weight gradient is the gradient with v̂ held fixed."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, *kernel, generator=g, dtype=torch.float64, requires_grad=True)
    grid = CF.spectrum_grid_size((5, 4), kernel, padding=1, padding_mode=mode)
    fixed = CF.preconditioner_spectrum(w.detach(), grid)

    def with_fixed(x, w):
        return CF.conv_norm(x, w, None, 2, 1, padding_mode=mode, spectrum=fixed, algorithm=algorithm)

    assert torch.autograd.gradcheck(with_fixed, (x, w))
    # Without an explicit spectrum the default path must give the same gradients.
    gy = torch.randn_like(with_fixed(x, w))
    expected = torch.autograd.grad(with_fixed(x, w), (x, w), gy)
    got = torch.autograd.grad(CF.conv_norm(x, w, None, 2, 1, padding_mode=mode, algorithm=algorithm), (x, w), gy)
    for e, r in zip(expected, got):
        assert torch.allclose(e, r, atol=1e-12)


def test_unbatched_input_matches_batched():
    w = torch.randn(3, 2, 3, dtype=torch.float64)
    x = torch.randn(2, 10, dtype=torch.float64)
    assert torch.allclose(CF.conv_norm(x, w, padding=1), CF.conv_norm(x[None], w, padding=1)[0])


@pytest.mark.parametrize(
    "kwargs,x_shape,w_shape,error,match",
    [
        ({}, (3, 8), (4, 3, 3, 3), ValueError, "expected a 3D .unbatched. or 4D"),
        ({}, (2, 5, 8, 8), (4, 3, 3, 3), ValueError, "expected input with 3 channels"),
        ({"groups": 2}, (2, 3, 8, 8), (4, 3, 3, 3), ValueError, "expected input with 6 channels"),
        ({}, (2, 3, 2, 8), (4, 3, 3, 3), ValueError, "smaller than the dilated kernel"),
        ({"dilation": 3}, (2, 3, 6, 8), (4, 3, 3, 3), ValueError, "smaller than the dilated kernel"),
        ({"padding_mode": "mirror"}, (2, 3, 8, 8), (4, 3, 3, 3), ValueError, "padding_mode must be one of"),
        ({"padding": "full"}, (2, 3, 8, 8), (4, 3, 3, 3), ValueError, "padding must be"),
        ({"padding": "same", "stride": 2}, (2, 3, 8, 8), (4, 3, 3, 3), ValueError, "strided"),
        ({"stride": (1, 2, 3)}, (2, 3, 8, 8), (4, 3, 3, 3), ValueError, "stride must be"),
        ({"algorithm": "winograd"}, (2, 3, 8, 8), (4, 3, 3, 3), ValueError, "algorithm must be one of"),
        ({"algorithm": "fourier"}, (2, 3, 8, 8), (4, 3, 1, 3), ValueError, "algorithm='fourier' needs"),
    ],
)
def test_bad_input_raises_named_error(kwargs, x_shape, w_shape, error, match):
    with pytest.raises(error, match=match):
        CF.conv_norm(torch.randn(x_shape), torch.randn(w_shape), **kwargs)


def test_non_tensor_input_raises_type_error():
    with pytest.raises(TypeError, match="input must be a Tensor"):
        CF.conv_norm([[1.0]], torch.randn(1, 1, 1))


@pytest.mark.parametrize("kernel,size", [((3, 3), (6, 5)), ((1, 3), (4, 6)), ((3, 1), (5, 4)), ((1, 1), (4, 4))])
def test_onesided_spectrum_is_the_kept_half_and_conv_norm_takes_either_layout(kernel, size):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 3, *kernel, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    padding = tuple(k // 2 for k in kernel)
    grid = CF.spectrum_grid_size(size, kernel, padding=padding)
    full = CF.preconditioner_spectrum(w, grid)
    half = CF.preconditioner_spectrum(w, grid, onesided=True)
    active = [m for m in range(2) if kernel[m] > 1]
    if not active:
        assert half.shape == (4,)
        assert torch.allclose(half, full.reshape(4), atol=0, rtol=1e-12)
    else:
        last = active[-1]
        assert torch.equal(half, full.narrow(1 + last, 0, grid[last] // 2 + 1))
    a = CF.conv_norm(x, w, None, 1, padding, spectrum=full)
    b = CF.conv_norm(x, w, None, 1, padding, spectrum=half)
    assert (a - b).abs().max() < 1e-12


def test_spectrum_cache_reuses_until_the_weight_changes():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    cache = CF.SpectrumCache()
    y1 = CF.conv_norm(x, w, None, 1, 1, cache=cache, algorithm="spatial")
    assert len(cache) == 1
    CF.conv_norm(x, w, None, 1, 1, cache=cache, algorithm="spatial")
    assert len(cache) == 1
    w.mul_(3.0)  # a new version: the cached v̂ is stale and must not be served
    y2 = CF.conv_norm(x, w, None, 1, 1, cache=cache, algorithm="spatial")
    assert torch.allclose(y1, y2, atol=1e-4)  # scale invariance holds only with the new v̂
    assert not torch.allclose(CF.conv_norm(x, w, None, 1, 1, algorithm="spatial", eps=1.0),
                              CF.conv_norm(x, w / 3.0, None, 1, 1, algorithm="spatial", eps=1.0))
