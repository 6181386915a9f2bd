"""``python -m convnorm``: the experiments' command line (see ``convnorm --help``)."""
import sys

from convnorm.experiments.cli import main

sys.exit(main())
