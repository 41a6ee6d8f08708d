"""The counter-based hash behind dropout masks (see ``dropout_mask`` in the backend contract).

SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
element i of a mask with key k is the generator's (i + 1)-th output from seed k. Every element
is computed on its own, so a backend makes a mask where its arrays live, in parallel, and every
backend makes the same one.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

#: SplitMix64's increment (2**64 / golden ratio, odd) and its two mixing multipliers
GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB

#: a draw is the top 24 bits of the hash, as float32's ``random()`` has 24 bits
DRAW_BITS = 24


def threshold(p: float) -> int:
    """Keep an element when its draw (0 .. 2**24 - 1) is at least this: a share 1 - p."""
    return math.ceil(p * (1 << DRAW_BITS))


def check_mask_args(shape, p, key) -> tuple[tuple, int, int]:
    """Validate ``dropout_mask``'s arguments; returns (shape, threshold, key)."""
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must not have negative sizes, got {shape}")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
    if isinstance(key, bool) or not isinstance(key, (numbers.Integral, np.integer)) \
            or not 0 <= int(key) < 1 << 64:
        raise ValueError(f"key must be an integer in [0, 2**64), got {key!r}")
    return shape, threshold(float(p)), int(key)
