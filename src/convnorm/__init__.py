"""ConvNorm: Convolutional Normalization (Liu et al., NeurIPS 2021) for PyTorch."""
from convnorm import autotune, functional
from convnorm.convert import convert_convnorm, revert_convnorm
from convnorm.fuse import fuse_for_inference
from convnorm.modules import ConvNorm1d, ConvNorm2d, ConvNorm3d

__all__ = [
    "ConvNorm1d", "ConvNorm2d", "ConvNorm3d", "convert_convnorm", "revert_convnorm", "fuse_for_inference",
    "functional", "autotune",
]
__version__ = "0.1.0"
