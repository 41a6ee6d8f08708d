"""What the tests share: comparing a backend with the float64 oracle, numerical gradients,
which backends must run here, and whether a CUDA device is present. A real module (the
fixtures in ``tests/conftest.py`` use it too), imported as ``support.oracle``."""

from __future__ import annotations

import collections
import functools
import os

import numpy as np

from polycnn import parity

#: backends that need a CUDA device: their parametrizations are marked ``gpu``
GPU_BACKENDS = {"cupy"}

DTYPES = [np.float32, np.float64]

#: (op, backend name) -> fuzz cases run, printed at the end of the run
FUZZ_CASES: collections.Counter = collections.Counter()


@functools.lru_cache(maxsize=None)
def cuda_device_reason() -> str | None:
    """None when CuPy sees a CUDA device, else why not."""
    try:
        import cupy
    except ImportError as exc:
        return f"CuPy is not installed ({exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # NOTE: CuPy raises its own runtime error types without a driver
        return f"no CUDA device: {type(exc).__name__}: {exc}"
    return None if count > 0 else "no CUDA device (0 devices)"


def required_backends() -> set:
    """Backends whose absence fails the tests instead of skipping them: ``numpy`` and those
    named in ``POLYCNN_REQUIRE_BACKENDS`` (comma-separated; CI names every backend it
    installs, so that a backend broken into "unavailable" cannot pass as skipped)."""
    names = os.environ.get("POLYCNN_REQUIRE_BACKENDS", "")
    return {"numpy"} | {n.strip() for n in names.split(",") if n.strip()}


# ---- comparison helpers ------------------------------------------------------------------

def assert_matches(actual, expected, dtype, where: str, magnitude=None) -> None:
    """A backend result (any array the backend's ``to_numpy`` gave) against a float64
    reference, within ``polycnn.parity.TOLERANCE`` for ``dtype``; the message says where, e.g.
    ``"conv2d backward, dw, backend=numba, dtype=float32, case=..."``. ``magnitude``: see
    ``parity.magnitudes`` (default ``|expected|``)."""
    cmp = parity.compare(actual, expected, dtype, magnitude)
    assert cmp.ok, (
        f"{where}: max abs err {cmp.max_abs_err:.3g}, max rel err {cmp.max_rel_err:.3g}"
        f" (tolerance {cmp.tolerance:.0e}); {cmp.problem}"
    )


def check_case(backend, case: parity.Case, dtype) -> None:
    """Every pass of one case on ``backend`` against the reference."""
    dtype = np.dtype(dtype)
    expected = parity.reference_results(case, dtype)
    mags = parity.magnitudes(case, dtype)
    got = parity.backend_results(backend, case, dtype)
    for name, value in expected.items():
        assert_matches(got[name], value, dtype,
                       f"{case.op} {name}, backend={backend.name}, dtype={dtype.name},"
                       f" case={case.describe()}", mags[name])


def numeric_directional_derivative(f, x: np.ndarray, direction: np.ndarray,
                                   eps: float = 1e-6) -> float:
    """(f(x + eps·d) - f(x - eps·d)) / 2eps, central differences in float64."""
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


def check_gradient(name: str, f, x: np.ndarray, analytic: np.ndarray, rng,
                   eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """chainer's ``check_backward`` idea: along a random direction d, the analytic gradient
    gives ``<analytic, d>``; central differences of the scalar ``f`` give the same number."""
    x = np.asarray(x, dtype=np.float64)
    direction = rng.standard_normal(x.shape)
    numeric = numeric_directional_derivative(f, x, direction, eps)
    exact = float(np.sum(np.asarray(analytic, dtype=np.float64) * direction))
    assert abs(numeric - exact) <= atol + rtol * max(abs(numeric), abs(exact)), (
        f"{name}: numeric {numeric!r} vs analytic {exact!r} along a random direction"
        f" (difference {numeric - exact:.3g}); input shape {x.shape}"
    )
