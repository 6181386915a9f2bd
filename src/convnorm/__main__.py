"""``python -m convnorm``: the library has no command line of its own; say where it lives.

The experiments' command line belongs to the experiments package, which the library never
imports: it is the ``convnorm`` command, or ``python -m convnorm.experiments``.
"""
import sys

print("convnorm is a library; its experiments' command line is `convnorm` "
      "(or `python -m convnorm.experiments`), installed with `pip install 'convnorm[experiments]'`.",
      file=sys.stderr)
sys.exit(2)
