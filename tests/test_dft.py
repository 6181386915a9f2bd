"""The Fourier algorithm's DFT matrices and its hand-written backward (convnorm.dft)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convnorm import dft
from convnorm import functional as CF


@given(size=st.integers(1, 9), extra=st.integers(0, 6))
@settings(max_examples=40, deadline=None)
def test_forward_matrices_are_the_dft_of_the_zero_padded_signal(size, extra):
    grid = size + extra
    x = np.random.default_rng(size * 31 + extra).standard_normal(size)
    padded = np.concatenate([x, np.zeros(extra)])
    full = np.fft.fft(padded)  # numpy: an independent FFT
    r2c = dft._forward_r2c(size, grid).numpy() @ x
    half = grid // 2 + 1
    np.testing.assert_allclose(r2c[:half] + 1j * r2c[half:], full[:half], atol=1e-12)
    pairs = np.stack([x, np.zeros(size)], axis=-1).reshape(-1)  # (position, re/im)
    c2c = dft._forward_c2c(size, grid).numpy() @ pairs
    np.testing.assert_allclose(c2c[:grid] + 1j * c2c[grid:], full, atol=1e-12)


@given(grid=st.integers(1, 12), stride=st.integers(1, 4), count=st.integers(1, 8))
@settings(max_examples=40, deadline=None)
def test_inverse_matrices_evaluate_the_inverse_dft_at_the_output_positions(grid, stride, count):
    rng = np.random.default_rng(grid * 97 + stride * 7 + count)
    signal = rng.standard_normal(grid)
    spectrum = np.fft.fft(signal)
    positions = [(stride * j) % grid for j in range(count)]  # strided, wrapping around
    half = grid // 2 + 1
    c2r = dft._inverse_c2r(positions, grid).numpy() @ np.concatenate([spectrum[:half].real, spectrum[:half].imag])
    np.testing.assert_allclose(c2r, signal[positions], atol=1e-12)
    c2c = dft._inverse_c2c(positions, grid).numpy() @ np.concatenate([spectrum.real, spectrum.imag])
    np.testing.assert_allclose(c2c.reshape(count, 2)[:, 0], signal[positions], atol=1e-12)
    np.testing.assert_allclose(c2c.reshape(count, 2)[:, 1], 0.0, atol=1e-12)


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("groups,stride,mode", [(1, 1, "zeros"), (2, 2, "zeros"), (1, 3, "circular"),
                                                (2, 1, "reflect")])
def test_fourier_gradients_match_finite_differences(dims, groups, stride, mode):
    """The hand-written backward, in 1/2/3-D, with groups, strides and wrap-around."""
    g = torch.Generator().manual_seed(dims * 10 + groups + stride)
    size = (5, 4, 3)[:dims] if dims < 3 else (3, 4, 3)
    x = torch.randn(2, 2 * groups, *size, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2 * groups, 2, *(3,) * dims, generator=g, dtype=torch.float64, requires_grad=True)
    grid = CF.spectrum_grid_size(size, 3, padding=1, padding_mode=mode)
    fixed = CF.preconditioner_spectrum(w.detach(), grid)

    def fn(x, w):
        return CF.conv_norm(x, w, None, stride, 1, 1, groups, padding_mode=mode, spectrum=fixed,
                            algorithm="fourier")

    assert torch.autograd.gradcheck(fn, (x, w))


def test_fourier_and_spatial_agree_on_a_resnet_layer():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 12, 12, generator=g, dtype=torch.float64)
    w = torch.randn(16, 8, 3, 3, generator=g, dtype=torch.float64)
    a = CF.conv_norm(x, w, None, 2, 1, algorithm="spatial")
    b = CF.conv_norm(x, w, None, 2, 1, algorithm="fourier")
    assert a.shape == b.shape == (2, 16, 6, 6)
    assert (a - b).abs().max() < 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", ["spatial", "fourier"])
def test_gpu_paths_match_the_cpu_paths(algorithm):
    """CI has no GPU: this runs where one is present, and holds both paths to the CPU's."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 10, 10, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    cpu = CF.conv_norm(x, w, None, 2, 1, 1, 2, algorithm=algorithm)
    gy = torch.randn_like(cpu)
    cpu_grads = torch.autograd.grad(cpu, (x, w), gy)
    xc, wc = x.detach().cuda().requires_grad_(), w.detach().cuda().requires_grad_()
    gpu = CF.conv_norm(xc, wc, None, 2, 1, 1, 2, algorithm=algorithm)
    gpu_grads = torch.autograd.grad(gpu, (xc, wc), gy.cuda())
    assert (gpu.cpu() - cpu).abs().max() < 1e-10
    for a, b in zip(gpu_grads, cpu_grads):
        assert (a.cpu() - b).abs().max() < 1e-10


# -- regressions found in review --------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["spatial", "fourier"])
def test_second_derivatives(algorithm):
    """A backward that is itself differentiated (gradient penalties, Jacobian norms)."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    grid = CF.spectrum_grid_size((5, 5), 3, padding=1)
    fixed = CF.preconditioner_spectrum(w.detach(), grid)
    fn = lambda x, w: CF.conv_norm(x, w, None, 2, 1, spectrum=fixed, algorithm=algorithm)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_jacobian_norms_of_a_fourier_model():
    from torch import nn

    from convnorm import ConvNorm2d
    from convnorm.spectral import input_jacobian_norms

    torch.manual_seed(0)
    model = nn.Sequential(ConvNorm2d(3, 4, 3, padding=1, algorithm="fourier"), nn.ReLU()).eval()
    norms = input_jacobian_norms(model, torch.randn(2, 3, 8, 8), iterations=3)
    assert torch.isfinite(torch.as_tensor(norms)).all()


def test_autocast_leaves_the_fourier_path_and_its_cache_in_float32():
    from convnorm import ConvNorm2d

    torch.manual_seed(0)
    m = ConvNorm2d(8, 8, 3, padding=1, affine_init="random", algorithm="fourier").eval()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        clean = m(x)
        m.clear_spectrum_cache()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(x)
        after = m(x)  # served from what the autocast forward cached
    assert (after - clean).abs().max() < 1e-5


def test_the_cache_never_serves_a_new_tensor_at_a_recycled_address():
    from torch.func import functional_call

    from convnorm import ConvNorm2d

    m = ConvNorm2d(4, 6, 3, padding=1, algorithm="fourier", dtype=torch.float64).eval()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(4):
            w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
            y = functional_call(m, {"weight": w}, (x,))
            expected = CF.conv_norm(x, w, None, 1, 1, affine_weight=m.affine_weight, affine_bias=m.affine_bias,
                                    algorithm="spatial")
            assert (y - expected).abs().max() < 1e-10
            del w, y


@pytest.mark.parametrize("algorithm", ["spatial", "fourier"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_mode_then_training(algorithm, dtype):
    from convnorm import ConvNorm2d

    m = ConvNorm2d(4, 6, 3, padding=1, algorithm=algorithm, dtype=dtype)
    x = torch.randn(2, 4, 8, 8, dtype=dtype)
    m.eval()
    with torch.inference_mode():
        inferred = m(x)
    m.train()
    m(x).sum().backward()  # nothing made under inference mode is saved for this backward
    assert m.weight.grad is not None
    m.eval()
    with torch.no_grad():
        assert (m(x) - inferred).abs().max() < 1e-5
