"""Timing: engines take turns, a round at a time (A, B, C, A, B, C, ...), so a burst of load
from elsewhere hits every engine alike; each round times enough back-to-back calls to last at
least ``min_round_s``, and the median round counts."""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

#: the clock every op timing reads (a seam for tests)
_now = time.perf_counter


def _calls_for(fn: Callable, sync: Callable, min_round_s: float) -> int:
    """Run ``fn`` twice untimed (JIT compiles, caches warm), then pick how many calls make a
    round last ``min_round_s``."""
    fn()
    sync()
    t0 = _now()
    fn()
    sync()
    one = max(_now() - t0, 1e-7)
    return max(1, min(10_000, math.ceil(min_round_s / one)))


def _time_round(fn: Callable, sync: Callable, calls: int) -> float:
    t0 = _now()
    for _ in range(calls):
        fn()
    sync()
    return (_now() - t0) / calls


def interleaved(fns: dict, syncs: dict, rounds: int, min_round_s: float) -> dict:
    """name -> (median seconds per call, calls per round), timing the callables in turn
    (A, B, C, A, B, C, ...) for ``rounds`` rounds."""
    calls = {name: _calls_for(fn, syncs[name], min_round_s) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            samples[name].append(_time_round(fn, syncs[name], calls[name]))
    return {name: (statistics.median(s), calls[name]) for name, s in samples.items()}


# ---- engines: one per backend, and PyTorch ---------------------------------------------------
