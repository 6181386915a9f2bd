"""ConvNorm1d/2d/3d: thin ``nn.ConvNd`` subclasses over :mod:`convnorm.functional`."""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from convnorm import functional as CF

__all__ = ["ConvNorm1d", "ConvNorm2d", "ConvNorm3d"]

_AFFINE_INITS = ("identity", "random")


class _ConvNormNd:
    """Shared implementation of ConvNorm1d/2d/3d (mixed in before ``nn.ConvNd``).

    The layer computes ``affine(P c) + bias`` where ``c`` is the convolution output
    (without bias) and ``P`` the ConvNorm preconditioner of ``docs/math.md``.
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
        bias: bool = False,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        affine: bool = True,
        affine_init: str = "identity",
        eps: float = 1e-5,
        preconditioner_grad: bool = False,
        track_running_spectrum: bool = False,
        momentum: Optional[float] = None,
        algorithm: str = "auto",
    ) -> None:
        if padding_mode not in CF.PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {CF.PADDING_MODES}, got {padding_mode!r}")
        if affine_init not in _AFFINE_INITS:
            raise ValueError(f"affine_init must be one of {_AFFINE_INITS}, got {affine_init!r}")
        if algorithm not in CF.ALGORITHMS:
            raise ValueError(f"algorithm must be one of {CF.ALGORITHMS}, got {algorithm!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be None or in [0, 1], got {momentum}")
        factory = {"device": device, "dtype": dtype}
        self.affine = affine
        self.affine_init = affine_init
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, **factory,
        )
        self.eps = eps
        self.preconditioner_grad = preconditioner_grad
        self.track_running_spectrum = track_running_spectrum
        self.momentum = momentum
        self.algorithm = algorithm
        if affine:
            self.affine_weight = nn.Parameter(torch.empty(out_channels, 1, *self.kernel_size, **factory))
            self.affine_bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("affine_weight", None)
            self.register_parameter("affine_bias", None)
        if track_running_spectrum:
            n = len(self.kernel_size)
            self.register_buffer("running_spectrum", torch.empty(0, device=device, dtype=self._buffer_dtype(dtype)))
            self.register_buffer("running_grid", torch.zeros(n, dtype=torch.long, device=device))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_spectrum", None)
            self.register_buffer("running_grid", None)
            self.register_buffer("num_batches_tracked", None)
        self._spectrum_cache = CF.SpectrumCache()
        self._warned_running_grid = False
        self.reset_affine_parameters()

    @staticmethod
    def _buffer_dtype(dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

    # -- parameters ---------------------------------------------------------------------
    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.reset_affine_parameters()
        self.reset_running_spectrum()

    def reset_affine_parameters(self) -> None:
        """Identity kernel and zero bias, or PyTorch's default conv init (``affine_init``)."""
        if getattr(self, "affine_weight", None) is None:
            return
        with torch.no_grad():
            if self.affine_init == "identity":
                self.affine_weight.zero_()
                # 'same' padding puts (k - 1) // 2 zeros on the left: that tap is the centre.
                centre = (slice(None), 0) + tuple((k - 1) // 2 for k in self.kernel_size)
                self.affine_weight[centre] = 1.0
                self.affine_bias.zero_()
            else:
                nn.init.kaiming_uniform_(self.affine_weight, a=math.sqrt(5))
                bound = 1.0 / math.sqrt(math.prod(self.kernel_size))
                nn.init.uniform_(self.affine_bias, -bound, bound)

    def reset_running_spectrum(self) -> None:
        if getattr(self, "running_spectrum", None) is None:
            return
        self.running_spectrum = self.running_spectrum.new_empty(0)
        self.running_grid.zero_()
        self.num_batches_tracked.zero_()
        self._warned_running_grid = False

    # -- forward ------------------------------------------------------------------------
    def forward(self, input: Tensor) -> Tensor:
        spectrum = self._running_spectrum_for(input) if self.track_running_spectrum else None
        return CF.conv_norm(
            input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
            padding_mode=self.padding_mode, eps=self.eps, spectrum=spectrum,
            preconditioner_grad=self.preconditioner_grad, affine_weight=self.affine_weight,
            affine_bias=self.affine_bias, algorithm=self.algorithm, cache=self._spectrum_cache,
        )

    def _running_spectrum_for(self, input: Tensor) -> Optional[Tensor]:
        """The paper's running average of v̂: in training, v̂ of the current weights (folded
        into the average); at eval the average, on its own grid only (``None`` otherwise:
        the current weights' v̂, with a warning once)."""
        n = len(self.kernel_size)
        if not isinstance(input, Tensor) or input.dim() not in (n + 1, n + 2):
            return None  # conv_norm names the problem
        size = tuple(input.shape[-n:])
        grid_size = CF.spectrum_grid_size(size, self.kernel_size, padding=self.padding, dilation=self.dilation,
                                          padding_mode=self.padding_mode)
        grid = torch.tensor(grid_size, dtype=torch.long)
        if self.training:
            with_grad = self.preconditioner_grad and torch.is_grad_enabled()
            weight = self.weight if with_grad else self.weight.detach()
            current = CF.preconditioner_spectrum(weight, grid_size, dilation=self.dilation, eps=self.eps, onesided=True)
            self._update_running_spectrum(current.detach(), grid)
            return current
        if self.running_spectrum.numel() and torch.equal(self.running_grid.cpu(), grid):
            return self.running_spectrum
        if not self._warned_running_grid:
            self._warned_running_grid = True
            warnings.warn(
                f"{type(self).__name__}: the running spectrum was tracked on the grid "
                f"{tuple(self.running_grid.tolist())}, this input needs {grid_size}; using "
                "the spectrum of the current weights instead",
                stacklevel=3,
            )
        return None

    def clear_spectrum_cache(self) -> None:
        """Forget cached spectra (needed only after writing the weight through ``.data``)."""
        self._spectrum_cache.clear()

    @torch.no_grad()
    def _update_running_spectrum(self, current: Tensor, grid: Tensor) -> None:
        current = current.to(self.running_spectrum.dtype)
        same_grid = self.running_spectrum.shape == current.shape and torch.equal(self.running_grid.cpu(), grid)
        if not same_grid:
            if self.running_spectrum.numel():
                warnings.warn(
                    f"{type(self).__name__}: training input grid changed from "
                    f"{tuple(self.running_grid.tolist())} to {tuple(grid.tolist())}; the running "
                    "spectrum restarts on the new grid",
                    stacklevel=4,
                )
            self.running_spectrum = current.clone()
            self.running_grid.copy_(grid)
            self.num_batches_tracked.zero_()
        self.num_batches_tracked += 1
        if self.momentum is None:
            factor = CF.running_average_factor(int(self.num_batches_tracked))
        else:
            factor = self.momentum
        self.running_spectrum.mul_(1.0 - factor).add_(current, alpha=factor)

    # -- state --------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "running_spectrum"
        if self.running_spectrum is not None and key in state_dict:
            # The buffer's shape is the training grid's: adopt the saved one.
            loaded = state_dict[key]
            if loaded.shape != self.running_spectrum.shape:
                self.running_spectrum = self.running_spectrum.new_empty(loaded.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._spectrum_cache = CF.SpectrumCache()

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_spectrum_cache"] = CF.SpectrumCache()
        return state

    def _apply(self, fn, *args, **kwargs):
        self._spectrum_cache = CF.SpectrumCache()
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.bias is None and "bias=False" not in s:
            s += ", bias=False"
        s += f", affine={self.affine}"
        if self.affine and self.affine_init != "identity":
            s += f", affine_init={self.affine_init!r}"
        s += f", eps={self.eps}"
        if self.preconditioner_grad:
            s += ", preconditioner_grad=True"
        if self.track_running_spectrum:
            s += f", track_running_spectrum=True, momentum={self.momentum}"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm!r}"
        return s


class ConvNorm1d(_ConvNormNd, nn.Conv1d):
    r"""1D convolution followed by Convolutional Normalization.

    Computes ``affine(P c) + bias`` where ``c = conv1d(input, weight)`` (no bias) and
    ``P`` makes each output channel's linear map a tight frame: on the conv's full output
    grid (length ``N``) ``P_i`` multiplies the DFT of channel ``i`` by
    ``v̂_i = (Σ_j |â_ij|² + eps)^(-1/2)``. See ``docs/math.md``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode, device, dtype: as for :class:`torch.nn.Conv1d` (``bias`` defaults to
            ``False``; when ``True`` it is added after normalization).
        affine: learn a per-channel kernel (same size as the conv kernel) and bias, applied
            to the normalized output as a depthwise correlation with 'same' zero padding.
        affine_init: ``'identity'`` (default: a new layer computes the pure normalization)
            or ``'random'`` (PyTorch's default conv init, as in the paper's code).
        eps: added to ``Σ_j |â_ij|²``.
        preconditioner_grad: let the gradient flow through v̂ into the weight.
        track_running_spectrum: keep the paper's running average of v̂ during training and
            use it at eval (on the training grid only; another input size at eval uses the
            current weights' v̂ and warns once).
        momentum: EMA factor for the running average; ``None`` uses the paper's cosine
            ramp-down from 1 to 0.01 over 40,000 steps.
        algorithm: ``'auto'``, ``'spatial'`` or ``'fourier'``: two exact ways to compute
            the same operator (see :func:`convnorm.functional.conv_norm`).

    Shape:
        - Input: ``(B, C_in, L)`` or ``(C_in, L)``.
        - Output: ``(B, C_out, L_out)`` or ``(C_out, L_out)``, ``L_out`` as for ``Conv1d``.
    """


class ConvNorm2d(_ConvNormNd, nn.Conv2d):
    r"""2D convolution followed by Convolutional Normalization.

    The 2D case of :class:`ConvNorm1d`; the preconditioner acts on the 2D DFT of each output
    channel on the conv's full output grid ``(H + d_h (k_h - 1)) x (W + d_w (k_w - 1))``
    (the input grid itself for ``padding_mode='circular'``).

    Shape:
        - Input: ``(B, C_in, H, W)`` or ``(C_in, H, W)``.
        - Output: ``(B, C_out, H_out, W_out)`` or ``(C_out, H_out, W_out)``, as for ``Conv2d``.
    """


class ConvNorm3d(_ConvNormNd, nn.Conv3d):
    r"""3D convolution followed by Convolutional Normalization.

    The 3D case of :class:`ConvNorm1d` (3D DFT over depth, height and width).

    Shape:
        - Input: ``(B, C_in, D, H, W)`` or ``(C_in, D, H, W)``.
        - Output: ``(B, C_out, D_out, H_out, W_out)`` or unbatched, as for ``Conv3d``.
    """
