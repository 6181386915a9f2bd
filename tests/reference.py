"""Independent float64 reference: ConvNorm as a product of explicit dense matrices.

Built from the definitions in DESIGN/docs (not from the library): shift matrices for the
convolution, explicit DFT matrices for the preconditioner, selection matrices for the crop
and stride. Numpy only.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np


def as_tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


def side_padding(padding, kernel, dilation):
    n = len(kernel)
    if padding == "valid":
        return [(0, 0)] * n
    if padding == "same":
        out = []
        for k, d in zip(kernel, dilation):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return out
    return [(p, p) for p in as_tuple(padding, n)]


def kron_all(mats: Sequence[np.ndarray]) -> np.ndarray:
    out = np.ones((1, 1))
    for m in mats:
        out = np.kron(out, m)
    return out


def dft_matrix(n: int) -> np.ndarray:
    q = np.arange(n)
    return np.exp(-2j * np.pi * np.outer(q, q) / n)


@dataclass
class DenseConvNorm:
    """All the matrices of one ConvNorm layer for one input size (single image)."""

    A: np.ndarray  # (C_out, C_in, prod(grid), prod(H)) conv onto the normalization grid
    P: np.ndarray  # (C_out, prod(grid), prod(grid)) preconditioner per output channel
    S: np.ndarray  # (prod(out), prod(grid)) crop + stride
    R: np.ndarray  # (C_out, prod(out), prod(out)) affine depthwise operator
    grid: Tuple[int, ...]
    out_size: Tuple[int, ...]
    in_size: Tuple[int, ...]  # size after reflect/replicate pre-padding
    prepad: List[Tuple[int, int]]
    spectrum: np.ndarray  # (C_out, *grid) full v̂

    def channel_operator(self, i: int) -> np.ndarray:
        """Q_i = S P_i [A_i1 ... A_iC]: (prod(out), C_in * prod(H))."""
        return self.S @ self.P[i] @ np.concatenate(list(self.A[i]), axis=1)


def build(
    weight: np.ndarray,
    in_size: Sequence[int],
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    eps=1e-5,
    affine_weight=None,
    normalize=True,
) -> DenseConvNorm:
    weight = np.asarray(weight, dtype=np.float64)
    c_out, cpg_in = weight.shape[:2]
    kernel = weight.shape[2:]
    n = len(kernel)
    stride, dilation = as_tuple(stride, n), as_tuple(dilation, n)
    pads = side_padding(padding, kernel, dilation)
    size = list(in_size)
    prepad = [(0, 0)] * n
    if padding_mode in ("reflect", "replicate"):
        prepad = pads
        size = [h + pl + pr for h, (pl, pr) in zip(size, pads)]
        pads = [(0, 0)] * n
    span = [d * (k - 1) for k, d in zip(kernel, dilation)]
    out_size = [(h + pl + pr - s_ - 1) // st + 1 for h, (pl, pr), s_, st in zip(size, pads, span, stride)]

    # Per dim: grid size, and the 1D tap-shift matrices T[t] (grid x H) and selection S.
    grid, shifts, selects = [], [], []
    for m in range(n):
        h, (pl, pr), k, d = size[m], pads[m], kernel[m], dilation[m]
        if padding_mode == "circular":
            N = h
            T = []
            for t in range(k):
                M = np.zeros((N, h))
                for q in range(N):
                    M[q, (q + d * t - pl) % h] = 1.0
                T.append(M)
            Sm = np.zeros((out_size[m], N))
            for j in range(out_size[m]):
                Sm[j, (j * stride[m]) % h] = 1.0
        else:
            PL, PR = max(pl, span[m]), max(pr, span[m])
            N = h + PL + PR - span[m]
            T = []
            for t in range(k):
                M = np.zeros((N, h))
                for q in range(N):
                    src = q + d * t - PL
                    if 0 <= src < h:
                        M[q, src] = 1.0
                T.append(M)
            Sm = np.zeros((out_size[m], N))
            for j in range(out_size[m]):
                Sm[j, PL - pl + j * stride[m]] = 1.0
        grid.append(N)
        shifts.append(T)
        selects.append(Sm)

    G, H = int(np.prod(grid)), int(np.prod(size))
    c_in = cpg_in * groups
    cpg_out = c_out // groups
    A = np.zeros((c_out, c_in, G, H))
    taps = list(itertools.product(*[range(k) for k in kernel]))
    tap_mats = {t: kron_all([shifts[m][t[m]] for m in range(n)]) for t in taps}
    for i in range(c_out):
        g = i // cpg_out
        for jj in range(cpg_in):
            j = g * cpg_in + jj
            for t in taps:
                A[i, j] += weight[(i, jj) + t] * tap_mats[t]

    # v̂_i(ω) = (Σ_j |â_ij(ω)|² + eps)^(-1/2), â by its defining sum over taps.
    omegas = np.array(list(itertools.product(*[range(N) for N in grid])))  # (G, n)
    spectrum = np.zeros((c_out, G))
    for i in range(c_out):
        power = np.zeros(G)
        for jj in range(cpg_in):
            ahat = np.zeros(G, dtype=complex)
            for t in taps:
                phase = sum(omegas[:, m] * dilation[m] * t[m] / grid[m] for m in range(n))
                ahat += weight[(i, jj) + t] * np.exp(-2j * np.pi * phase)
            power += np.abs(ahat) ** 2
        spectrum[i] = (power + eps) ** -0.5
    F = kron_all([dft_matrix(N) for N in grid])
    P = np.zeros((c_out, G, G))
    for i in range(c_out):
        if normalize:
            Pi = (F.conj().T @ np.diag(spectrum[i]) @ F) / G
            assert np.abs(Pi.imag).max() < 1e-9 * max(1.0, np.abs(Pi.real).max())
            P[i] = Pi.real
        else:
            P[i] = np.eye(G)

    S = kron_all(selects)
    O = int(np.prod(out_size))
    R = np.zeros((c_out, O, O))
    for i in range(c_out):
        if affine_weight is None:
            R[i] = np.eye(O)
            continue
        r = np.asarray(affine_weight, dtype=np.float64)[i, 0]
        for t in taps:
            mats = []
            for m in range(n):
                left = (kernel[m] - 1) // 2
                M = np.zeros((out_size[m], out_size[m]))
                for q in range(out_size[m]):
                    src = q + t[m] - left
                    if 0 <= src < out_size[m]:
                        M[q, src] = 1.0
                mats.append(M)
            R[i] += r[t] * kron_all(mats)
    return DenseConvNorm(
        A=A, P=P, S=S, R=R, grid=tuple(grid), out_size=tuple(out_size), in_size=tuple(size),
        prepad=list(prepad), spectrum=spectrum.reshape((c_out, *grid)),
    )


def prepad_input(x: np.ndarray, prepad, padding_mode) -> np.ndarray:
    if padding_mode not in ("reflect", "replicate"):
        return x
    mode = {"reflect": "reflect", "replicate": "edge"}[padding_mode]
    return np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in prepad], mode=mode)


def apply(dense: DenseConvNorm, x: np.ndarray, padding_mode="zeros", bias=None, affine_bias=None) -> np.ndarray:
    """y = R S P A x + affine_bias + bias for a batch x of shape (B, C_in, *H)."""
    x = prepad_input(np.asarray(x, dtype=np.float64), dense.prepad, padding_mode)
    B, c_in = x.shape[:2]
    c_out = dense.A.shape[0]
    xf = x.reshape(B, c_in, -1)
    y = np.zeros((B, c_out, int(np.prod(dense.out_size))))
    for i in range(c_out):
        c = np.einsum("jgh,bjh->bg", dense.A[i], xf)
        y[:, i] = (dense.R[i] @ dense.S @ dense.P[i] @ c.T).T
        if bias is not None:
            y[:, i] += bias[i]
        if affine_bias is not None:
            y[:, i] += affine_bias[i]
    return y.reshape((B, c_out, *dense.out_size))
