"""Argument checks shared by layers, optimisers and augmentation: a wrong type is a TypeError,
a wrong value a ValueError, and nothing is coerced (a bool is not a number, a string not a flag).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np


@contextlib.contextmanager
def owned_by(owner: str):
    """Prefix ``owner`` (the class name) to an argument error raised inside the block."""
    try:
        yield
    except (TypeError, ValueError) as exc:
        cls = TypeError if isinstance(exc, TypeError) else ValueError
        raise cls(f"{owner}: {exc}") from None


def integer(value, name: str, minimum: int = 1) -> int:
    """An int (NumPy's too, never a bool) of at least ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def real(value, name: str, lo: float, hi: float = math.inf, *, lo_open: bool = False,
         hi_open: bool = False, what: str = "a finite number") -> float:
    """A finite int or float from ``lo`` to ``hi`` (``lo_open``/``hi_open``: that end excluded)."""
    if hi == math.inf:
        bound = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        bound = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {what} {bound}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        raise ValueError(f"{name} must be {what} {bound}, got {value!r}")
    return v


def flag(value, name: str) -> bool:
    """True or False only: a string such as "no" or a number is not read as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)
