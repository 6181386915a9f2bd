"""What every record carries: the code version, library versions and the machine."""
from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
import uuid
from typing import Dict

import torch


#: Top-level folders whose edits do not change what runs: the records (a study's workers
#: rewrite their running records all the time) and the prose.
NOT_CODE = ("results", "docs")


def git_commit() -> str:
    """The current commit, with ``-dirty`` when tracked files outside :data:`NOT_CODE` have
    uncommitted changes."""
    here = os.path.dirname(os.path.abspath(__file__))
    pathspec = [":(top)"] + [f":(top,exclude){folder}" for folder in NOT_CODE]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *pathspec], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@functools.lru_cache(maxsize=None)
def running_commit() -> str:
    """:func:`git_commit` as it was the first time this process asked: the commit of the code
    the process loaded. A worker that trains run after run for hours keeps naming the code it
    runs, even when the checkout moves on under it; the CLI asks once at start-up."""
    return git_commit()


@functools.lru_cache(maxsize=None)
def process_id() -> str:
    """A random token for this process, so a resumed run can tell its own earlier records
    (a notebook that stops and resumes a run) from those of the processes before it."""
    return uuid.uuid4().hex[:12]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def versions() -> Dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import numpy as np

        out["numpy"] = np.__version__
    except ImportError:
        pass
    from convnorm import __version__

    out["convnorm"] = __version__
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    return out


def provenance(device: torch.device) -> Dict[str, object]:
    return {
        "git_commit": running_commit(),
        "process": process_id(),
        "versions": versions(),
        "device": device_name(device),
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
