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
