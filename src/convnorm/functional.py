"""The ConvNorm operator as plain functions.

This module is the single home of the math (see ``docs/math.md``). For output channel
``i`` of a convolution with kernels ``a_ij`` the preconditioner spectrum on an
``N_1 x ... x N_n`` grid is

    v̂_i(ω) = (Σ_j |â_ij(ω)|² + eps)^(-1/2),     â_ij = DFT_N(a_ij dilated, zero-padded)

and the normalized output channel is ``irfftn(v̂_i · rfftn(c_i))`` where ``c_i`` is the
convolution output on that grid, cropped and subsampled afterwards to the geometry that
``torch.nn.functional.conv{n}d`` would produce.

Two facts keep the work small and exact:

* v̂ is real, non-negative and even, so correlation vs. convolution does not matter.
* Along a spatial dimension where the (dilated) kernel has a single tap, â and hence v̂
  are constant, so the preconditioner is the identity along it: no FFT, and the conv's own
  stride and padding apply natively there. A kernel with a single tap along every
  dimension (1x1) reduces to a per-output-row weight normalization.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from convnorm import autotune
from convnorm.dft import fourier_conv_norm

__all__ = [
    "PADDING_MODES",
    "ALGORITHMS",
    "kernel_dft",
    "preconditioner_spectrum",
    "spectrum_grid_size",
    "conv_norm",
    "SpectrumCache",
    "running_average_factor",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

_IntOrTuple = Union[int, Sequence[int]]
_Padding = Union[str, int, Sequence[int]]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _tuple(value: _IntOrTuple, n: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    return value


def _side_padding(
    padding: _Padding, kernel_size: Sequence[int], dilation: Sequence[int]
) -> Tuple[Tuple[int, int], ...]:
    """Per-dimension (left, right) zero padding, exactly as PyTorch's conv applies it."""
    n = len(kernel_size)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            # PyTorch puts the odd element of an even total on the right.
            totals = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"padding must be 'valid', 'same', an int or a tuple, got {padding!r}")
    pads = _tuple(padding, n, "padding")
    if any(p < 0 for p in pads):
        raise ValueError(f"padding must be non-negative, got {pads}")
    return tuple((p, p) for p in pads)


def _phase_matrix(size: int, offsets: Tensor, onesided: bool, device) -> Tensor:
    """exp(-2πi ω o / N) for ω in the (one-sided) frequency range and integer offsets o."""
    n_freq = size // 2 + 1 if onesided else size
    omega = torch.arange(n_freq, dtype=torch.float64)
    # Reduce ω·o modulo N in exact integer arithmetic before the trig functions.
    angle = (-2 * math.pi / size) * torch.remainder(omega[:, None] * offsets.to(torch.float64)[None, :], size)
    return torch.polar(torch.ones_like(angle), angle).to(device=device)


def _kernel_autocorrelation(weight: Tensor) -> Tensor:
    """R_i[δ] = Σ_j Σ_t a_ij[t + δ] a_ij[t], in float64: (C_out, 2k_1 - 1, ..., 2k_n - 1).

    Σ_j |â_ij(ω)|² is the DFT of R_i, so v̂ needs one small transform per output channel
    instead of one per (output, input) pair.
    """
    c_out, c_in = weight.shape[:2]
    kernel = weight.shape[2:]
    taps = math.prod(kernel)
    a = weight.to(torch.float64).reshape(c_out, c_in, taps)
    gram = torch.bmm(a.transpose(1, 2), a)  # (C_out, t, t'): Σ_j a_ij[t] a_ij[t']
    lag_shape = [2 * k - 1 for k in kernel]
    index = _lag_index(tuple(kernel), weight.device)
    auto = gram.new_zeros(c_out, math.prod(lag_shape))
    auto = auto.index_add(1, index, gram.reshape(c_out, taps * taps))
    return auto.reshape(c_out, *lag_shape)


_LAG_INDEX_CACHE: dict = {}


def _lag_index(kernel: Tuple[int, ...], device) -> Tensor:
    """For each tap pair (t, t'), the flat index of the lag t - t' + (k - 1)."""
    key = (kernel, str(device))
    if key not in _LAG_INDEX_CACHE:
        with torch.inference_mode(False):  # a cached constant must serve outside inference mode too
            _LAG_INDEX_CACHE[key] = _lag_index_table(kernel, device)
    return _LAG_INDEX_CACHE[key]


def _lag_index_table(kernel: Tuple[int, ...], device) -> Tensor:
    coords = torch.stack(torch.meshgrid(*[torch.arange(k) for k in kernel], indexing="ij"), -1).reshape(-1, len(kernel))
    lag = coords[:, None, :] - coords[None, :, :] + torch.tensor(kernel) - 1  # (t, t', n)
    flat = torch.zeros(lag.shape[:2], dtype=torch.long)
    for m, k in enumerate(kernel):
        flat = flat * (2 * k - 1) + lag[..., m]
    return flat.reshape(-1).to(device)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else (fp32, fp16, bf16) is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spectrum(
    weight: Tensor,
    grid: Sequence[int],
    dilation: Sequence[int],
    eps: float,
    onesided_dim: Optional[int],
) -> Tensor:
    """v̂ on ``grid``, one-sided along ``onesided_dim`` (a spatial index), full elsewhere.

    A grid size of 1 yields the (constant) DC value along that dimension. Computed in
    float64 from the kernel autocorrelation, returned in the working dtype.
    """
    n = weight.dim() - 2
    power = _kernel_autocorrelation(weight).to(torch.complex128)
    for m in range(n):
        k = weight.shape[2 + m]
        lags = torch.arange(-(k - 1), k) * dilation[m]
        phase = _phase_matrix(grid[m], lags, m == onesided_dim, weight.device)
        # Contract the lag axis of dimension m with its phase matrix; the frequency axis
        # takes its place.
        power = torch.movedim(torch.tensordot(power, phase, dims=([1 + m], [1])), -1, 1 + m)
    # The DFT of an even real sequence is real and Σ|â|² >= 0; clamp rounding below 0.
    power = power.real.clamp_min(0.0)
    return torch.rsqrt(power + eps).to(_working_dtype(weight.dtype))


def kernel_dft(weight: Tensor, grid_size: _IntOrTuple, *, dilation: _IntOrTuple = 1) -> Tensor:
    """The DFT â of every kernel on a circular grid: ``(C_out, C_in/g, N_1, ..., N_n)``.

    ``â_ij(ω) = Σ_t a_ij[t] exp(-2πi ω·(d t)/N)``: the kernel dilated, zero-padded (or
    wrapped, if longer than the grid) to ``grid_size``. Complex128 for a float64 weight,
    complex64 otherwise; differentiable.
    """
    n = weight.dim() - 2
    grid = _tuple(grid_size, n, "grid_size")
    dil = _tuple(dilation, n, "dilation")
    real = _working_dtype(weight.dtype)
    a = weight.to(real).to(torch.complex128 if real == torch.float64 else torch.complex64)
    for m in range(n):
        offsets = torch.arange(weight.shape[2 + m]) * dil[m]
        phase = _phase_matrix(grid[m], offsets, False, weight.device).to(a.dtype)
        a = torch.movedim(torch.tensordot(a, phase, dims=([2 + m], [1])), -1, 2 + m)
    return a


def preconditioner_spectrum(
    weight: Tensor,
    grid_size: _IntOrTuple,
    *,
    dilation: _IntOrTuple = 1,
    eps: float = 1e-5,
    onesided: bool = False,
) -> Tensor:
    """The ConvNorm preconditioner spectrum v̂ of a conv weight on a circular grid.

    Args:
        weight: conv weight, shape ``(C_out, C_in / groups, k_1, ..., k_n)``. The sum over
            input channels runs over dim 1, i.e. over the inputs of each output channel's
            group, so ``groups`` needs no separate argument.
        grid_size: the grid ``(N_1, ..., N_n)`` (an int for all dimensions). A kernel
            longer than the grid wraps around it, as a circular convolution does.
        dilation: kernel dilation per dimension.
        eps: added to ``Σ_j |â_ij|²`` before the inverse square root.
        onesided: return the layout the layer's products use instead (what
            :class:`ConvNorm2d`'s running spectrum holds): v̂ is even, so along the last
            spatial dim where the dilated kernel has more than one tap only the first
            ``N // 2 + 1`` frequencies are kept; a kernel with a single tap along every
            dim (a 1x1 conv, whose v̂ is constant) gives ``(C_out,)``. The grid must then be
            1 along the single-tap dims, as :func:`spectrum_grid_size` gives it.

    Returns:
        real tensor of shape ``(C_out, N_1, ..., N_n)``: v̂ at every frequency of the grid,
        in the order of ``torch.fft.fftn`` (v̂ is even, so the first ``N_n // 2 + 1``
        entries of the last dim are what an ``rfftn`` product needs); see ``onesided``.
        The dtype is float64 for a float64 weight and float32 otherwise. Differentiable in
        ``weight``.
    """
    n = weight.dim() - 2
    if n < 1:
        raise ValueError(f"weight must have at least 3 dims (C_out, C_in/groups, *kernel), got {weight.dim()}")
    grid = _tuple(grid_size, n, "grid_size")
    if any(g < 1 for g in grid):
        raise ValueError(f"grid_size must be positive, got {grid}")
    dil = _tuple(dilation, n, "dilation")
    if not onesided:
        return _spectrum(weight, grid, dil, eps, onesided_dim=None)
    active = [m for m in range(n) if dil[m] * (weight.shape[2 + m] - 1) > 0]
    if any(grid[m] != 1 for m in range(n) if m not in active):
        raise ValueError(f"grid_size {grid} must be 1 along the dims where the kernel has a single tap")
    if not active:
        return _row_scale(weight, eps, preconditioner_grad=True)
    return _spectrum(weight, grid, dil, eps, onesided_dim=active[-1])


@dataclass(frozen=True)
class _Plan:
    """How to compute one ConvNorm forward for one input size (all per spatial dim)."""

    prepad: Optional[Tuple[int, ...]]  # F.pad argument for reflect/replicate, else None
    # circular: F.pad(mode='circular') argument, then an index gather along the dims whose
    # wrap-around exceeds what F.pad allows (a pad larger than the input, or a crop)
    wrap_pad: Optional[Tuple[int, ...]]
    wrap_index: Tuple[Tuple[int, Tensor], ...]
    conv_stride: Tuple[int, ...]
    conv_padding: Tuple[int, ...]
    grid: Tuple[int, ...]  # spectrum grid; 1 where the preconditioner is the identity
    active: Tuple[int, ...]  # spatial dims that need the FFT
    output_index: Tuple[Union[slice, Tensor], ...]  # picks the output from the grid
    out_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    # For the Fourier algorithm: output position j is grid position (s j - shift) mod N of
    # the circular correlation of the input placed at the grid's origin.
    shift: Tuple[int, ...]
    fourier_ok: bool


def _plan(
    spatial: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[Tuple[int, int]],
    dilation: Sequence[int],
    padding_mode: str,
) -> _Plan:
    n = len(kernel_size)
    span = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    active = tuple(m for m in range(n) if span[m] > 0)

    prepad = None
    size = list(spatial)
    if padding_mode in ("reflect", "replicate"):
        # Pad as PyTorch does, then the padded input is an ordinary zero-padding-free input.
        prepad = tuple(p for m in reversed(range(n)) for p in padding[m])
        size = [h + pl + pr for h, (pl, pr) in zip(spatial, padding)]
        padding = ((0, 0),) * n

    out_size = []
    for m in range(n):
        length = size[m] + padding[m][0] + padding[m][1] - span[m]
        if length < 1:
            raise ValueError(
                f"input size {tuple(spatial)} (padded: {size[m] + sum(padding[m])} along spatial "
                f"dim {m}) is smaller than the dilated kernel extent {span[m] + 1}"
            )
        out_size.append((length - 1) // stride[m] + 1)

    conv_stride, conv_padding, grid, output_index = [], [], [], []
    wrap_pad, wrap_index = None, []
    if padding_mode == "circular":
        wrap_pad = [0] * (2 * n)
        for m in range(n):
            h, (pl, pr), length, s = size[m], padding[m], out_size[m], stride[m]
            if span[m] == 0:
                # Identity preconditioner along m: PyTorch's own wrap padding and stride.
                left, right = pl, pr
                conv_stride.append(s)
                grid.append(1)
                output_index.append(slice(None))
            else:
                # The conv on the input grid itself: c[q] = Σ_t w[t] x[(q + d t - pl) mod h],
                # q < h, from the input wrapped by (pl, span - pl); PyTorch's output n is
                # c[n mod h].
                left, right = pl, span[m] - pl
                conv_stride.append(1)
                grid.append(h)
                full = (length - 1) * s + 1
                output_index.append(
                    slice(0, full, s) if full <= h else torch.remainder(torch.arange(0, full, s), h)
                )
            conv_padding.append(0)
            if 0 <= left <= h and 0 <= right <= h:
                wrap_pad[2 * (n - 1 - m)] = left
                wrap_pad[2 * (n - 1 - m) + 1] = right
            else:
                wrap_index.append((m, torch.remainder(torch.arange(-left, h + right), h)))
        wrap_pad = tuple(wrap_pad) if any(wrap_pad) else None
    else:
        for m in range(n):
            pl, pr = padding[m]
            if span[m] == 0:
                if pl != pr:
                    raise AssertionError("asymmetric padding with a single-tap kernel")
                conv_stride.append(stride[m])
                conv_padding.append(pl)
                grid.append(1)
                output_index.append(slice(None))
            else:
                # The linear correlation with padding max(p, span) is circular on its own
                # output grid; crop max(0, span - p) per side afterwards.
                pad_left, pad_right = max(pl, span[m]), max(pr, span[m])
                if pad_left != pad_right:
                    raise AssertionError("asymmetric grid padding")
                conv_stride.append(1)
                conv_padding.append(pad_left)
                grid.append(size[m] + 2 * pad_left - span[m])
                start = pad_left - pl
                output_index.append(slice(start, start + (out_size[m] - 1) * stride[m] + 1, stride[m]))
    shift = tuple(padding[m][0] for m in range(n))
    fourier_ok = len(active) == n
    return _Plan(
        stride=tuple(stride),
        shift=shift,
        fourier_ok=fourier_ok,
        prepad=prepad,
        wrap_pad=wrap_pad,
        wrap_index=tuple(wrap_index),
        conv_stride=tuple(conv_stride),
        conv_padding=tuple(conv_padding),
        grid=tuple(grid),
        active=active,
        output_index=tuple(output_index),
        out_size=tuple(out_size),
    )


def spectrum_grid_size(
    input_size: Sequence[int],
    kernel_size: _IntOrTuple,
    *,
    padding: _Padding = 0,
    dilation: _IntOrTuple = 1,
    padding_mode: str = "zeros",
) -> Tuple[int, ...]:
    """The grid on which ConvNorm computes v̂ for a given spatial input size.

    Returns one size per spatial dimension; it is 1 along dimensions where the dilated
    kernel has a single tap (the preconditioner is constant there).
    """
    n = len(input_size)
    kernel = _tuple(kernel_size, n, "kernel_size")
    dil = _tuple(dilation, n, "dilation")
    _check_padding_mode(padding_mode)
    return _plan(input_size, kernel, (1,) * n, _side_padding(padding, kernel, dil), dil, padding_mode).grid


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")


def _check_input(input: Tensor, weight: Tensor, groups: int) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    n = weight.dim() - 2
    if input.dim() not in (n + 1, n + 2):
        raise ValueError(
            f"expected a {n + 1}D (unbatched) or {n + 2}D (batched) input for a {n}D ConvNorm, "
            f"got a {input.dim()}D input of shape {tuple(input.shape)}"
        )
    channels = input.shape[-n - 1]
    if channels != weight.shape[1] * groups:
        raise ValueError(
            f"expected input with {weight.shape[1] * groups} channels "
            f"(weight {tuple(weight.shape)}, groups={groups}), got {channels} channels"
        )


def _precondition(c: Tensor, spectrum: Tensor, dims: Sequence[int]) -> Tensor:
    """irfftn(v̂ · rfftn(c)) over ``dims`` of ``c``, in float32 (float64 for float64 input).

    The inverse runs as 1D passes (``ifft`` over the leading dims, then ``irfft``): the same
    numbers as ``irfftn``, several times faster on CPU for sizes that are not powers of 2.
    """
    sizes = [c.shape[d] for d in dims]
    real = _working_dtype(c.dtype)
    # FFTs run outside autocast: cuFFT/pocketfft in half precision are limited or absent.
    with torch.autocast(device_type=c.device.type, enabled=False):
        spec = torch.fft.rfftn(c.to(real), dim=dims) * spectrum.to(real)
        for d in dims[:-1]:
            spec = torch.fft.ifft(spec, dim=d)
        return torch.fft.irfft(spec, n=sizes[-1], dim=dims[-1])


class _Precondition(torch.autograd.Function):
    """y = S P c, with P the (symmetric) preconditioner and S a crop/stride selection.

    P is real, symmetric and fixed (no gradient to v̂), so the input gradient is
    P Sᵀ g: one more application of the forward transform, and nothing but v̂ is saved.
    """

    @staticmethod
    def forward(ctx, c: Tensor, spectrum: Tensor, dims: Tuple[int, ...], index: Tuple[slice, ...]) -> Tensor:
        ctx.save_for_backward(spectrum)
        ctx.dims, ctx.index, ctx.grid_shape, ctx.c_dtype = dims, index, c.shape, c.dtype
        out = _precondition(c, spectrum, dims)
        if all(i == slice(None) for i in index):
            return out
        # A fresh tensor, not a view: callers may modify it in place (ReLU(inplace=True)).
        return out[(Ellipsis, *index)].clone(memory_format=torch.contiguous_format)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (spectrum,) = ctx.saved_tensors
        full = grad.new_zeros(ctx.grid_shape)
        full[(Ellipsis, *ctx.index)] = grad
        return _precondition(full, spectrum, ctx.dims).to(ctx.c_dtype), None, None, None


_TAP_PHASE_CACHE: dict = {}


def _tap_phases(plan: _Plan, kernel: Sequence[int], dilation: Sequence[int], device) -> Tensor:
    """Real table (2, F, taps): cos and -sin of 2π ω·(shift - d t)/N for every frequency ω
    of the one-sided grid and every tap t, i.e. the real and imaginary parts of
    e^{-2πi ω·(shift - d t)/N}."""
    key = (plan.grid, plan.shift, tuple(kernel), tuple(dilation), str(device))
    table = _TAP_PHASE_CACHE.get(key)
    if table is None:
        with torch.inference_mode(False):  # a cached constant must serve outside inference mode too
            table = _tap_phase_table(plan, kernel, dilation, device)
        if len(_TAP_PHASE_CACHE) > 256:
            _TAP_PHASE_CACHE.clear()
        _TAP_PHASE_CACHE[key] = table
    return table


def _tap_phase_table(plan: _Plan, kernel: Sequence[int], dilation: Sequence[int], device) -> Tensor:
    n = len(kernel)
    phase = torch.ones((1, 1), dtype=torch.complex128)
    for m in range(n):
        offsets = plan.shift[m] - torch.arange(kernel[m]) * dilation[m]
        pm = _phase_matrix(plan.grid[m], offsets, m == n - 1, "cpu")  # (F_m, k_m)
        # Row-major over frequencies and taps, as rfftn and the weight lay them out.
        phase = (phase[:, None, :, None] * pm[None, :, None, :]).reshape(
            phase.shape[0] * pm.shape[0], phase.shape[1] * kernel[m]
        )
    return torch.stack([phase.real, phase.imag], dim=0).to(device)


def _taps_first(weight: Tensor, groups: int) -> Tensor:
    """The weight as ``(K, g * C_in/g * C_out/g)``: the layout whose product with the tap
    phases is the kernel spectrum in the Fourier path's layout."""
    c_out, c_in_g = weight.shape[:2]
    taps = math.prod(weight.shape[2:])
    w = weight.to(_working_dtype(weight.dtype)).reshape(groups, c_out // groups, c_in_g, taps)
    return w.permute(3, 0, 2, 1).reshape(taps, -1)


def _kernel_spectrum(weight: Tensor, plan: _Plan, dilation: Sequence[int], groups: int) -> Tensor:
    """conj(â_ij(ω)) e^{-2πi ω·shift/N} as real and imaginary parts.

    Returns ``(2, F * groups, C_in/g, C_out/g)``: per one-sided frequency (and group) the
    matrix that maps the input's spectrum to the conv output's spectrum on the grid of
    ``plan`` (before the output selection). One real GEMM over the taps builds it in this
    layout; only the (small) weight is permuted.
    """
    c_out, c_in_g = weight.shape[:2]
    table = _tap_phases(plan, weight.shape[2:], dilation, weight.device)  # (2, F, K)
    # In the working dtype whatever autocast is in force: the whole Fourier path runs in it.
    with torch.autocast(device_type=weight.device.type, enabled=False):
        kernel = table.to(_working_dtype(weight.dtype)).reshape(-1, table.shape[-1]) @ _taps_first(weight, groups)
    return kernel.reshape(2, table.shape[1] * groups, c_in_g, c_out // groups)


def _frequency_major(spectrum: Tensor, groups: int) -> Tensor:
    """v̂ in the plan layout ``(C_out, *F)`` -> ``(F * groups, 1, C_out/g)``."""
    c_out = spectrum.shape[0]
    v = spectrum.reshape(groups, c_out // groups, -1).permute(2, 0, 1)
    return v.reshape(-1, 1, c_out // groups)


def _spectral_weight(
    weight: Tensor, spectrum: Tensor, plan: _Plan, dilation: Sequence[int], groups: int
) -> Tensor:
    """Ŵ_ij(ω) = v̂_i(ω) conj(â_ij(ω)) e^{-2πi ω·shift/N}: the kernel spectrum with v̂ folded
    in, ``(2, F * groups, C_in/g, C_out/g)``; what eval caches, and what carries the
    gradient to v̂ when ``preconditioner_grad`` is on."""
    kernel = _kernel_spectrum(weight, plan, dilation, groups)
    with torch.autocast(device_type=weight.device.type, enabled=False):
        return kernel * _frequency_major(spectrum.to(kernel.dtype), groups)


def _apply_spectrum(c: Tensor, spectrum: Tensor, plan: _Plan) -> Tensor:
    """S P c: the preconditioner over the active spatial dims of ``c`` (B, C_out, *grid),
    then the output selection (crop, stride, circular wrap) of ``plan``."""
    dims = tuple(2 + m for m in plan.active)
    slices_only = all(isinstance(i, slice) for i in plan.output_index)
    if slices_only and not spectrum.requires_grad:
        return _Precondition.apply(c, spectrum, dims, plan.output_index)
    return _select(_precondition(c, spectrum, dims), plan.output_index)


def _select(x: Tensor, index: Sequence[Union[slice, Tensor]]) -> Tensor:
    if all(isinstance(i, slice) for i in index):
        return x[(Ellipsis, *index)] if index else x
    for m, i in enumerate(index):
        dim = 2 + m
        x = x[(slice(None),) * dim + (i,)] if isinstance(i, slice) else x.index_select(dim, i.to(x.device))
    return x


def conv_norm(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: _IntOrTuple = 1,
    padding: _Padding = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    eps: float = 1e-5,
    spectrum: Optional[Tensor] = None,
    preconditioner_grad: bool = False,
    affine_weight: Optional[Tensor] = None,
    affine_bias: Optional[Tensor] = None,
    algorithm: str = "auto",
    cache: Optional["SpectrumCache"] = None,
) -> Tensor:
    """Normalized convolution: ``conv{n}d`` followed by the ConvNorm preconditioner.

    Args:
        input: ``(B, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``.
        weight: ``(C_out, C_in / groups, *kernel)``; its rank sets the dimensionality.
        bias: optional ``(C_out,)``, added after normalization.
        stride, padding, dilation, groups: as for ``torch.nn.functional.conv{n}d``;
            ``padding`` may be ``'same'`` or ``'valid'``.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
            ``'circular'`` normalizes on the input grid itself (the paper's exact model).
        eps: added to ``Σ_j |â_ij|²``.
        spectrum: a precomputed v̂, as returned by
            ``preconditioner_spectrum(weight, spectrum_grid_size(...))`` for this input
            size, in its full layout or its ``onesided=True`` one; computed from
            ``weight`` when ``None``.
        preconditioner_grad: let the gradient flow through v̂ into ``weight``
            (default: v̂ is treated as a constant, as in the paper's code).
        affine_weight: optional per-channel kernel ``(C_out, 1, *kernel)`` applied to the
            normalized output as a depthwise correlation with 'same' zero padding.
        affine_bias: optional ``(C_out,)``, the affine kernel's bias.
        algorithm: how to compute the same operator. ``'spatial'``: the conv on the
            normalization grid, then ``irfftn(v̂ · rfftn(·))``. ``'fourier'``: the whole
            layer as products with small DFT matrices (:mod:`convnorm.dft`): one complex
            matrix product per frequency with the kernel spectrum, v̂ on the output
            spectrum, and an inverse DFT evaluated only at the output positions, so a
            strided layer never forms its stride-1 output (needs a kernel with more than
            one tap along every dim; a 1x1 kernel is a folded weight normalization under
            every algorithm). ``'auto'`` (default): the faster of the two for this input
            shape, device and thread count, timed on first use (:mod:`convnorm.autotune`).
            See ``docs/performance.md``.
        cache: a :class:`SpectrumCache` that keeps v̂ (and the Fourier path's
            per-frequency weight) between calls while ``weight`` is unchanged: what a
            layer passes to avoid recomputing them every forward.

    The result is ``affine(P c) + affine_bias + bias`` where ``c`` is the conv output
    without bias and ``P`` the preconditioner.

    Returns:
        ``(B, C_out, *out_spatial)`` (unbatched if the input was), the same shape and
        dtype as ``conv{n}d`` would return for float input; computed in float32 (float64
        for float64 input) and cast back to the input dtype.
    """
    n = weight.dim() - 2
    if n not in _CONV:
        raise ValueError(f"weight must be 3D, 4D or 5D (a 1d/2d/3d conv weight), got {weight.dim()}D")
    _check_padding_mode(padding_mode)
    _check_input(input, weight, groups)
    if input.dim() == n + 1:
        return conv_norm(
            input.unsqueeze(0), weight, bias, stride, padding, dilation, groups,
            padding_mode=padding_mode, eps=eps, spectrum=spectrum,
            preconditioner_grad=preconditioner_grad, affine_weight=affine_weight,
            affine_bias=affine_bias, algorithm=algorithm, cache=cache,
        ).squeeze(0)
    kernel = tuple(weight.shape[2:])
    stride_t = _tuple(stride, n, "stride")
    dilation_t = _tuple(dilation, n, "dilation")
    if isinstance(padding, str) and padding == "same" and any(s != 1 for s in stride_t):
        raise ValueError("padding='same' is not supported for strided convolutions")
    plan = _plan(
        input.shape[2:], kernel, stride_t, _side_padding(padding, kernel, dilation_t),
        dilation_t, padding_mode,
    )
    if spectrum is not None:
        spectrum = _planned_layout(spectrum, plan)
    algorithm = resolve_algorithm(algorithm, input, weight, plan, padding_mode, dilation_t, groups, eps)
    spectral_weight = None
    if cache is not None:
        if spectrum is None and not (preconditioner_grad and torch.is_grad_enabled()):
            spectrum = cache.spectrum(weight, plan, dilation_t, eps)
        if spectrum is not None:
            spectral_weight = cache.spectral_weight(weight, spectrum, plan, dilation_t, groups, algorithm)
    out = _conv_norm_planned(
        input, weight, bias, plan, padding_mode, dilation_t, groups, eps, spectrum,
        preconditioner_grad, affine_weight, affine_bias, algorithm, spectral_weight,
    )
    fmt = _memory_format(input)
    if fmt is not torch.contiguous_format:
        out = out.contiguous(memory_format=fmt)  # a channels_last input gets a channels_last output, as a conv gives
    return out


def _planned_layout(spectrum: Tensor, plan: _Plan) -> Tensor:
    """Public full (or already one-sided) layout on ``plan.grid`` -> the layout
    :func:`_apply_spectrum` uses."""
    if tuple(spectrum.shape[1:]) == _onesided_shape(plan.grid, plan.active):
        return spectrum
    if tuple(spectrum.shape[1:]) != plan.grid:
        raise ValueError(
            f"spectrum has spatial shape {tuple(spectrum.shape[1:])}, expected {plan.grid}: "
            "the grid of this input (see spectrum_grid_size)"
        )
    if not plan.active:
        return spectrum.reshape(spectrum.shape[0])
    # v̂ is even: the non-negative half of the last active dim is all rfftn needs.
    last = plan.active[-1]
    return spectrum.narrow(1 + last, 0, plan.grid[last] // 2 + 1)


def _onesided_shape(grid: Sequence[int], active: Sequence[int]) -> Tuple[int, ...]:
    """Spatial shape of v̂ as the products use it: one-sided along the last active dim, none
    at all (a scalar per channel) when no dim is active."""
    if not active:
        return ()
    shape = list(grid)
    shape[active[-1]] = grid[active[-1]] // 2 + 1
    return tuple(shape)


class SpectrumCache:
    """What ConvNorm computes from the weights alone, kept between calls while they are unchanged.

    Pass one to :func:`conv_norm` (``cache=``), as the ConvNorm layers do: v̂ for each input
    grid, and the Fourier path's per-frequency weight, are then computed once per weight
    version and reused while the weight tensor keeps its storage and version counter (an
    optimizer step, ``load_state_dict`` or ``copy_`` changes those). A v̂ that must carry a
    gradient is never cached, nor is anything while ``torch.compile`` traces. Writing the
    weight through ``.data`` bypasses the version counter: call :meth:`clear` then.
    """

    #: Entries kept at most before stale ones are dropped.
    LIMIT = 8

    def __init__(self) -> None:
        self._entries: Dict[tuple, Tuple[tuple, tuple, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget everything (needed only after writing the weight through ``.data``)."""
        self._entries = {}

    def _get(self, key: tuple, sources: Tuple[Tensor, ...], compute) -> Tensor:
        """The cached value of ``key`` if it was computed from these very tensors (identity,
        storage and version counter), else ``compute()``, stored."""
        if torch.is_inference_mode_enabled() or any(t.is_inference() for t in sources):
            return compute()  # inference tensors have no version counter; nothing made here is kept
        stamp = tuple((t._version, t.data_ptr()) for t in sources)
        hit = self._entries.get(key)
        if hit is not None and hit[1] == stamp and all(r() is t for r, t in zip(hit[0], sources)):
            return hit[2]
        if len(self._entries) >= self.LIMIT:
            self._entries = {}
        value = compute()
        # Weak references: a new tensor at a recycled address, with a fresh version counter,
        # must not match an entry of the tensor that lived there before.
        self._entries[key] = (tuple(weakref.ref(t) for t in sources), stamp, value)
        return value

    def spectrum(self, weight: Tensor, plan: _Plan, dilation: Sequence[int], eps: float) -> Tensor:
        """v̂ of ``weight`` for ``plan``'s grid (no gradient), as the products use it."""
        if autotune.is_compiling():
            return spectrum_for_plan(weight, plan, dilation, eps, False)
        key = ("spectrum", plan.grid, plan.active, tuple(dilation), weight.device, weight.dtype, eps)
        return self._get(key, (weight,), lambda: spectrum_for_plan(weight, plan, dilation, eps, False))

    def spectral_weight(self, weight: Tensor, spectrum: Tensor, plan: _Plan, dilation: Sequence[int], groups: int,
                        algorithm: str) -> Optional[Tensor]:
        """The Fourier path's per-frequency weight, when that path runs and no gradient is
        needed; ``None`` otherwise (the path then builds it inside the autograd graph)."""
        if not _use_fourier(algorithm, plan):
            return None
        if (torch.is_grad_enabled() and weight.requires_grad) or spectrum.requires_grad or autotune.is_compiling():
            return None
        key = ("spectral_weight", plan.grid, plan.shift, tuple(dilation), weight.device, weight.dtype, groups)
        return self._get(key, (weight, spectrum), lambda: _spectral_weight(weight, spectrum, plan, dilation, groups))


ALGORITHMS = ("auto", "spatial", "fourier")


def _use_fourier(algorithm: str, plan: _Plan) -> bool:
    """Whether a resolved ``algorithm`` ('spatial' or 'fourier') runs the Fourier path."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "fourier" or not plan.active:
        return False
    if not plan.fourier_ok:
        raise ValueError(
            "algorithm='fourier' needs a kernel with more than one tap along every spatial dim; "
            "use 'auto' or 'spatial'"
        )
    return True


def resolve_algorithm(
    algorithm: str,
    input: Tensor,
    weight: Tensor,
    plan: _Plan,
    padding_mode: str,
    dilation: Tuple[int, ...],
    groups: int,
    eps: float,
) -> str:
    """``'auto'`` -> the path :mod:`convnorm.autotune` measured fastest for this layer and
    input (timed on first use); a pinned algorithm is returned as it is."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "auto":
        return algorithm
    if not plan.active or not plan.fourier_ok:
        return "spatial"
    needs_grad = torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad)
    key = (
        tuple(input.shape), tuple(weight.shape), plan.grid, plan.stride, plan.out_size, plan.shift,
        plan.prepad, plan.conv_padding, tuple(dilation), groups, padding_mode, input.dtype, weight.dtype,
        str(input.device), torch.get_num_threads(), needs_grad,
    )

    def candidates():
        x = input.detach().requires_grad_(input.requires_grad and needs_grad)
        w = weight.detach().requires_grad_(weight.requires_grad and needs_grad)
        with torch.no_grad():
            # What a layer caches between forwards is not part of the timing.
            spectrum = spectrum_for_plan(w, plan, dilation, eps, False)
            cached_weight = None if needs_grad else _spectral_weight(w, spectrum, plan, dilation, groups)

        def run(name: str):
            def step() -> None:
                out = _conv_norm_planned(x, w, None, plan, padding_mode, dilation, groups, eps, spectrum,
                                         False, algorithm=name, spectral_weight=cached_weight)
                if needs_grad:
                    out.sum().backward()
            return step

        return {"spatial": run("spatial"), "fourier": run("fourier")}

    return autotune.choose(key, ("spatial", "fourier"), candidates, input.device)


def _conv_norm_planned(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    plan: _Plan,
    padding_mode: str,
    dilation: Tuple[int, ...],
    groups: int,
    eps: float,
    spectrum: Optional[Tensor],
    preconditioner_grad: bool,
    affine_weight: Optional[Tensor] = None,
    affine_bias: Optional[Tensor] = None,
    algorithm: str = "auto",
    spectral_weight: Optional[Tensor] = None,
) -> Tensor:
    """conv_norm for a batched input whose geometry is already planned.

    ``spectrum`` is in the layout of :func:`spectrum_for_plan`; ``spectral_weight`` (for
    the Fourier algorithm, when it needs no gradient) from :func:`_spectral_weight`.
    """
    n = weight.dim() - 2
    if algorithm == "auto":
        algorithm = resolve_algorithm(algorithm, input, weight, plan, padding_mode, dilation, groups, eps)
    x = input
    if plan.prepad is not None:
        x = F.pad(x, plan.prepad, mode=padding_mode)
    out_bias = _sum_optional(bias, affine_bias)

    if _use_fourier(algorithm, plan):
        scale = table = None
        if spectral_weight is None:
            if spectrum is None:
                spectrum = spectrum_for_plan(weight, plan, dilation, eps, preconditioner_grad)
            if spectrum.requires_grad:
                spectral_weight = _spectral_weight(weight, spectrum, plan, dilation, groups)
            else:
                # A constant v̂ scales the output spectrum, and the kernel spectrum is built
                # from the taps a chunk of frequencies at a time inside the product.
                spectral_weight = _taps_first(weight, groups)
                table = _tap_phases(plan, weight.shape[2:], dilation, weight.device)
                scale = _frequency_major(spectrum, groups)
        out = fourier_conv_norm(x, spectral_weight, plan.grid, plan.stride, plan.out_size, groups,
                                weight.shape[0], scale, table)
        # The path returns channels innermost; the affine kernel runs there (several times
        # faster than on NCHW), then the result takes the input's memory format, as a conv's
        # does, and its gradient comes back channels innermost.
        return _Relayout.apply(_finish(out, input, n, affine_weight, out_bias), _memory_format(input))

    if plan.wrap_pad is not None:
        x = F.pad(x, plan.wrap_pad, mode="circular")
    for m, index in plan.wrap_index:
        x = x.index_select(2 + m, index.to(x.device))

    if not plan.active:
        # Single-tap kernel: v̂_i is the constant (Σ_j w_ij² + eps)^(-1/2); fold it (and a
        # single-tap affine scale) into the weight and let the conv stride and pad natively.
        if spectrum is None:
            spectrum = _row_scale(weight, eps, preconditioner_grad)
        scale = spectrum.to(weight.dtype)
        if affine_weight is not None:
            scale = scale * affine_weight.reshape(-1)
        scale = scale.reshape((-1,) + (1,) * (n + 1))
        out = _CONV[n](x, weight * scale, out_bias, plan.conv_stride, plan.conv_padding, dilation, groups)
        return out.to(input.dtype)

    c = _CONV[n](x, weight, None, plan.conv_stride, plan.conv_padding, dilation, groups)
    if spectrum is None:
        spectrum = spectrum_for_plan(weight, plan, dilation, eps, preconditioner_grad)
    return _finish(_apply_spectrum(c, spectrum, plan), input, n, affine_weight, out_bias)


class _Relayout(torch.autograd.Function):
    """``x.contiguous(memory_format)`` whose backward returns the gradient in x's layout
    (``Tensor.contiguous`` passes it through in the downstream layout)."""

    @staticmethod
    def forward(ctx, x: Tensor, memory_format: torch.memory_format) -> Tensor:
        ctx.strides = x.stride()
        return x.contiguous(memory_format=memory_format)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if grad.stride() == ctx.strides:
            return grad, None
        out = torch.empty_strided(grad.shape, ctx.strides, dtype=grad.dtype, device=grad.device)
        return out.copy_(grad), None


def _memory_format(input: Tensor) -> torch.memory_format:
    """channels_last(_3d) for an input in that layout, else contiguous."""
    if not input.is_contiguous():
        if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
    return torch.contiguous_format


def _finish(out: Tensor, input: Tensor, n: int, affine_weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    """Affine kernel, then the summed biases; back to the input dtype."""
    if affine_weight is not None:
        out = _affine(out, affine_weight)
    if bias is not None:
        out = out + bias.to(out.dtype).reshape((-1,) + (1,) * n)
    return out.to(input.dtype)


def _affine(x: Tensor, affine_weight: Tensor) -> Tensor:
    """Depthwise correlation with 'same' zero padding (odd element on the right, as PyTorch)."""
    kernel = affine_weight.shape[2:]
    if all(k == 1 for k in kernel):
        return x * affine_weight.to(x.dtype).reshape((-1,) + (1,) * len(kernel))
    conv = _CONV[len(kernel)]
    if all(k % 2 == 1 for k in kernel):
        # Symmetric 'same' padding: the conv pads by itself, without a padded copy.
        return conv(x, affine_weight.to(x.dtype), None, 1, tuple((k - 1) // 2 for k in kernel), 1, x.shape[1])
    pads = tuple(p for k in reversed(kernel) for p in ((k - 1) // 2, k // 2))
    return conv(F.pad(x, pads), affine_weight.to(x.dtype), None, 1, 0, 1, x.shape[1])


def _sum_optional(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    return a if b is None else a + b


def _row_scale(weight: Tensor, eps: float, preconditioner_grad: bool) -> Tensor:
    """v_i = (Σ_j w_ij² + eps)^(-1/2) for every output row i: (C_out,)."""
    w = weight if preconditioner_grad else weight.detach()
    w = w.to(_working_dtype(w.dtype))
    return torch.rsqrt(w.flatten(1).square().sum(dim=1) + eps)


def spectrum_for_plan(
    weight: Tensor, plan: _Plan, dilation: Sequence[int], eps: float, preconditioner_grad: bool
) -> Tensor:
    """v̂ laid out for :func:`_apply_spectrum`: one-sided along the last active dim."""
    if not plan.active:
        return _row_scale(weight, eps, preconditioner_grad)
    w = weight if preconditioner_grad else weight.detach()
    return _spectrum(w, plan.grid, dilation, eps, onesided_dim=plan.active[-1])


#: The paper's running average of v̂: its factor ramps down from 1 over this many training
#: forwards, then stays at the floor.
RAMPDOWN_STEPS = 40_000
RUNNING_AVERAGE_FLOOR = 0.01


def running_average_factor(step: int, *, rampdown_steps: int = RAMPDOWN_STEPS,
                           floor: float = RUNNING_AVERAGE_FLOOR) -> float:
    """The weight of the current v̂ in the running average at training forward ``step``.

    ``max(0.5 (cos(π min(step, L) / L) + 1), floor)`` with ``L = rampdown_steps``: the public
    code's cosine ramp-down, counted from 1 for the first forward (where it is
    ``1 - 1.5e-9``, so the average starts at the first v̂), reaching the floor 0.01 at
    step 37,450 and staying there. The running average is
    ``running = factor · v̂ + (1 - factor) · running``.
    """
    if rampdown_steps < 1:
        raise ValueError(f"rampdown_steps must be positive, got {rampdown_steps}")
    step = min(max(int(step), 0), rampdown_steps)
    return max(0.5 * (math.cos(math.pi * step / rampdown_steps) + 1.0), floor)
