"""The Fourier algorithm: a whole ConvNorm layer as real matrix products.

The layer is linear in its input. With the input placed at the origin of the normalization
grid ``N_1 x ... x N_n`` (see :mod:`convnorm.functional`), output position ``j`` of channel
``i`` is

    y_i[j] = (1/|N|) Σ_ω e^{+2πi ω·(s j)/N} Σ_k Ŵ_ki(ω) x̂_k(ω),     x̂_k = DFT_N(x_k)

where ``Ŵ_ki(ω) = v̂_i(ω) conj(â_ik(ω)) e^{-2πi ω·shift/N}`` folds the preconditioner and
the padding offset into the kernel spectrum (``functional._spectral_weight``). Every
transform here is a product with a small dense DFT matrix instead of an FFT:

* the forward DFT reads only the ``H`` input positions (the zero padding costs nothing);
* the inverse DFT evaluates only the ``H_out`` output positions ``s j``: the crop, the
  stride and the circular wrap are rows of that matrix, so a strided layer never forms its
  stride-1 output;
* complex numbers are pairs of reals, and each step's layout is chosen so that the pair
  axis sits next to the axis being transformed: every step is one GEMM, with no copies
  between layouts except the two permutes at the ends;
* the backward pass is the same chain with transposed matrices (every step is a real
  linear map), plus one batched product per frequency for the kernel spectrum's gradient.

The matrices cost ``O(N²)`` per output position, so this wins on the small grids of
ConvNets (``N`` up to a few dozen) and loses to FFTs on large ones; ``algorithm='auto'``
measures which (:mod:`convnorm.autotune`).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["fourier_conv_norm"]

_Steps = Tuple[Tuple[Tensor, int], ...]


def _angles(freqs: int, positions: Sequence[int], size: int, sign: float) -> Tensor:
    """sign · 2π ω p / N for ω < freqs, reduced mod N in integers first: (freqs, len(p))."""
    omega = torch.arange(freqs, dtype=torch.long)[:, None]
    p = torch.as_tensor(list(positions), dtype=torch.long)[None, :]
    return (sign * 2 * math.pi / size) * torch.remainder(omega * p, size).to(torch.float64)


def _forward_r2c(size: int, grid: int) -> Tensor:
    """Rows (re/im, ω) for ω <= N/2, columns the input positions: (2 F, H)."""
    theta = _angles(grid // 2 + 1, range(size), grid, -1.0)
    return torch.cat([theta.cos(), theta.sin()], dim=0)


def _forward_c2c(size: int, grid: int) -> Tensor:
    """Rows (re/im out, ω), columns (position, re/im in): (2 N, 2 H)."""
    theta = _angles(grid, range(size), grid, -1.0)
    c, s = theta.cos(), theta.sin()
    top = torch.stack([c, -s], dim=-1).reshape(grid, 2 * size)  # re = Dr·re - Di·im
    bottom = torch.stack([s, c], dim=-1).reshape(grid, 2 * size)  # im = Di·re + Dr·im
    return torch.cat([top, bottom], dim=0)


def _inverse_c2c(positions: Sequence[int], grid: int) -> Tensor:
    """Rows (output position, re/im out), columns (re/im in, ω): (2 H_out, 2 N), with 1/N."""
    theta = _angles(grid, positions, grid, 1.0).T  # (H_out, N)
    c, s = theta.cos() / grid, theta.sin() / grid
    re = torch.cat([c, -s], dim=1)
    im = torch.cat([s, c], dim=1)
    return torch.stack([re, im], dim=1).reshape(2 * len(positions), 2 * grid)


def _inverse_c2r(positions: Sequence[int], grid: int) -> Tensor:
    """Rows the output positions, columns (re/im, ω ≤ N/2): (H_out, 2 F).

    A real signal's spectrum is Hermitian, so the terms ω and N - ω sum to twice the real
    part: every one-sided frequency but 0 (and N/2 for even N) counts twice.
    """
    freqs = grid // 2 + 1
    weight = torch.full((freqs,), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if grid % 2 == 0:
        weight[-1] = 1.0
    theta = _angles(freqs, positions, grid, 1.0).T  # (H_out, F)
    return torch.cat([theta.cos() * weight, -theta.sin() * weight], dim=1) / grid


_MATRIX_CACHE: Dict[tuple, Tuple[_Steps, _Steps]] = {}


def _steps(in_size: Sequence[int], grid: Sequence[int], stride: Sequence[int], out_size: Sequence[int],
           dtype: torch.dtype, device: torch.device) -> Tuple[_Steps, _Steps]:
    """The forward-DFT and inverse-DFT steps: each a (matrix, leading batch count) pair.

    A step maps a tensor viewed as ``(A, K, rest)`` to ``(A, R, rest)`` with the ``(R, K)``
    matrix. Forward: r2c along the last dim, then c2c along the others from last to first;
    the result is laid out ``(2, N_1, ..., F_n, rest)``. Inverse: c2c along the first dims,
    then c2r along the last; the result is ``(H_out_1, ..., H_out_n, rest)``.
    """
    key = (tuple(in_size), tuple(grid), tuple(stride), tuple(out_size), dtype, str(device))
    hit = _MATRIX_CACHE.get(key)
    if hit is not None:
        return hit
    n = len(grid)
    forward: List[Tuple[Tensor, int]] = [(_forward_r2c(in_size[-1], grid[-1]), math.prod(in_size[:-1]))]
    for m in reversed(range(n - 1)):
        forward.append((_forward_c2c(in_size[m], grid[m]), math.prod(in_size[:m])))
    positions = [[(stride[m] * j) % grid[m] for j in range(out_size[m])] for m in range(n)]
    inverse: List[Tuple[Tensor, int]] = []
    for m in range(n - 1):
        inverse.append((_inverse_c2c(positions[m], grid[m]), math.prod(out_size[:m])))
    inverse.append((_inverse_c2r(positions[-1], grid[-1]), math.prod(out_size[:-1])))
    with torch.inference_mode(False):  # a cached constant must serve outside inference mode too
        cast = lambda steps: tuple((mat.to(dtype=dtype, device=device).contiguous(), a) for mat, a in steps)
        value = (cast(forward), cast(inverse))
    if len(_MATRIX_CACHE) > 256:
        _MATRIX_CACHE.clear()
    _MATRIX_CACHE[key] = value
    return value


def _product(mat: Tensor, t: Tensor, lead: int) -> Tensor:
    """``mat @ t`` for ``t`` viewed as ``(lead, K, rest)``: one GEMM when ``lead`` is 1 (a
    batch of one runs about half as fast on CPU BLAS), else a batched one."""
    if lead == 1:
        return torch.mm(mat, t.reshape(mat.shape[1], -1))
    return torch.matmul(mat, t.reshape(lead, mat.shape[1], -1))


def _apply(steps: _Steps, t: Tensor) -> Tensor:
    for mat, lead in steps:
        t = _product(mat, t, lead)
    return t


def _apply_transposed(steps: _Steps, t: Tensor) -> Tensor:
    for mat, lead in reversed(steps):
        t = _product(mat.T, t, lead)
    return t


def _mix_into(y: Tensor, a: Tensor, b: Tensor, *, conj_a: bool = False, conj_b: bool = False) -> None:
    """y = A B per frequency and group, complex as (re, im) pairs, written into ``y``;
    ``conj_a``/``conj_b`` conjugate one factor (the backward's X^H G and G W^H).

    a: (2, G, M, K); b: (2, G, K, N); y: (2, G, M, N).
    """
    sa, sb = (-1 if conj_a else 1), (-1 if conj_b else 1)
    if sa == sb == -1:
        raise ValueError("conjugate one factor at most")
    torch.bmm(a[0], b[0], out=y[0])
    y[0].baddbmm_(a[1], b[1], alpha=-sa * sb)
    # The imaginary part starts from its positive term, so no negation pass is needed.
    if sb == 1:
        torch.bmm(a[0], b[1], out=y[1])
        y[1].baddbmm_(a[1], b[0], alpha=sa)
    else:
        torch.bmm(a[1], b[0], out=y[1])
        y[1].baddbmm_(a[0], b[1], alpha=sb)


#: Bytes of kernel spectrum built at a time: a chunk of frequencies stays in cache between
#: its build and its use, and no buffer reaches the size at which the allocator maps fresh
#: pages on every call.
_CHUNK_BYTES = 4 << 20


def _chunks(n_freq: int, per_freq_bytes: int):
    size = max(1, min(n_freq, _CHUNK_BYTES // max(1, per_freq_bytes)))
    return [(f, min(f + size, n_freq)) for f in range(0, n_freq, size)]


def _columns_first(t: Tensor, n: int) -> Tensor:
    """(B, C, *S) -> (*S, B * C), the layout the DFT products read.

    For a contiguous tensor this is a 2-D transpose, which BLAS reads without a copy; a
    channels-innermost tensor (channels_last) takes one cheap copy of whole channel rows.
    """
    b, c = t.shape[:2]
    if t.is_contiguous():
        return t.reshape(b * c, -1).t().reshape(*t.shape[2:], b * c)
    return t.permute(*range(2, 2 + n), 0, 1).contiguous().reshape(*t.shape[2:], b * c)


def _channels_innermost(t: Tensor, b: int, c: int) -> Tensor:
    """(*S, B * C) -> (B, C, *S) laid out channels innermost (``channels_last`` in 2-D).

    A copy of whole channel rows; a contiguous (B, C, *S) result would need a full 2-D
    transpose, several times slower on a CPU, and the depthwise affine kernel that follows
    runs faster on this layout too.
    """
    spatial = t.shape[:-1]
    n = len(spatial)
    rows = t.reshape(-1, b, c).transpose(0, 1).contiguous()  # (B, prod(S), C)
    return rows.reshape(b, *spatial, c).permute(0, n + 1, *range(1, n + 1))


def _like(t: Tensor, b: int, c: int, contiguous: bool) -> Tensor:
    """(*S, B * C) -> (B, C, *S), contiguous (a 2-D transpose) or channels innermost."""
    if contiguous:
        spatial = t.shape[:-1]
        return t.reshape(-1, b * c).t().contiguous().reshape(b, c, *spatial)
    return _channels_innermost(t, b, c)


def _group_major(t: Tensor, groups: int) -> Tensor:
    """(2, F, B, C) -> (2, F * g, B, C/g): each group's channels as one matrix per frequency."""
    two, f, b, c = t.shape
    if groups == 1:
        return t.reshape(two, f, b, c)
    return t.reshape(two, f, b, groups, c // groups).transpose(2, 3).reshape(two, f * groups, b, c // groups)


def _group_minor(t: Tensor, groups: int, n_freq: int) -> Tensor:
    """Inverse of :func:`_group_major`: (2, F * g, B, C/g) -> (2, F, B, C)."""
    two, fg, b, cg = t.shape
    if groups == 1:
        return t
    return t.reshape(two, n_freq, groups, b, cg).transpose(2, 3).reshape(two, n_freq, b, groups * cg)


class _FourierConvNorm(torch.autograd.Function):
    """S·IDFT(v̂ · Â · DFT(x)) with a hand-written backward (the transposed chain).

    The kernel spectrum comes either materialized (``table`` is None: ``kernel`` is
    ``(2, F g, C_in/g, C_out/g)``) or as the taps-first weight ``(K, g C_in/g C_out/g)``
    with the tap phase table ``(2, F, K)``; then it is built chunk by chunk of frequencies,
    in forward and again in backward, and neither it nor its gradient is ever whole.
    """

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, output_scale, table, groups: int, c_out: int,
                forward_steps: _Steps, inverse_steps: _Steps, out_size: Tuple[int, ...]) -> Tensor:
        b, c_in = x.shape[:2]
        n = x.dim() - 2
        spec = _apply(forward_steps, _columns_first(x, n))  # (2, *F, B, C_in)
        n_freq = spec.numel() // (2 * b * c_in)
        spec = _group_major(spec.reshape(2, n_freq, b, c_in), groups)  # (2, F g, B, C_in/g)
        c_in_g, c_out_g = c_in // groups, c_out // groups
        out = spec.new_empty(2, n_freq * groups, b, c_out_g)
        for f0, f1 in _chunks(n_freq, 2 * groups * c_in_g * c_out_g * spec.element_size()):
            rows = slice(f0 * groups, f1 * groups)
            w = _kernel_chunk(kernel, table, f0, f1, groups, c_in_g, c_out_g)
            _mix_into(out[:, rows], spec[:, rows], w)
            if output_scale is not None:
                out[:, rows].mul_(output_scale[rows])
        out = _group_minor(out, groups, n_freq)
        out = _apply(inverse_steps, out).reshape(*out_size, b * c_out)
        ctx.save_for_backward(spec, kernel, output_scale, table, x)
        ctx.meta = (groups, n_freq, c_out, forward_steps, inverse_steps, tuple(x.shape), out_size,
                    x.is_contiguous())
        return _channels_innermost(out, b, c_out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        spec, kernel, output_scale, table, x = ctx.saved_tensors
        groups, n_freq, c_out, forward_steps, inverse_steps, x_shape, out_size, x_contiguous = ctx.meta
        if torch.is_grad_enabled():
            # A backward that will itself be differentiated (create_graph=True, gradient
            # penalties, Jacobian norms): autograd through a plain-ops twin of the forward.
            wanted = [t for t, need in zip((x, kernel), ctx.needs_input_grad[:2]) if need]
            with torch.enable_grad():
                out = _differentiable_forward(x, kernel, output_scale, table, groups, c_out, forward_steps,
                                              inverse_steps, out_size)
                grads = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
            grad_x = next(grads) if ctx.needs_input_grad[0] else None
            grad_kernel = next(grads) if ctx.needs_input_grad[1] else None
            return grad_x, grad_kernel, None, None, None, None, None, None, None
        n = len(out_size)
        b, c_in = x_shape[:2]
        c_in_g, c_out_g = c_in // groups, c_out // groups
        g = _apply_transposed(inverse_steps, _columns_first(grad, n))  # (2, *F, B, C_out)
        g = _group_major(g.reshape(2, n_freq, b, c_out), groups)  # (2, F g, B, C_out/g)
        want_x, want_kernel = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gx = torch.empty_like(spec) if want_x else None
        grad_kernel = torch.zeros_like(kernel) if want_kernel else None
        for f0, f1 in _chunks(n_freq, 2 * groups * c_in_g * c_out_g * spec.element_size()):
            rows = slice(f0 * groups, f1 * groups)
            gc = g[:, rows]
            if output_scale is not None:
                gc = gc * output_scale[rows]
            if want_kernel:
                # dL/dW = X^H G per frequency (Xᵀ taken as views)
                if table is None:
                    _mix_into(grad_kernel[:, rows], spec[:, rows].transpose(2, 3), gc, conj_a=True)
                else:
                    gw = gc.new_empty(2, gc.shape[1], c_in_g, c_out_g)
                    _mix_into(gw, spec[:, rows].transpose(2, 3), gc, conj_a=True)
                    phases = table[:, f0:f1].reshape(-1, table.shape[-1])  # (2 Fc, K)
                    grad_kernel.addmm_(phases.T, gw.reshape(phases.shape[0], -1))
            if want_x:
                # dL/dX = G W^H per frequency
                w = _kernel_chunk(kernel, table, f0, f1, groups, c_in_g, c_out_g)
                _mix_into(gx[:, rows], gc, w.transpose(2, 3), conj_b=True)
        grad_x = None
        if want_x:
            gx = _apply_transposed(forward_steps, _group_minor(gx, groups, n_freq))
            # In the input's own layout: a gradient in another layout slows every
            # elementwise backward upstream (ReLU, BatchNorm) several times over.
            grad_x = _like(gx.reshape(*x_shape[2:], b * c_in), b, c_in, x_contiguous)
        return grad_x, grad_kernel, None, None, None, None, None, None, None


def _differentiable_forward(x: Tensor, kernel: Tensor, output_scale: Optional[Tensor], table: Optional[Tensor],
                            groups: int, c_out: int, forward_steps: _Steps, inverse_steps: _Steps,
                            out_size: Tuple[int, ...]) -> Tensor:
    """:class:`_FourierConvNorm`'s forward in out-of-place operations autograd can trace twice."""
    b, c_in = x.shape[:2]
    n = x.dim() - 2
    spec = _apply(forward_steps, _columns_first(x, n))
    n_freq = spec.numel() // (2 * b * c_in)
    spec = _group_major(spec.reshape(2, n_freq, b, c_in), groups)
    c_in_g, c_out_g = c_in // groups, c_out // groups
    w = _kernel_chunk(kernel, table, 0, n_freq, groups, c_in_g, c_out_g)
    out = torch.stack([torch.bmm(spec[0], w[0]) - torch.bmm(spec[1], w[1]),
                       torch.bmm(spec[0], w[1]) + torch.bmm(spec[1], w[0])])
    if output_scale is not None:
        out = out * output_scale
    out = _apply(inverse_steps, _group_minor(out, groups, n_freq)).reshape(*out_size, b * c_out)
    return _channels_innermost(out, b, c_out)


def _kernel_chunk(kernel: Tensor, table: Optional[Tensor], f0: int, f1: int, groups: int, c_in_g: int,
                  c_out_g: int) -> Tensor:
    """The kernel spectrum at frequencies [f0, f1): (2, (f1 - f0) g, C_in/g, C_out/g)."""
    if table is None:
        return kernel[:, f0 * groups:f1 * groups]
    phases = table[:, f0:f1].reshape(-1, table.shape[-1])  # (2 Fc, K)
    return (phases @ kernel).reshape(2, (f1 - f0) * groups, c_in_g, c_out_g)


def fourier_conv_norm(x: Tensor, kernel: Tensor, grid: Sequence[int], stride: Sequence[int],
                      out_size: Sequence[int], groups: int, c_out: int, output_scale: Optional[Tensor] = None,
                      tap_phases: Optional[Tensor] = None) -> Tensor:
    """The normalized conv (before affine and bias) by DFT matrices.

    Args:
        x: input ``(B, C_in, *H)``, already padded for reflect/replicate modes; it sits at
            the origin of the grid.
        kernel: without ``tap_phases``, the kernel spectrum ``(2, F * groups, C_in/g,
            C_out/g)``: real and imaginary parts per one-sided frequency (row-major, last
            dim one-sided) and group of the matrix that maps the input spectrum to the
            output spectrum (``functional._spectral_weight``, v̂ folded in, or
            ``functional._kernel_spectrum``). With ``tap_phases``, the conv weight laid out
            taps first, ``(K, groups * C_in/g * C_out/g)``: the spectrum is then built from
            it a chunk of frequencies at a time.
        grid: the normalization grid ``(N_1, ..., N_n)``.
        stride: output ``j`` is grid position ``(s j) mod N`` (the padding shift is in the
            kernel spectrum).
        out_size: ``(H_out_1, ..., H_out_n)``.
        groups: conv groups.
        c_out: output channels.
        output_scale: optional v̂ as ``(F * groups, 1, C_out/g)``, multiplied into the
            output spectrum; treated as a constant (no gradient flows to it).
        tap_phases: optional ``(2, F, K)``: real and imaginary parts of the phase of every
            tap at every frequency (``functional._tap_phases``).

    Returns:
        ``(B, C_out, *out_size)`` in the working dtype of ``kernel``.
    """
    dtype = torch.float64 if kernel.dtype == torch.float64 else torch.float32  # the working dtype
    kernel = kernel.to(dtype)
    steps = _steps(x.shape[2:], grid, stride, out_size, dtype, x.device)
    if output_scale is not None:
        output_scale = output_scale.detach().to(dtype).contiguous()
    if tap_phases is not None:
        tap_phases = tap_phases.to(dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _FourierConvNorm.apply(x.to(dtype), kernel, output_scale, tap_phases, groups, c_out, *steps,
                                      tuple(out_size))
