"""``algorithm='auto'``: pick the faster exact path per layer shape by timing it once.

Like ``torch.backends.cudnn.benchmark``: the first forward of a ConvNorm layer with a new
configuration (input shape, weight shape, geometry, dtype, device, thread count, and
whether a backward pass follows) times every exact path on that input, keeps the fastest,
and reuses the choice from then on. Both paths compute the same operator (see
``docs/performance.md``); they differ in float rounding only.

The timing is skipped, and the fixed :data:`DEFAULT` path used, when

* the choice is turned off (:func:`set_enabled` ``(False)``);
* ``torch.use_deterministic_algorithms(True)`` is in force, so that a run does not depend
  on what the machine happened to measure;
* the forward is being traced by ``torch.compile`` (a choice made earlier is still used).

A layer constructed with ``algorithm='spatial'`` or ``'fourier'`` is pinned and never timed.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Hashable, Mapping, Sequence

import torch

__all__ = ["DEFAULT", "choose", "choices", "clear_cache", "is_compiling", "is_enabled", "measurements", "set_enabled", "set_choice"]

#: The path used when no measurement is made: the one that applies to every geometry.
DEFAULT = "spatial"

_REPEATS = 3
_enabled = True
_choices: Dict[Hashable, str] = {}
_measurements: Dict[Hashable, Dict[str, float]] = {}


def set_enabled(enabled: bool) -> None:
    """Turn timing on (the default) or off; off, ``'auto'`` means :data:`DEFAULT`."""
    global _enabled
    _enabled = bool(enabled)


def is_enabled() -> bool:
    """Whether ``'auto'`` times the paths (off under deterministic algorithms)."""
    return _enabled and not torch.are_deterministic_algorithms_enabled()


def clear_cache() -> None:
    """Forget every choice made (for example after changing the thread count by hand)."""
    _choices.clear()
    _measurements.clear()


def choices() -> Dict[Hashable, str]:
    """A copy of the choices made so far: configuration key -> path name."""
    return dict(_choices)


def measurements() -> Dict[Hashable, Dict[str, float]]:
    """The timings behind the choices measured so far: key -> {path: median seconds}."""
    return {key: dict(times) for key, times in _measurements.items()}


def set_choice(key: Hashable, algorithm: str) -> None:
    """Record a choice for ``key`` without timing (for example one loaded from a file)."""
    _choices[key] = algorithm


def is_compiling() -> bool:
    """Whether ``torch.compile`` is tracing: nothing is timed, nor cached, then."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # torch < 2.3


def _time_once(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def choose(key: Hashable, names: Sequence[str], candidates: Callable[[], Mapping[str, Callable[[], None]]],
           device: torch.device) -> str:
    """The path for configuration ``key``: cached, measured now, or :data:`DEFAULT`.

    Args:
        key: everything the speed depends on (hashable).
        names: the paths that apply.
        candidates: called only when a measurement is made: path name -> a function
            running that path once on the layer's real input (forward, and backward when
            training), with no effect on the model.
        device: where the candidates run (CUDA is synchronized around each run).

    Returns:
        the name of the fastest candidate (median of a few runs after one warm-up).
    """
    hit = _choices.get(key)
    if hit is not None:
        return hit
    if len(names) == 1:
        return names[0]
    if not is_enabled() or is_compiling():
        return DEFAULT if DEFAULT in names else names[0]
    candidates = candidates()
    medians = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for name, run in candidates.items():
            run()  # warm-up: caches, allocator, lazy initialization
            medians[name] = statistics.median(_time_once(run, device) for _ in range(_REPEATS))
    best = min(medians, key=medians.get)
    _choices[key] = best
    _measurements[key] = medians
    return best
