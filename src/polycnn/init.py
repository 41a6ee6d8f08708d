"""Weight initialisation, drawn on the host from a seeded ``numpy.random.Generator``.

Values are drawn in float64 and then cast, so one seed gives the same weights on every backend
and (up to rounding) in every dtype.
"""

from __future__ import annotations

import numpy as np

#: names accepted by the layers' ``init=`` argument
SCHEMES = ("he", "glorot")


def check_scheme(init: str) -> str:
    if init not in SCHEMES:
        raise ValueError(f"init must be one of {', '.join(map(repr, SCHEMES))}, got {init!r}")
    return init


def he_normal(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """He (Kaiming) normal: N(0, 2 / fan_in), for layers followed by a ReLU."""
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


def glorot_uniform(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot (Xavier) uniform: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)


def weights(init: str, rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
    if init == "he":
        return he_normal(rng, shape, fan_in)
    if init == "glorot":
        return glorot_uniform(rng, shape, fan_in, fan_out)
    check_scheme(init)
    raise AssertionError("unreachable")


__all__ = ["SCHEMES", "check_scheme", "he_normal", "glorot_uniform", "weights"]
