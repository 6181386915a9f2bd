"""Progress of long loops: a tqdm bar on a terminal, nothing otherwise (logs keep their lines)."""
from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(total: int, description: str, enabled: bool = True):
    """A tqdm bar over ``total`` steps, drawn only where stderr is a terminal (a log file gets
    the trainers' one-line-per-epoch log instead) and only where ``enabled`` (rank 0)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))
