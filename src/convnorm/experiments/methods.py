"""One registry of the normalization methods the experiments compare, selected by name.

Every method starts from a model built with plain ``Conv + BatchNorm`` blocks (the models of
:mod:`convnorm.experiments.models`, or any model of standard layers) and converts it:

==============  ===========================================================================
``plain``       convs only: every BatchNorm becomes ``nn.Identity``
``bn``          the model as built (Conv + BN)
``convnorm``    ConvNorm instead of Conv, BatchNorm removed
``convnorm+bn`` ConvNorm followed by BatchNorm, with this project's layer defaults
``convnorm-paper`` the paper's public block exactly (:data:`PAPER_BLOCK`): ConvNorm with no eps,
                a randomly initialized affine kernel and the running average of v̂ used at
                eval, followed by BatchNorm
``sn``          ``torch.nn.utils.parametrizations.spectral_norm`` on every conv, BN kept
``oni``         every ``nn.Conv2d`` replaced by :class:`ONIConv2d` (same weights), BN kept
``ocnn``        the model as built (Conv + BN) plus the OCNN orthogonality loss term
==============  ===========================================================================

Only convolutions (and, where said, BatchNorm) change: linear layers, the classifier
included, are left alone by every method, so that the methods differ in the conv layers
only (ConvNorm has no linear counterpart to compare with).

Conversions work in place, like :func:`convnorm.convert_convnorm` and
``nn.SyncBatchNorm.convert_sync_batchnorm`` (children are replaced, the possibly new root is
returned): ``copy.deepcopy`` the model first to keep the original. They walk the module
tree generically, so they need no layer names. A conv is converted only if its type is
exactly ``nn.Conv2d`` (``nn.Conv1d/3d`` too for ``convnorm``, ``convnorm+bn`` and ``sn``):
subclasses define other operators and are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from convnorm import convert_convnorm
from convnorm.experiments.baselines import ONIConv2d, ocnn_loss

__all__ = ["METHODS", "PAPER_BLOCK", "Method", "apply_method"]

#: The ConvNorm options that make a ConvNorm layer the paper's public block (``PreConv`` in
#: its ``models/prec_conv.py``, with its defaults; docs/math.md section 4): v̂ without eps and
#: without gradient; during training v̂ of the current weights, folded into a running average
#: whose factor ramps down from 1 to 0.01 over 40,000 forwards; at eval the running average;
#: the depthwise affine kernel with bias at PyTorch's default random init. BatchNorm follows.
PAPER_BLOCK: Dict[str, Any] = dict(affine=True, affine_init="random", eps=0.0, preconditioner_grad=False,
                                   track_running_spectrum=True, momentum=None)

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Method:
    """A model converted to one normalization method.

    Attributes:
        name: the method's name (one of :data:`METHODS`).
        model: the converted model (the input model, changed in place, or a new root).
        regularizer: ``None``, or a function of no arguments returning the scalar loss term
            to add to the task loss at each step (OCNN); it reads the model's current weights.
        options: the method's options as applied (defaults filled in), for records.
    """

    name: str
    model: nn.Module
    regularizer: Optional[Callable[[], Tensor]] = None
    options: Dict[str, Any] = field(default_factory=dict)


def _replace(module: nn.Module, fn: Callable[[nn.Module], Optional[nn.Module]]) -> nn.Module:
    """Replace every module ``m`` (root included) for which ``fn(m)`` is not None, recursively.

    A replaced module's children are not visited (the replacement is final).
    """
    new = fn(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        replaced = _replace(child, fn)
        if replaced is not child:
            module.add_module(name, replaced)
    return module


def _remove_batchnorm(m: nn.Module) -> Optional[nn.Module]:
    return nn.Identity() if isinstance(m, nn.modules.batchnorm._BatchNorm) else None


def _no_options(name: str, options: Dict[str, Any]) -> None:
    if options:
        raise TypeError(f"method {name!r} takes no options, got {sorted(options)}")


def _take(name: str, options: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"method {name!r} got unexpected options {sorted(unknown)}; it accepts {sorted(defaults)}")
    return {**defaults, **options}


def _plain(model: nn.Module, options: Dict[str, Any]) -> Method:
    _no_options("plain", options)
    return Method("plain", _replace(model, _remove_batchnorm))


def _bn(model: nn.Module, options: Dict[str, Any]) -> Method:
    _no_options("bn", options)
    return Method("bn", model)


def _convnorm(name: str, batchnorm: str) -> Callable[[nn.Module, Dict[str, Any]], Method]:
    def convert(model: nn.Module, options: Dict[str, Any]) -> Method:
        return Method(name, convert_convnorm(model, batchnorm=batchnorm, **options), options=options)
    return convert


def _convnorm_paper(model: nn.Module, options: Dict[str, Any]) -> Method:
    _no_options("convnorm-paper", options)
    options = dict(PAPER_BLOCK)
    return Method("convnorm-paper", convert_convnorm(model, batchnorm="keep", **options), options=options)


def _sn(model: nn.Module, options: Dict[str, Any]) -> Method:
    options = _take("sn", options, {"n_power_iterations": 1, "eps": 1e-12})

    def to_sn(m: nn.Module) -> Optional[nn.Module]:
        if type(m) in _CONVS and not parametrize.is_parametrized(m, "weight"):
            return spectral_norm(m, "weight", options["n_power_iterations"], options["eps"])
        return None

    return Method("sn", _replace(model, to_sn), options=options)


def _oni(model: nn.Module, options: Dict[str, Any]) -> Method:
    options = _take("oni", options, {"T": 5, "scale_init": 1.414, "learn_scale": True, "eps": 1e-5, "centre": True})
    converted = _replace(model, lambda m: ONIConv2d.from_conv2d(m, **options) if type(m) is nn.Conv2d else None)
    return Method("oni", converted, options=options)


def _ocnn(model: nn.Module, options: Dict[str, Any]) -> Method:
    options = _take("ocnn", options, {"weight": 1.0})
    weight = float(options["weight"])

    def regularizer() -> Tensor:
        return weight * ocnn_loss(model)

    return Method("ocnn", model, regularizer=regularizer, options=options)


#: method name -> the function that converts a model to it (model, options) -> Method.
_CONVERTERS: Dict[str, Callable[[nn.Module, Dict[str, Any]], Method]] = {
    "plain": _plain,
    "bn": _bn,
    "convnorm": _convnorm("convnorm", "remove"),
    "convnorm+bn": _convnorm("convnorm+bn", "keep"),
    "convnorm-paper": _convnorm_paper,
    "sn": _sn,
    "oni": _oni,
    "ocnn": _ocnn,
}
METHODS = tuple(_CONVERTERS)


def apply_method(model: nn.Module, method: str, **options) -> Method:
    """Convert ``model`` (built with Conv + BN) to the normalization ``method``.

    Args:
        model: any ``nn.Module`` built from standard layers; changed in place.
        method: one of :data:`METHODS`.
        **options: per method:

            - ``plain``, ``bn``: none.
            - ``convnorm``, ``convnorm+bn``: keyword options of the ConvNorm layers
              (``affine``, ``affine_init``, ``eps``, ``preconditioner_grad``, ...), passed to
              :func:`convnorm.convert_convnorm`.
            - ``convnorm-paper``: none (it is :data:`PAPER_BLOCK` exactly).
            - ``sn``: ``n_power_iterations=1``, ``eps=1e-12`` (of ``spectral_norm``). It
              divides the weight reshaped to ``(C_out, C_in / groups * k_h * k_w)`` by that
              matrix's largest singular value (Miyato et al.), not by the conv operator norm.
            - ``oni``: ``T=5``, ``scale_init=1.414``, ``learn_scale=True``, ``eps=1e-5``,
              ``centre=True`` (see :class:`ONIConv2d`).
            - ``ocnn``: ``weight=1.0``: the regularizer returns ``weight`` times
              :func:`~convnorm.experiments.baselines.ocnn_loss` of the model (the OCNN public
              code used 0.1 times the unsquared distance).

    Returns:
        a :class:`Method` with the converted model and, for ``ocnn``, its regularizer.

    Raises:
        ValueError: unknown ``method``.
        TypeError: an option the method does not take.
    """
    if method not in _CONVERTERS:
        raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(METHODS)}")
    return _CONVERTERS[method](model, dict(options))
