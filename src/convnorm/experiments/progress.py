"""Progress of long loops: a tqdm bar on a terminal, nothing otherwise (logs keep their lines)."""
from __future__ import annotations

import sys

__all__ = ["progress_bar"]


def progress_bar(total: int, description: str, enabled: bool = True, initial: int = 0):
    """A tqdm bar over ``total`` steps, drawn only where stderr is a terminal (a log file gets
    the trainers' one-line-per-epoch log instead) and only where ``enabled`` (rank 0);
    ``initial`` steps are done already (a loop resumed part-way)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, unit="step", leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))
