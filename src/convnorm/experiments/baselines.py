"""Normalization methods ConvNorm is compared against: ONI and the OCNN regularizer.

- ONI, Orthogonalization by Newton's Iteration (Huang et al., "Controllable Orthogonalization
  in Training DNNs", CVPR 2020): the conv weight is re-parametrized as an orthonormal frame
  computed from the raw weight by a few Newton steps towards ``S^(-1/2)``.
- OCNN, Orthogonal Convolutional Neural Networks (Wang et al., CVPR 2020): a loss term
  ``||Conv(K, K, padding=P, stride=S) - I_r0||_F^2`` that pulls the convolution operator
  (not just the reshaped kernel matrix) towards orthogonality.

Spectral normalization, the other baseline, is PyTorch's own
``torch.nn.utils.parametrizations.spectral_norm`` (see :mod:`convnorm.experiments.methods`).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["oni_orthogonalize", "ONIConv2d", "ocnn_weight_penalty", "ocnn_penalty", "ocnn_loss"]


# -- ONI ------------------------------------------------------------------------------------
def oni_orthogonalize(
    weight: Tensor, T: int = 5, groups: int = 1, eps: float = 1e-5, centre: bool = True
) -> Tensor:
    r"""ONI's orthogonalized weight (Huang et al. 2020, algorithm 1), one matrix per group.

    Each group's weight is flattened to ``Z`` of shape ``(n, d)`` with ``n = C_out / groups``
    and ``d = C_in / groups * prod(kernel)``. With ``Zc`` the centred ``Z``::

        wide (n <= d):  S = Zc Zc^T + eps I,  S_n = S / ||S||_F,  B_0 = I,
                        B_{t+1} = 1.5 B_t - 0.5 B_t^3 S_n,        W = B_T Zc / sqrt(||S||_F)
        tall (n > d):   S = Zc^T Zc + eps I,  (same iteration),   W = Zc B_T / sqrt(||S||_F)

    ``B_T -> S_n^(-1/2)``, so ``W W^T -> I`` (rows orthonormal, wide) or ``W^T W -> I``
    (columns orthonormal, tall). An eigenvalue ``λ`` of ``S_n`` becomes the eigenvalue
    ``b_T(λ)^2 λ`` of ``W W^T`` (``W^T W``) with the scalar recursion
    ``b_{t+1} = 1.5 b_t - 0.5 b_t^3 λ``, ``b_0 = 1``: it converges for ``λ`` in ``(0, 1]``,
    slowest for small ``λ`` (ill-conditioned ``Z``), which is why more steps help. ``T`` is
    meant to stay small (ONI "controls" orthogonality through it): this uncoupled Newton
    iteration is not self-correcting when ``S`` is ill-conditioned (a rounding error between
    eigen-directions with eigenvalue ratio ``r`` is multiplied by ``1 - (r + sqrt(r)) / 2``
    per step), so far beyond convergence (``T`` past ~10-15, sooner in float32) errors grow.

    Centring subtracts the mean along the *long* side of ``Z`` (row means when wide, as in
    the paper; column means when tall). Centring removes one direction from that side, and
    only the long side has one to spare: centring rows of a tall ``Z`` (what the public code
    does) leaves ``Zc 1 = 0``, so its columns could never be orthonormal. When ``n == d``
    centring costs the frame one direction: one singular value of ``W`` is ~0 (pass
    ``centre=False`` to get a full orthogonal matrix). The public code's tall variant also
    skips the division of ``S`` by ``||S||_F``, which leaves ``W^T W = I / ||S||_F``; here both
    cases normalize ``S``.

    Args:
        weight: ``(C_out, C_in / groups, *kernel)`` (any number of kernel dims, or none).
        T: Newton iterations (``>= 0``; the paper's default 5, its public baseline used 3).
        groups: the conv's groups; each group's ``(n, d)`` matrix is orthogonalized alone.
        eps: added to the diagonal of ``S`` before normalizing (the public code's ``1e-5``);
            keeps ``S`` positive definite when ``Z`` is rank deficient.
        centre: subtract the mean along the long side of ``Z`` first.

    Returns:
        ``W``, same shape, dtype and device as ``weight``; differentiable in ``weight``.
    """
    if not isinstance(T, int) or T < 0:
        raise ValueError(f"T must be a non-negative int, got {T!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    if groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups must divide C_out={weight.shape[0]}, got groups={groups}")
    z = weight.reshape(groups, weight.shape[0] // groups, -1)  # (g, n, d)
    n, d = z.shape[1], z.shape[2]
    tall = n > d
    if tall:
        z = z.transpose(1, 2)  # the tall case is the wide case of Z^T: (g, d, n)
    if centre:
        z = z - z.mean(dim=-1, keepdim=True)
    s = z @ z.transpose(1, 2)
    eye = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device)
    if eps:
        s = s + eps * eye
    norm_s = torch.linalg.matrix_norm(s, ord="fro", keepdim=True)  # (g, 1, 1)
    s_n = s / norm_s
    b = eye.expand_as(s)
    for _ in range(T):
        b = 1.5 * b - 0.5 * (b @ b @ b) @ s_n
    w = (b @ z) / norm_s.sqrt()
    if tall:
        w = w.transpose(1, 2)
    return w.reshape(weight.shape)


class ONIConv2d(nn.Conv2d):
    r"""``nn.Conv2d`` whose weight is orthogonalized by Newton's iteration (ONI).

    The forward convolves with ``scale * oni_orthogonalize(weight, T, groups)``: per group,
    the rows (``C_out/g <= C_in/g * k_h * k_w``) or columns (otherwise) of the flattened
    weight are (approximately, ``T`` steps) orthonormal, then each output channel is scaled
    by a per-channel factor (``sqrt(2) ≈ 1.414`` at init, as in the public ONI baseline,
    to keep the activation variance through a ReLU).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode, device, dtype: as for :class:`torch.nn.Conv2d`.
        T: Newton iterations (default 5; the ONI paper's public baseline used 3).
        scale_init: initial per-output-channel scale; ``None`` for no scale at all.
        learn_scale: make the scale a parameter (default) or a fixed buffer (the public
            code's default, ``adjustScale=False``).
        eps: see :func:`oni_orthogonalize`.
        centre: see :func:`oni_orthogonalize`.

    Attributes:
        weight: the raw (un-normalized) weight ``(C_out, C_in / groups, k_h, k_w)``.
        scale: ``(C_out, 1, 1, 1)`` parameter or buffer, or ``None``.

    Shape:
        - Input: ``(B, C_in, H, W)`` or ``(C_in, H, W)``.
        - Output: ``(B, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``, as ``Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        T: int = 5,
        scale_init: Optional[float] = 1.414,
        learn_scale: bool = True,
        eps: float = 1e-5,
        centre: bool = True,
    ) -> None:
        if not isinstance(T, int) or T < 0:
            raise ValueError(f"T must be a non-negative int, got {T!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        self.scale_init = scale_init
        self.learn_scale = learn_scale
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self.T = T
        self.eps = eps
        self.centre = centre
        if scale_init is None:
            self.register_parameter("scale", None)
        else:
            scale = torch.empty(out_channels, 1, 1, 1, device=device, dtype=dtype)
            if learn_scale:
                self.scale = nn.Parameter(scale)
            else:
                self.register_buffer("scale", scale)
        self.reset_scale()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.reset_scale()

    def reset_scale(self) -> None:
        """Fill the scale with ``scale_init``."""
        if getattr(self, "scale", None) is not None:
            with torch.no_grad():
                self.scale.fill_(self.scale_init)

    def orthogonalized_weight(self) -> Tensor:
        """The orthonormal frame before the scale: ``(C_out, C_in / groups, k_h, k_w)``."""
        return oni_orthogonalize(self.weight, self.T, self.groups, self.eps, self.centre)

    def normalized_weight(self) -> Tensor:
        """The weight the forward convolves with: scale times the orthogonalized weight."""
        w = self.orthogonalized_weight()
        return w if self.scale is None else w * self.scale

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.normalized_weight(), self.bias)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, **oni_kwargs) -> "ONIConv2d":
        """An ONIConv2d with every option of ``conv``, sharing its weight and bias parameters.

        Sharing (as :func:`convnorm.convert_convnorm` does) keeps device, dtype and
        ``requires_grad``; the raw weight becomes ONI's ``Z``.
        """
        oni = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype, **oni_kwargs,
        )
        oni.weight = conv.weight
        if conv.bias is not None:
            oni.bias = conv.bias
        oni.train(conv.training)
        return oni

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", T={self.T}"
        if self.scale_init is None:
            s += ", scale=None"
        else:
            s += f", scale_init={self.scale_init}" + ("" if self.learn_scale else ", learn_scale=False")
        if self.eps != 1e-5:
            s += f", eps={self.eps}"
        if not self.centre:
            s += ", centre=False"
        return s


# -- OCNN -----------------------------------------------------------------------------------
def _dilate(weight: Tensor, dilation: Tuple[int, int]) -> Tensor:
    """The dense kernel of a dilated conv: ``d - 1`` zeros between taps (same operator)."""
    if dilation == (1, 1):
        return weight
    kh, kw = weight.shape[-2:]
    dh, dw = dilation
    out = weight.new_zeros(*weight.shape[:-2], dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[..., ::dh, ::dw] = weight
    return out


def ocnn_weight_penalty(
    weight: Tensor,
    stride: Union[int, Tuple[int, int]] = 1,
    dilation: Union[int, Tuple[int, int]] = 1,
    groups: int = 1,
) -> Tensor:
    r"""OCNN's orthogonality distance of a 2D conv kernel (Wang et al. 2020, eq. 11).

    ``||Conv(K, K, padding=P, stride=S) - I_r0||_F^2`` with ``P = floor((k - 1) / S) * S``
    per spatial dim: the self-correlation of the kernel at every shift that is a multiple of
    the stride and overlaps the kernel, which should be ``I`` at shift 0 and ``0`` at all
    others for the strided conv operator to have orthonormal rows. The public code's
    ``deconv_orth_dist`` computes the same convolution but returns the unsquared norm; the
    paper's loss (used here) is the squared one.

    For ``C_out > C_in / groups * k_h * k_w / (S_h S_w)`` the rows cannot be orthonormal and
    the paper's lemma says the row and column distances differ by a constant: the gradient
    still pulls towards column orthogonality, but the value stays above 0.

    Args:
        weight: ``(C_out, C_in / groups, k_h, k_w)``.
        stride, dilation: the conv's (a dilated kernel is expanded to its dense form first).
        groups: the conv's groups; only pairs of output channels in the same group interact
            (channels of different groups read disjoint inputs), so other pairs are ignored.

    Returns:
        a scalar tensor, differentiable in ``weight``.
    """
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4D (C_out, C_in/groups, k_h, k_w), got shape {tuple(weight.shape)}")
    c_out, c_in_g = weight.shape[:2]
    if groups < 1 or c_out % groups:
        raise ValueError(f"groups must divide C_out={c_out}, got groups={groups}")
    stride, dilation = _pair(stride), _pair(dilation)
    k = _dilate(weight, dilation)
    padding = tuple(((kd - 1) // s) * s for kd, s in zip(k.shape[-2:], stride))
    n = c_out // groups
    # Input batch j, channel block h holds kernel (h, j) of group h: with groups=g the
    # conv then gives out[j, h * n + i] = K[h, j] ⋆ K[h, i], every in-group pair in one call.
    x = k.reshape(groups, n, c_in_g, *k.shape[-2:]).transpose(0, 1).reshape(n, groups * c_in_g, *k.shape[-2:])
    out = F.conv2d(x, k, stride=stride, padding=padding, groups=groups)  # (n, C_out, r_h, r_w)
    centre = (out.shape[-2] // 2, out.shape[-1] // 2)  # the shift-0 tap: index P / S
    target = torch.zeros_like(out)
    eye = torch.eye(n, dtype=out.dtype, device=out.device).repeat(1, groups)  # (n, C_out): δ_ij in each group
    target[:, :, centre[0], centre[1]] = eye
    return (out - target).pow(2).sum()


def ocnn_penalty(conv: nn.Conv2d) -> Tensor:
    """OCNN's orthogonality distance of ``conv`` (its weight, stride, dilation and groups).

    See :func:`ocnn_weight_penalty`. The conv's padding does not enter: the distance is
    that of the (infinite-grid) convolution operator. Returns a scalar tensor.
    """
    return ocnn_weight_penalty(conv.weight, conv.stride, conv.dilation, conv.groups)


def ocnn_loss(model: nn.Module) -> Tensor:
    """Sum of :func:`ocnn_penalty` over every ``nn.Conv2d`` in ``model`` (1x1 convs too).

    Subclasses of ``nn.Conv2d`` count (their ``weight`` attribute is the kernel they use:
    the normalized one for a parametrized conv). A model without convs gives ``0``.
    """
    total: Optional[Tensor] = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            p = ocnn_penalty(m)
            total = p if total is None else total + p
    if total is None:
        first = next(model.parameters(), None)
        return torch.zeros((), device=None if first is None else first.device)
    return total
