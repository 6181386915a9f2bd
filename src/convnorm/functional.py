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
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PADDING_MODES",
    "preconditioner_spectrum",
    "spectrum_grid_size",
    "conv_norm",
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


def _phase_matrix(size: int, taps: int, dilation: int, onesided: bool, dtype, device) -> Tensor:
    """exp(-2πi ω d t / N) for ω in the (one-sided) frequency range and t < taps: (ω, t)."""
    n_freq = size // 2 + 1 if onesided else size
    omega = torch.arange(n_freq, dtype=torch.float64)
    t = torch.arange(taps, dtype=torch.float64) * dilation
    # Reduce ω·d·t modulo N in exact integer arithmetic before the trig functions.
    angle = (-2 * math.pi / size) * torch.remainder(omega[:, None] * t[None, :], size)
    return torch.polar(torch.ones_like(angle), angle).to(device=device, dtype=dtype)


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


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

    A grid size of 1 yields the (constant) DC value along that dimension.
    """
    real = _working_dtype(weight.dtype)
    a = weight.to(real).to(_complex_dtype(real))  # (C_out, C_in/g, k_1, ..., k_n)
    n = weight.dim() - 2
    for m in range(n):
        phase = _phase_matrix(
            grid[m], weight.shape[2 + m], dilation[m], m == onesided_dim, a.dtype, a.device
        )
        # Contract the tap axis of dimension m with its phase matrix; the frequency axis
        # takes its place.
        a = torch.movedim(torch.tensordot(a, phase, dims=([2 + m], [1])), -1, 2 + m)
    power = (a.real.square() + a.imag.square()).sum(dim=1)
    return torch.rsqrt(power + eps)


def preconditioner_spectrum(
    weight: Tensor,
    grid_size: _IntOrTuple,
    *,
    dilation: _IntOrTuple = 1,
    eps: float = 1e-5,
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

    Returns:
        real tensor of shape ``(C_out, N_1, ..., N_n)``: v̂ at every frequency of the grid,
        in the order of ``torch.fft.fftn`` (v̂ is even, so the first ``N_n // 2 + 1``
        entries of the last dim are what an ``rfftn`` product needs). The dtype is float64
        for a float64 weight and float32 otherwise. Differentiable in ``weight``.
    """
    n = weight.dim() - 2
    if n < 1:
        raise ValueError(f"weight must have at least 3 dims (C_out, C_in/groups, *kernel), got {weight.dim()}")
    grid = _tuple(grid_size, n, "grid_size")
    if any(g < 1 for g in grid):
        raise ValueError(f"grid_size must be positive, got {grid}")
    return _spectrum(weight, grid, _tuple(dilation, n, "dilation"), eps, onesided_dim=None)


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
    return _Plan(
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


def _apply_spectrum(c: Tensor, spectrum: Tensor, plan: _Plan) -> Tensor:
    """irfftn(v̂ · rfftn(c)) over the active spatial dims of ``c`` (B, C_out, *grid)."""
    dims = [2 + m for m in plan.active]
    sizes = [c.shape[d] for d in dims]
    real = _working_dtype(c.dtype)
    # FFTs run outside autocast: cuFFT/pocketfft in half precision are limited or absent.
    with torch.autocast(device_type=c.device.type, enabled=False):
        spec = torch.fft.rfftn(c.to(real), dim=dims)
        return torch.fft.irfftn(spec * spectrum.to(real), s=sizes, dim=dims)


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
            size; computed from ``weight`` when ``None``.
        preconditioner_grad: let the gradient flow through v̂ into ``weight``
            (default: v̂ is treated as a constant, as in the paper's code).
        affine_weight: optional per-channel kernel ``(C_out, 1, *kernel)`` applied to the
            normalized output as a depthwise correlation with 'same' zero padding.
        affine_bias: optional ``(C_out,)``, the affine kernel's bias.

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
            affine_bias=affine_bias,
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
    return _conv_norm_planned(
        input, weight, bias, plan, padding_mode, dilation_t, groups, eps, spectrum,
        preconditioner_grad, affine_weight, affine_bias,
    )


def _planned_layout(spectrum: Tensor, plan: _Plan) -> Tensor:
    """Public full layout on ``plan.grid`` -> the layout :func:`_apply_spectrum` uses."""
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
) -> Tensor:
    """conv_norm for a batched input whose geometry is already planned.

    ``spectrum`` is in the layout of :func:`spectrum_for_plan`.
    """
    n = weight.dim() - 2
    x = input
    if plan.prepad is not None:
        x = F.pad(x, plan.prepad, mode=padding_mode)
    if plan.wrap_pad is not None:
        x = F.pad(x, plan.wrap_pad, mode="circular")
    for m, index in plan.wrap_index:
        x = x.index_select(2 + m, index.to(x.device))
    out_bias = _sum_optional(bias, affine_bias)

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
    out = _select(_apply_spectrum(c, spectrum, plan), plan.output_index)
    if affine_weight is not None:
        out = _affine(out, affine_weight)
    if out_bias is not None:
        out = out + out_bias.to(out.dtype).reshape((-1,) + (1,) * n)
    return out.to(input.dtype)


def _affine(x: Tensor, affine_weight: Tensor) -> Tensor:
    """Depthwise correlation with 'same' zero padding (odd element on the right, as PyTorch)."""
    kernel = affine_weight.shape[2:]
    pads = tuple(p for k in reversed(kernel) for p in ((k - 1) // 2, k // 2))
    if any(pads):
        x = F.pad(x, pads)
    return _CONV[len(kernel)](x, affine_weight.to(x.dtype), None, 1, 0, 1, x.shape[1])


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
