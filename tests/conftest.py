"""Shared fixtures: every op test runs on every registered backend.

A backend joins every test that takes the ``backend`` fixture by registering itself
(``polycnn.backends.register``); one that cannot run here is skipped in one place, below, with
the reason its factory gave (unless ``POLYCNN_REQUIRE_BACKENDS`` names it: then it fails).
Tests marked ``gpu`` are skipped, with a reason, without a CUDA
device; the parametrizations of backends that need one carry the marker, so ``pytest -m gpu``
selects them.
"""

from __future__ import annotations

import collections
import functools
import os

import numpy as np
import pytest
from hypothesis import settings

from polycnn import parity
from polycnn.backends import backend_names, get_backend
from polycnn.errors import BackendUnavailable

#: backends that need a CUDA device: their parametrizations are marked ``gpu``
GPU_BACKENDS = {"cupy"}

# ---- hypothesis (tests/test_fuzz.py) -------------------------------------------------------
#: "ci" (the default): a fixed budget, derandomized, so that every run tries the same cases;
#: "long": ``pytest --hypothesis-profile=long tests/test_fuzz.py``, 100k random cases a test.
#: NOTE: no example database (it would write a .hypothesis folder into the checkout); a failure
#: prints the falsifying example and a ``@reproduce_failure`` blob instead.
settings.register_profile("ci", max_examples=400, derandomize=True, deadline=None,
                          database=None, print_blob=True)
settings.register_profile("long", max_examples=100_000, deadline=None, database=None,
                          print_blob=True)
settings.load_profile("ci")  # hypothesis's pytest plugin loads --hypothesis-profile after this

#: (op, backend name) -> fuzz cases run, printed at the end of the run
FUZZ_CASES: collections.Counter = collections.Counter()


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:
        terminalreporter.section("fuzz cases run against the float64 oracle")
        for (op, name), count in sorted(FUZZ_CASES.items()):
            terminalreporter.write_line(f"{op:<10} {name:<9} {count:>7} cases")
        terminalreporter.write_line(f"{'total':<20} {sum(FUZZ_CASES.values()):>7} cases")

DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    """NOTE: on a shared 2-core machine OpenBLAS's worker threads busy-wait after each GEMM and
    steal the cores from the next one, from Numba's threads and from the CUDA emulator (small
    GEMMs get 10-30x slower). One BLAS thread keeps the suite fast; no result depends on it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


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


def _backend_params():
    return [pytest.param(name, id=name,
                         marks=[pytest.mark.gpu] if name in GPU_BACKENDS else [])
            for name in backend_names()]


def required_backends() -> set:
    """Backends whose absence fails the tests instead of skipping them: ``numpy`` and those
    named in ``POLYCNN_REQUIRE_BACKENDS`` (comma-separated; CI names every backend it
    installs, so that a backend broken into "unavailable" cannot pass as skipped)."""
    names = os.environ.get("POLYCNN_REQUIRE_BACKENDS", "")
    return {"numpy"} | {n.strip() for n in names.split(",") if n.strip()}


@pytest.fixture(params=_backend_params())
def backend(request):
    """Each registered backend in turn; an unavailable one is skipped with its reason."""
    try:
        be = get_backend(request.param)
    except BackendUnavailable as exc:
        if request.param in required_backends():
            pytest.fail(f"backend {request.param!r} is required here but unavailable: {exc}")
        pytest.skip(f"backend {request.param!r} unavailable: {exc}")
    assert be is not None, f"the registry returned None for backend {request.param!r}"
    return be


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        reason = cuda_device_reason()
        if reason is not None:
            pytest.skip(f"needs a CUDA device: {reason}")


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
