"""Shared fixtures: every op test runs on every registered backend.

A backend joins every test that takes the ``backend`` fixture by registering itself
(``polycnn.backends.register``); one that cannot run here is skipped in one place, below, with
the reason its factory gave (unless ``POLYCNN_REQUIRE_BACKENDS`` names it: then it fails).
Tests marked ``gpu`` are skipped, with a reason, without a CUDA
device; the parametrizations of backends that need one carry the marker, so ``pytest -m gpu``
selects them.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings

from polycnn.backends import backend_names, get_backend
from polycnn.errors import BackendUnavailable
from support.oracle import (DTYPES, FUZZ_CASES, GPU_BACKENDS, cuda_device_reason,
                            required_backends)

# ---- hypothesis (tests/ops/test_fuzz.py) -------------------------------------------------------
#: "ci" (the default): a fixed budget, derandomized, so that every run tries the same cases;
#: "long": ``pytest --hypothesis-profile=long tests/ops/test_fuzz.py``, 100k random cases a test.
#: NOTE: no example database (it would write a .hypothesis folder into the checkout); a failure
#: prints the falsifying example and a ``@reproduce_failure`` blob instead.
settings.register_profile("ci", max_examples=400, derandomize=True, deadline=None,
                          database=None, print_blob=True)
settings.register_profile("long", max_examples=100_000, deadline=None, database=None,
                          print_blob=True)
settings.load_profile("ci")  # hypothesis's pytest plugin loads --hypothesis-profile after this


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:
        terminalreporter.section("fuzz cases run against the float64 oracle")
        for (op, name), count in sorted(FUZZ_CASES.items()):
            terminalreporter.write_line(f"{op:<10} {name:<9} {count:>7} cases")
        terminalreporter.write_line(f"{'total':<20} {sum(FUZZ_CASES.values()):>7} cases")


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


def _backend_params():
    return [pytest.param(name, id=name,
                         marks=[pytest.mark.gpu] if name in GPU_BACKENDS else [])
            for name in backend_names()]


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


