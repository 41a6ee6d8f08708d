"""Every kind of bad input gives a clear error naming the argument and the shapes, on every
backend (validation is shared, so a backend that skips it shows up here)."""

import re

import numpy as np
import pytest

import polycnn as pc
from polycnn.backends import registry


def arr(backend, shape, dtype=np.float32):
    return backend.asarray(np.ones(shape, dtype))


def raises(exc, *fragments):
    """pytest.raises that needs every fragment, literally, in the message."""
    pattern = "".join(f"(?=.*{re.escape(f)})" for f in fragments)
    return pytest.raises(exc, match=re.compile(pattern, re.S))


# ---- conv2d -------------------------------------------------------------------------------

def test_conv_wrong_rank_x(backend):
    with raises(ValueError, "x", "4-D", "(3, 5, 5)"):
        backend.conv2d_forward(arr(backend, (3, 5, 5)), arr(backend, (2, 3, 3, 3)))


def test_conv_wrong_rank_w(backend):
    with raises(ValueError, "w", "4-D", "(2, 3, 3)"):
        backend.conv2d_forward(arr(backend, (1, 3, 5, 5)), arr(backend, (2, 3, 3)))


def test_conv_channel_mismatch(backend):
    with raises(ValueError, "channel", "(1, 3, 5, 5)", "(2, 4, 3, 3)"):
        backend.conv2d_forward(arr(backend, (1, 3, 5, 5)), arr(backend, (2, 4, 3, 3)))


@pytest.mark.parametrize("padding, dilation", [(0, 1), (1, 1), (0, 2)])
def test_conv_kernel_larger_than_padded_input(backend, padding, dilation):
    with raises(ValueError, "kernel larger than the padded input", "4x4"):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 7, 4)),
                               padding=padding, dilation=dilation)


@pytest.mark.parametrize("stride", [0, -1, (1, 0), (-2, 1)])
def test_conv_non_positive_stride(backend, stride):
    with raises(ValueError, "stride", ">= 1", repr(stride)):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 2, 2)), stride=stride)


@pytest.mark.parametrize("dilation", [0, (1, -1)])
def test_conv_non_positive_dilation(backend, dilation):
    with raises(ValueError, "dilation", ">= 1"):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 2, 2)),
                               dilation=dilation)


@pytest.mark.parametrize("padding", [-1, (0, -2)])
def test_conv_negative_padding(backend, padding):
    with raises(ValueError, "padding", ">= 0"):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 2, 2)),
                               padding=padding)


@pytest.mark.parametrize("name, value", [("stride", 1.5), ("stride", True), ("stride", (1, 2, 3)),
                                         ("padding", "full"), ("dilation", "2")])
def test_conv_argument_of_wrong_type(backend, name, value):
    with pytest.raises((TypeError, ValueError), match=name):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 2, 2)),
                               **{name: value})


@pytest.mark.parametrize("value", [1.0, True, (1.0, 1)])
def test_a_remembered_geometry_never_lets_a_wrong_type_through(backend, value):
    """Geometries are remembered between calls; 1.0 and True equal 1 as dict keys, so a valid
    call with stride=1 first must not make them pass."""
    x, w = arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 2, 2))
    backend.conv2d_forward(x, w, stride=1)
    backend.maxpool2d_forward(x, 1)
    with raises(TypeError, "stride"):
        backend.conv2d_forward(x, w, stride=value)
    with raises(TypeError, "kernel_size"):
        backend.maxpool2d_forward(x, value)


def test_conv_same_padding_needs_stride_1(backend):
    with raises(ValueError, "same", "stride"):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 3, 3)),
                               stride=2, padding="same")


@pytest.mark.parametrize("bad", [np.int32, np.float16, np.complex64, np.bool_])
def test_conv_wrong_dtype(backend, bad):
    x = np.ones((1, 1, 4, 4), dtype=bad)
    with raises(TypeError, "x", "float32 or float64", np.dtype(bad).name, "(1, 1, 4, 4)"):
        backend.conv2d_forward(_unchecked_asarray(backend, x), arr(backend, (1, 1, 2, 2)))


def test_conv_mixed_dtypes(backend):
    with raises(TypeError, "dtypes must match", "x float32", "w float64"):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 2, 2), np.float64))
    with raises(TypeError, "dtypes must match", "b float64"):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (2, 1, 2, 2)),
                               arr(backend, (2,), np.float64))


@pytest.mark.parametrize("b_shape", [(3,), (1,)])
def test_conv_bias_of_wrong_shape(backend, b_shape):
    with raises(ValueError, "b", "(2,)", "(2, 1, 2, 2)", str(b_shape)):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (2, 1, 2, 2)),
                               arr(backend, b_shape))


def test_conv_bias_of_wrong_rank(backend):
    with raises(ValueError, "b", "1-D", "(2, 1)"):
        backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (2, 1, 2, 2)),
                               arr(backend, (2, 1)))


def test_conv_dy_of_wrong_shape(backend):
    _, ctx = backend.conv2d_forward(arr(backend, (2, 1, 5, 5)), arr(backend, (3, 1, 2, 2)))
    with raises(ValueError, "dy", "(2, 3, 4, 5)", "(2, 3, 4, 4)"):
        backend.conv2d_backward(arr(backend, (2, 3, 4, 5)), ctx)
    with raises(ValueError, "dy", "4-D"):
        backend.conv2d_backward(arr(backend, (2, 3, 16)), ctx)


def test_conv_dy_of_other_dtype(backend):
    _, ctx = backend.conv2d_forward(arr(backend, (1, 1, 3, 3)), arr(backend, (1, 1, 2, 2)))
    with raises(TypeError, "dy", "float64", "float32"):
        backend.conv2d_backward(arr(backend, (1, 1, 2, 2), np.float64), ctx)


# ---- pooling ------------------------------------------------------------------------------

POOLS = ["maxpool2d", "avgpool2d"]


def pool(backend, op, x, **kw):
    return getattr(backend, f"{op}_forward")(x, **kw)


@pytest.mark.parametrize("op", POOLS)
def test_pool_wrong_rank(backend, op):
    with raises(ValueError, "x", "4-D", "(4, 4)"):
        pool(backend, op, arr(backend, (4, 4)))


@pytest.mark.parametrize("op", POOLS)
def test_pool_kernel_larger_than_padded_input(backend, op):
    with raises(ValueError, "kernel larger than the padded input", "3x3", "5x5"):
        pool(backend, op, arr(backend, (1, 1, 3, 3)), kernel_size=5, padding=0)


@pytest.mark.parametrize("op", POOLS)
@pytest.mark.parametrize("kw, name", [({"stride": 0}, "stride"), ({"stride": (1, -1)}, "stride"),
                                      ({"kernel_size": 0}, "kernel_size"),
                                      ({"padding": -1}, "padding")])
def test_pool_non_positive_arguments(backend, op, kw, name):
    with raises(ValueError, name):
        pool(backend, op, arr(backend, (1, 1, 4, 4)), **kw)


@pytest.mark.parametrize("op", POOLS)
def test_pool_padding_over_half_kernel(backend, op):
    with raises(ValueError, "padding", "half the kernel", "(2, 2)"):
        pool(backend, op, arr(backend, (1, 1, 6, 6)), kernel_size=2, padding=2)


@pytest.mark.parametrize("op", POOLS)
def test_pool_string_padding(backend, op):
    with raises(TypeError, "padding", "same"):
        pool(backend, op, arr(backend, (1, 1, 6, 6)), kernel_size=3, padding="same")


@pytest.mark.parametrize("op", POOLS)
def test_pool_wrong_dtype(backend, op):
    x = _unchecked_asarray(backend, np.ones((1, 1, 4, 4), np.int64))
    with raises(TypeError, "x", "float32 or float64", "int64"):
        pool(backend, op, x)


@pytest.mark.parametrize("op", POOLS)
def test_pool_dy_of_wrong_shape(backend, op):
    _, ctx = pool(backend, op, arr(backend, (1, 2, 6, 6)), kernel_size=2)
    with raises(ValueError, "dy", "(1, 2, 6, 6)", "(1, 2, 3, 3)"):
        getattr(backend, f"{op}_backward")(arr(backend, (1, 2, 6, 6)), ctx)


# ---- contexts, array types, backends ------------------------------------------------------

@pytest.mark.parametrize("forward_op, backward_op", [
    ("maxpool2d", "avgpool2d"), ("avgpool2d", "maxpool2d"), ("maxpool2d", "conv2d"),
    ("conv2d", "maxpool2d")])
def test_ctx_from_another_op(backend, forward_op, backward_op):
    if forward_op == "conv2d":
        y, ctx = backend.conv2d_forward(arr(backend, (1, 1, 4, 4)), arr(backend, (1, 1, 3, 3)))
    else:
        y, ctx = pool(backend, forward_op, arr(backend, (1, 1, 4, 4)))
    dy = backend.asarray(np.ones(tuple(y.shape), np.float32))
    with raises(TypeError, "ctx", f"{backward_op}_forward"):
        getattr(backend, f"{backward_op}_backward")(dy, ctx)


@pytest.mark.parametrize("op", ["conv2d", "maxpool2d", "avgpool2d"])
def test_ctx_not_a_context(backend, op):
    with raises(TypeError, "ctx", f"{op}_forward"):
        getattr(backend, f"{op}_backward")(arr(backend, (1, 1, 2, 2)), {"x": None})


def test_not_an_array_of_this_backend(backend):
    """A list, or a host array on a device backend: a TypeError naming the argument and the
    expected array type (never a crash inside a kernel)."""
    x = np.ones((1, 1, 4, 4), np.float32)
    with raises(TypeError, "x must be a", "asarray"):
        backend.conv2d_forward(x.tolist(), arr(backend, (1, 1, 2, 2)))
    if not isinstance(x, backend.array_type):
        with raises(TypeError, "x must be a", "numpy.ndarray"):
            backend.maxpool2d_forward(x)


def test_unknown_backend_lists_known_names():
    with pytest.raises(pc.BackendUnavailable) as info:
        pc.get_backend("no-such-backend")
    message = str(info.value)
    assert "no-such-backend" in message
    for name in registry.backend_names():
        assert name in message


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register("test-missing", f"{__name__}:_missing_backend", "needs a library")
    with raises(pc.BackendUnavailable, "libfoo is not installed"):
        pc.get_backend("test-missing")
    assert "libfoo" in pc.available_backends()["test-missing"]
    registry.register("test-broken-import", "polycnn._no_such_module:create", "cannot import")
    with raises(pc.BackendUnavailable, "test-broken-import", "_no_such_module"):
        pc.get_backend("test-broken-import")


def _missing_backend():
    raise pc.BackendUnavailable("libfoo is not installed; pip install libfoo")


def _unchecked_asarray(backend, x):
    """``x`` as the backend's array type without the dtype conversion a user would do, to
    reach the op's own dtype check."""
    try:
        return backend.asarray(x, dtype=x.dtype)
    except TypeError:  # a device backend may refuse the dtype itself: the check is the same
        pytest.skip(f"backend {backend.name!r} cannot hold {x.dtype} arrays")
