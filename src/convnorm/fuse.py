"""Inference fusion: fold each BatchNorm that follows a ConvNorm layer into that layer.

In eval a ConvNorm layer and the BatchNorm after it are both fixed linear maps per output
channel. With ``s = γ / sqrt(running_var + eps)``:

    BN(affine(P c) + b) = (s · affine)(P c) + s · b + (β - s · running_mean)

so the BatchNorm becomes a scale of the affine kernel and one bias, and the block costs
the ConvNorm layer alone (for ``algorithm='fourier'``: one chain of DFT products with a
cached per-frequency weight, then the depthwise affine kernel). The affine kernel itself
stays a spatial depthwise correlation: its zero padding acts at the border of the output,
which is not a multiplier on the spectrum of the layer's grid, so folding it into the
spectrum would change the operator at the border.
"""
from __future__ import annotations

import warnings
from typing import List, Tuple

import torch
from torch import nn

from convnorm.modules import _ConvNormNd

__all__ = ["fuse_for_inference"]

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _Tracer(torch.fx.Tracer):
    """Keeps ConvNorm layers as single calls, as torch.fx does for ``torch.nn`` layers."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _ConvNormNd) or super().is_leaf_module(m, qualname)


def _traced_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """(ConvNorm name, BatchNorm name) where the BatchNorm is the ConvNorm's only consumer."""
    graph = _Tracer().trace(model)
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if not isinstance(source, torch.fx.Node) or source.op != "call_module" or len(source.users) != 1:
            continue
        conv, bn = model.get_submodule(source.target), model.get_submodule(node.target)
        if isinstance(conv, _ConvNormNd) and type(bn) in _BATCHNORMS and calls[source.target] == calls[node.target] == 1:
            pairs.append((source.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """The same pairs where they are neighbours in an ``nn.Sequential`` (no tracing needed)."""
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (a, first), (b, second) in zip(children, children[1:]):
                if isinstance(first, _ConvNormNd) and type(second) in _BATCHNORMS:
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


@torch.no_grad()
def _fold(conv: _ConvNormNd, bn: nn.Module) -> None:
    dtype = conv.weight.dtype
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = -bn.running_mean.to(dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    bias = torch.zeros_like(scale)
    for b in (conv.bias, conv.affine_bias):
        if b is not None:
            bias = bias + b
    n = len(conv.kernel_size)
    if conv.affine_weight is not None:
        affine = conv.affine_weight * scale.reshape((-1,) + (1,) * (n + 1))
    else:
        # A single-tap affine kernel: a per-channel scale (applied as a broadcast multiply).
        affine = scale.reshape((-1,) + (1,) * (n + 1))
        conv.affine = True
    conv.affine_weight = nn.Parameter(affine, requires_grad=False)
    conv.affine_bias = nn.Parameter(scale * bias + shift, requires_grad=False)
    conv.bias = None


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a ConvNorm layer into it (in place).

    The pairs are found by tracing the model with ``torch.fx`` (a BatchNorm whose only input
    is a ConvNorm layer's output, which nothing else reads); a model that cannot be traced
    falls back, with a warning, to pairs that are neighbours in an ``nn.Sequential``. Each
    fused BatchNorm becomes ``nn.Identity``. The result computes the same function as the
    model in eval mode (tested in float64) and is meant for inference only: the fused
    parameters no longer train like the originals. ``copy.deepcopy`` first to keep the
    original.

    Works for every ConvNorm configuration, including a tracked running spectrum (the
    ``convnorm-paper`` block), which eval keeps using.

    Args:
        model: a model in eval mode (``model.eval()``).

    Returns:
        the model, with the pairs fused.

    Raises:
        ValueError: the model, or a BatchNorm to fuse, is in training mode, or a BatchNorm
            has no running statistics.
    """
    if model.training:
        raise ValueError("fuse_for_inference needs a model in eval mode: call model.eval() first")
    try:
        pairs = _traced_pairs(model)
    except Exception as error:  # torch.fx raises many kinds on data-dependent control flow
        warnings.warn(
            f"fuse_for_inference: torch.fx could not trace {type(model).__name__} ({error}); fusing "
            "only ConvNorm -> BatchNorm neighbours inside nn.Sequential",
            stacklevel=2,
        )
        pairs = _sequential_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if bn.training or conv.training:
            raise ValueError(f"fuse_for_inference: {bn_name!r} or {conv_name!r} is in training mode")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"fuse_for_inference: {bn_name!r} tracks no running statistics, so it has "
                             "no fixed eval map to fold")
        _fold(conv, bn)
        _replace(model, bn_name, nn.Identity())
    return model
