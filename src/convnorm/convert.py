"""Model conversion: plain convolutions to ConvNorm and back."""
from __future__ import annotations

import warnings

from torch import nn

from convnorm.modules import ConvNorm1d, ConvNorm2d, ConvNorm3d, _ConvNormNd

__all__ = ["convert_convnorm", "revert_convnorm"]

_TO_CONVNORM = {nn.Conv1d: ConvNorm1d, nn.Conv2d: ConvNorm2d, nn.Conv3d: ConvNorm3d}
_TO_CONV = {ConvNorm1d: nn.Conv1d, ConvNorm2d: nn.Conv2d, ConvNorm3d: nn.Conv3d}
_BATCHNORM_CHOICES = ("keep", "remove")


def _copy_conv(source: nn.Module, target_cls, **kwargs) -> nn.Module:
    target = target_cls(
        source.in_channels,
        source.out_channels,
        source.kernel_size,
        stride=source.stride,
        padding=source.padding,
        dilation=source.dilation,
        groups=source.groups,
        bias=source.bias is not None,
        padding_mode=source.padding_mode,
        device=source.weight.device,
        dtype=source.weight.dtype,
        **kwargs,
    )
    target.weight = source.weight
    if source.bias is not None:
        target.bias = source.bias
    target.train(source.training)
    return target


def convert_convnorm(module: nn.Module, batchnorm: str = "keep", **convnorm_kwargs) -> nn.Module:
    """Replace every ``nn.Conv1d/2d/3d`` in ``module`` by the matching ConvNorm layer.

    Works like ``nn.SyncBatchNorm.convert_sync_batchnorm``: children are replaced in place
    and the (possibly new) root is returned. The new layers share the original weight and
    bias parameters (so device, dtype and ``requires_grad`` carry over).

    Only modules whose type is exactly ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` are
    converted: subclasses (parametrized convs, weight-standardized convs, ...) define a
    different operator and are left alone, as are transposed convolutions. A conv that
    ConvNorm cannot take is left as it is, with a warning that names it.

    Args:
        module: any ``nn.Module`` (Sequential, nested, attribute-style).
        batchnorm: ``'keep'`` leaves BatchNorm layers in place (ConvNorm + BN, the paper's
            default); ``'remove'`` replaces every BatchNorm/SyncBatchNorm with ``nn.Identity``.
        **convnorm_kwargs: keyword options for the ConvNorm layers (``affine``, ``eps``,
            ``affine_init``, ``preconditioner_grad``, ``track_running_spectrum``, ``momentum``,
            ``algorithm``).

    Returns:
        the converted module.

    Raises:
        ValueError, TypeError: ``batchnorm`` or an option in ``convnorm_kwargs`` is invalid
            (checked once, before anything is converted).

    Example:
        >>> model = convert_convnorm(torchvision.models.resnet18(), batchnorm="remove")
    """
    if batchnorm not in _BATCHNORM_CHOICES:
        raise ValueError(f"batchnorm must be one of {_BATCHNORM_CHOICES}, got {batchnorm!r}")
    ConvNorm1d(1, 1, 1, **convnorm_kwargs)  # a bad option fails here, not once per conv
    return _convert(module, batchnorm, convnorm_kwargs, "")


def _convert(module: nn.Module, batchnorm: str, convnorm_kwargs, name: str) -> nn.Module:
    output = module
    target_cls = _TO_CONVNORM.get(type(module))
    if target_cls is not None:
        try:
            output = _copy_conv(module, target_cls, **convnorm_kwargs)
        except (ValueError, TypeError, RuntimeError) as error:
            warnings.warn(f"convert_convnorm: left {name or 'the root module'} ({module}) as it is: {error}",
                          stacklevel=3)
    elif batchnorm == "remove" and isinstance(module, nn.modules.batchnorm._BatchNorm):
        output = nn.Identity()
    for child_name, child in module.named_children():
        output.add_module(child_name, _convert(child, batchnorm, convnorm_kwargs,
                                               f"{name}.{child_name}" if name else child_name))
    return output


def revert_convnorm(module: nn.Module) -> nn.Module:
    """Replace every ConvNorm layer in ``module`` by the plain conv with the same weights.

    The inverse of :func:`convert_convnorm` for the conv parameters: the affine kernel and
    running spectrum are dropped, so the result computes the un-normalized convolution.
    """
    output = module
    if isinstance(module, _ConvNormNd):
        output = _copy_conv(module, _TO_CONV[type(module)])
    for name, child in module.named_children():
        output.add_module(name, revert_convnorm(child))
    return output
