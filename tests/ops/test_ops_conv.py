"""conv2d forward and backward on every backend against the float64 reference."""

import numpy as np
import pytest
from support.oracle import assert_matches, check_case

from polycnn import parity, reference
from polycnn.parity import Case


def conv(name, x_shape, w_shape, bias=True, **params):
    return pytest.param(Case("conv2d", x_shape, params, w_shape=w_shape, has_bias=bias,
                             seed=sum(x_shape) * 31 + sum(w_shape), name=name), id=name)


CASES = [
    conv("odd-nonsquare", (2, 3, 7, 5), (4, 3, 3, 2)),
    conv("no-bias", (2, 3, 7, 5), (4, 3, 3, 2), bias=False),
    conv("stride2", (2, 2, 9, 7), (3, 2, 3, 3), stride=2),
    conv("stride3-pad2", (1, 2, 8, 10), (2, 2, 3, 3), stride=3, padding=2),
    conv("stride-nonsquare", (2, 2, 9, 8), (3, 2, 2, 3), stride=(3, 1)),
    conv("stride-gt-kernel", (1, 1, 9, 9), (2, 1, 2, 2), stride=3),
    conv("pad1", (2, 2, 5, 6), (3, 2, 3, 3), padding=1),
    conv("pad-pair", (1, 3, 6, 4), (2, 3, 3, 2), padding=(2, 1)),
    conv("pad-pair-stride2", (2, 2, 7, 6), (2, 2, 3, 3), stride=2, padding=(0, 2)),
    conv("same-odd-kernel", (2, 2, 6, 7), (3, 2, 3, 3), padding="same"),
    conv("same-even-kernel", (1, 2, 5, 6), (2, 2, 2, 4), padding="same"),
    conv("same-dilated-even", (1, 1, 7, 5), (2, 1, 4, 2), padding="same", dilation=2),
    conv("valid", (2, 2, 6, 5), (2, 2, 3, 2), padding="valid"),
    conv("dilation2", (2, 2, 9, 8), (3, 2, 3, 3), dilation=2),
    conv("dilation-pair-pad", (1, 2, 8, 7), (2, 2, 2, 3), dilation=(2, 1), padding=1, stride=(1, 2)),
    conv("N1-C1-K1", (1, 1, 5, 4), (1, 1, 2, 3)),
    conv("C1", (3, 1, 6, 6), (4, 1, 3, 3), padding=1),
    conv("kernel-1x1-stride2", (2, 3, 5, 7), (4, 3, 1, 1), stride=2),
    conv("kernel-eq-input", (2, 2, 4, 3), (3, 2, 4, 3)),
    conv("kernel-eq-padded-input", (2, 1, 3, 3), (2, 1, 5, 5), padding=1),
    conv("kernel-eq-padded-nonsquare", (1, 2, 2, 3), (2, 2, 4, 3), padding=(1, 0), bias=False),
    conv("dilated-span-eq-input", (1, 2, 5, 5), (2, 2, 3, 3), dilation=2),
    conv("output-1-wide", (2, 2, 6, 3), (2, 2, 3, 3), stride=2),
    conv("input-1x1", (2, 3, 1, 1), (2, 3, 1, 1)),
    # more channels than a kernel's register tile or output group holds, a partial last one
    conv("many-channels", (2, 8, 7, 9), (13, 8, 3, 3), padding=1),
    conv("many-channels-stride2", (2, 7, 8, 6), (9, 7, 3, 3), stride=2, padding=1),
    # stride and dilation together: the taps that reach one stride phase of the input repeat
    # every stride / gcd(stride, dilation); some phases get none, or have no pixels at all
    conv("stride2-dilation2", (2, 2, 11, 10), (3, 2, 3, 3), stride=2, dilation=2, padding=1),
    conv("stride2-dilation3", (1, 2, 12, 11), (2, 2, 3, 2), stride=2, dilation=3, padding=(2, 1)),
    conv("stride3-dilation2-pair", (1, 2, 10, 9), (2, 2, 2, 3), stride=(3, 2), dilation=(2, 3)),
    conv("stride-gt-input", (2, 2, 2, 2), (3, 2, 1, 1), stride=3),
]


@pytest.mark.parametrize("case", CASES)
def test_conv2d_matches_reference(backend, dtype, case):
    check_case(backend, case, dtype)


@pytest.mark.parametrize("case", parity.random_cases("conv2d", 8, seed=123), ids=lambda c: c.name)
def test_conv2d_random_cases(backend, dtype, case):
    check_case(backend, case, dtype)


def test_conv2d_integer_values_exact(backend, dtype):
    """Small integers: every product and sum is exact in both dtypes, so the result must be
    bit-identical to the reference, whatever the summation order."""
    case = Case("conv2d", (2, 3, 6, 5), {"stride": 1, "padding": 1}, w_shape=(2, 3, 3, 3),
                has_bias=True, integer_values=True, seed=4, name="integers")
    expected = parity.reference_results(case, dtype)
    got = parity.backend_results(backend, case, dtype)
    for name, value in expected.items():
        np.testing.assert_array_equal(
            got[name], value, err_msg=f"conv2d {name}, backend={backend.name}, dtype={dtype}")


def test_conv2d_no_bias_returns_db_none(backend):
    x = backend.asarray(np.ones((1, 1, 3, 3), np.float32))
    w = backend.asarray(np.ones((2, 1, 2, 2), np.float32))
    y, ctx = backend.conv2d_forward(x, w, None)
    dx, dw, db = backend.conv2d_backward(backend.asarray(np.ones((1, 2, 2, 2), np.float32)), ctx)
    assert db is None
    assert_matches(backend.to_numpy(dw), np.full((2, 1, 2, 2), 4.0), np.float32,
                   f"conv2d backward, dw, backend={backend.name}")


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[13]])
def test_conv2d_backward_without_input_grad(backend, dtype, case):
    """input_grad=False (a first layer) skips dx and leaves dw and db bit-identical."""
    a = case.arrays(dtype)
    y, ctx = backend.conv2d_forward(backend.asarray(a["x"]), backend.asarray(a["w"]),
                                    backend.asarray(a["b"]), **case.params)
    dy = backend.asarray(a["dy"])
    _, dw, db = backend.conv2d_backward(dy, ctx)
    dx2, dw2, db2 = backend.conv2d_backward(dy, ctx, input_grad=False)
    assert dx2 is None
    np.testing.assert_array_equal(backend.to_numpy(dw2), backend.to_numpy(dw))
    np.testing.assert_array_equal(backend.to_numpy(db2), backend.to_numpy(db))


def test_linear_backward_without_input_grad(backend, dtype):
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((4, 7)).astype(dtype)
    b, dy = rng.standard_normal(4).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    _, ctx = backend.linear_forward(backend.asarray(x), backend.asarray(w), backend.asarray(b))
    dx, dw, db = backend.linear_backward(backend.asarray(dy), ctx)
    dx2, dw2, db2 = backend.linear_backward(backend.asarray(dy), ctx, input_grad=False)
    assert dx2 is None
    assert_matches(backend.to_numpy(dx), dy.astype(np.float64) @ w, dtype, f"linear dx, {backend.name}")
    np.testing.assert_array_equal(backend.to_numpy(dw2), backend.to_numpy(dw))
    np.testing.assert_array_equal(backend.to_numpy(db2), backend.to_numpy(db))


def test_conv2d_output_dtype_and_shape(backend, dtype):
    case = CASES[3].values[0]
    a = case.arrays(dtype)
    y, ctx = backend.conv2d_forward(backend.asarray(a["x"]), backend.asarray(a["w"]),
                                    backend.asarray(a["b"]), **case.params)
    assert y.dtype == dtype and tuple(y.shape) == case.geometry().y_shape
    grads = backend.conv2d_backward(backend.asarray(a["dy"]), ctx)
    for g, shape in zip(grads, [case.x_shape, case.w_shape, (case.w_shape[0],)]):
        assert g.dtype == dtype and tuple(g.shape) == shape


def test_conv2d_non_contiguous_input(backend, dtype):
    """A transposed (non C-contiguous) host view, converted by asarray, gives the same result."""
    rng = np.random.default_rng(7)
    x_t = rng.standard_normal((2, 3, 5, 6)).astype(dtype).transpose(0, 1, 3, 2)  # (2, 3, 6, 5)
    w = rng.standard_normal((2, 3, 3, 2)).astype(dtype)
    y, _ = backend.conv2d_forward(backend.asarray(x_t), backend.asarray(w), None, padding=1)
    assert_matches(backend.to_numpy(y), reference.conv2d_forward(x_t, w, None, padding=1), dtype,
                   f"conv2d forward, non-contiguous x, backend={backend.name}, dtype={dtype}")


@pytest.mark.parametrize("cap", [1, 3000])
def test_numpy_conv2d_batch_chunks(dtype, cap):
    """The NumPy backend splits a batch to bound its column buffer: one sample at a time
    (cap 1) or a few, the result is the same."""
    from polycnn.backends.numpy_backend import NumpyBackend

    case = Case("conv2d", (5, 2, 6, 5), {"stride": (1, 2), "padding": 1}, w_shape=(3, 2, 3, 3),
                has_bias=True, seed=8, name="chunked")
    check_case(NumpyBackend(column_buffer_bytes=cap), case, dtype)
