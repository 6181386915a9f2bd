"""``python -m convnorm.experiments``: the ``convnorm`` command (see ``convnorm --help``)."""
import sys

from convnorm.experiments.cli import main

sys.exit(main())
