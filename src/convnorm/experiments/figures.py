"""Charts written the same way everywhere: headless matplotlib, PNGs without a timestamp.

Every report section and the demo draw through these two functions, so the same records
always give the same bytes.
"""
from __future__ import annotations

import os

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    """Lay out, write ``fig`` as a PNG at ``path`` (folders created, no software/date metadata),
    close it; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    pyplot().close(fig)
    return path
