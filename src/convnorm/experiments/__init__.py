"""Experiments on ConvNorm: models, data, training and reports. The library never imports it."""
