"""Max and average pooling, forward and backward, on every backend against the reference."""

import numpy as np
import pytest
from support.oracle import assert_matches, check_case

from polycnn import parity, reference
from polycnn.parity import Case

POOL_GEOMETRIES = [
    # name, x shape, kernel_size, stride, padding
    ("2x2-default-stride", (2, 3, 6, 8), 2, None, 0),
    ("odd-rounds-down", (2, 2, 7, 5), 2, None, 0),
    ("overlap-k3-s2", (1, 2, 7, 9), 3, 2, 0),
    ("overlap-k3-s1", (2, 1, 5, 6), 3, 1, 0),
    ("overlap-nonsquare", (1, 2, 6, 7), (3, 2), (1, 2), 0),
    ("stride-gt-kernel", (1, 2, 9, 8), 2, 3, 0),
    ("pad1-k3-s2", (2, 2, 7, 6), 3, 2, 1),
    ("pad-pair", (1, 2, 5, 7), (2, 3), (2, 1), (1, 0)),
    ("pad1-k2", (1, 1, 5, 5), 2, 1, 1),
    ("kernel-nonsquare-stride3", (2, 1, 8, 9), (2, 3), 3, 0),
    ("N1-C1", (1, 1, 4, 5), 2, None, 0),
    ("global", (2, 3, 4, 5), (4, 5), None, 0),
    ("kernel-eq-padded-input", (1, 2, 2, 3), (4, 5), 1, (1, 1)),
    ("kernel-1", (1, 2, 3, 4), 1, 2, 0),
    ("kernel-over-256-entries", (1, 2, 18, 17), 17, 1, 0),
]


def pool_cases(op):
    out = []
    for name, x_shape, k, s, p in POOL_GEOMETRIES:
        for integer in (False, True):
            label = name + ("-integers" if integer else "")
            case = Case(op, x_shape, {"kernel_size": k, "stride": s, "padding": p},
                        integer_values=integer, seed=len(out) + 11, name=label)
            out.append(pytest.param(case, id=label))
    return out


@pytest.mark.parametrize("case", pool_cases("maxpool2d"))
def test_maxpool2d_matches_reference(backend, dtype, case):
    check_case(backend, case, dtype)


@pytest.mark.parametrize("case", pool_cases("avgpool2d"))
def test_avgpool2d_matches_reference(backend, dtype, case):
    check_case(backend, case, dtype)


@pytest.mark.parametrize("op", ["maxpool2d", "avgpool2d"])
@pytest.mark.parametrize("index", range(6))
def test_pool_random_cases(backend, dtype, op, index):
    check_case(backend, parity.random_cases(op, 6, seed=321)[index], dtype)


# ---- ties: the gradient goes to the first maximum in row-major window order ------------------

def _maxpool(backend, x, dy, **kw):
    y, ctx = backend.maxpool2d_forward(backend.asarray(x), **kw)
    dx = backend.maxpool2d_backward(backend.asarray(dy), ctx)
    return backend.to_numpy(y), backend.to_numpy(dx)


def test_maxpool_constant_input_ties_go_to_window_top_left(backend, dtype):
    x = np.full((1, 2, 4, 6), 5.0, dtype)
    y, dx = _maxpool(backend, x, np.ones((1, 2, 2, 3), dtype), kernel_size=2)
    np.testing.assert_array_equal(y, np.full((1, 2, 2, 3), 5.0))
    expected = np.zeros((4, 6))
    expected[::2, ::2] = 1.0  # the top-left entry of each 2x2 window
    np.testing.assert_array_equal(dx, np.broadcast_to(expected, dx.shape),
                                  err_msg=f"maxpool2d backward ties, backend={backend.name}")


def test_maxpool_overlapping_ties_accumulate(backend, dtype):
    """Constant 4x4, 3x3 windows, stride 1: each window's first entry is its top-left, so
    the four windows send their gradient to x[0:2, 0:2], one each."""
    x = np.zeros((1, 1, 4, 4), dtype)
    dy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype)
    _, dx = _maxpool(backend, x, dy, kernel_size=3, stride=1)
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, :2, :2] = [[1.0, 2.0], [3.0, 4.0]]
    np.testing.assert_array_equal(dx, expected, err_msg=f"backend={backend.name}")


def test_maxpool_tie_first_in_row_major_order(backend, dtype):
    """The max 7 appears at window positions (0, 1) and (1, 0): row-major order picks (0, 1)."""
    x = np.array([[[[1.0, 7.0], [7.0, 2.0]]]], dtype)
    _, dx = _maxpool(backend, x, np.ones((1, 1, 1, 1), dtype), kernel_size=2)
    np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])


def test_maxpool_padding_never_wins_over_real_values(backend, dtype):
    """Padding is -inf: an all-negative input still pools to its own values."""
    x = np.full((1, 1, 3, 3), -4.0, dtype)
    x[0, 0, 2, 2] = -1.0
    y, dx = _maxpool(backend, x, np.ones((1, 1, 2, 2), dtype), kernel_size=2, stride=2, padding=1)
    np.testing.assert_array_equal(y[0, 0], [[-4.0, -4.0], [-4.0, -1.0]])
    expected = np.zeros((3, 3))
    expected[0, 0] = expected[0, 1] = expected[1, 0] = expected[2, 2] = 1.0
    np.testing.assert_array_equal(dx[0, 0], expected)


def test_maxpool_minus_inf_ties_with_padding(backend, dtype):
    """A window whose real entries are all -inf: padding is never the argmax (PyTorch's rule),
    so the first real entry in row-major window order gets the gradient."""
    x = np.full((1, 1, 2, 2), -np.inf, dtype)
    x[0, 0, 1, 1] = 3.0
    dy = np.ones((1, 1, 3, 3))
    y, dx = _maxpool(backend, x, dy.astype(dtype), kernel_size=2, stride=1, padding=1)
    # 9 windows over the padded 4x4 map: the 4 that see x[1, 1] pick it; of the 5 others,
    # 3 pick x[0, 0] (their first real entry), one x[0, 1], one x[1, 0] (as PyTorch does)
    np.testing.assert_array_equal(dx[0, 0], np.array([[3.0, 1.0], [1.0, 4.0]]),
                                  err_msg=f"maxpool2d backward, backend={backend.name}")
    np.testing.assert_array_equal(y, reference.maxpool2d_forward(x, 2, 1, 1))
    np.testing.assert_array_equal(dx, reference.maxpool2d_backward(dy, x, 2, 1, 1),
                                  err_msg=f"maxpool2d backward, backend={backend.name}")


def test_maxpool_nan_is_the_max(backend, dtype):
    x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 1, 0] = np.nan  # a second NaN in the same window: the first one gets the gradient
    y, dx = _maxpool(backend, x, np.ones((1, 1, 2, 2), dtype), kernel_size=2)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1:, 1:]).any()
    assert_matches(y, reference.maxpool2d_forward(x, 2), dtype, f"backend={backend.name}")
    assert_matches(dx, reference.maxpool2d_backward(np.ones((1, 1, 2, 2)), x, 2), dtype,
                   f"maxpool2d backward with NaN, backend={backend.name}")
    assert dx[0, 0, 0, 1] == 1.0 and dx[0, 0, 1, 0] == 0.0


# ---- average pooling counts the padding ------------------------------------------------------

def test_avgpool_counts_padding(backend, dtype):
    x = np.ones((1, 1, 2, 2), dtype)
    y, ctx = backend.avgpool2d_forward(backend.asarray(x), kernel_size=2, stride=1, padding=1)
    # each corner window holds one real 1 and three padded zeros
    expected = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 4
    np.testing.assert_allclose(backend.to_numpy(y)[0, 0], expected, rtol=1e-6)
    dx = backend.avgpool2d_backward(backend.asarray(np.ones((1, 1, 3, 3), dtype)), ctx)
    np.testing.assert_allclose(backend.to_numpy(dx)[0, 0], np.ones((2, 2)), rtol=1e-6)
