"""Numerical gradient checks, float64, along a random direction, for every backward pass: of
every backend, and of the reference itself (so the oracle is not trusted on its word).

For a loss L = <forward(x), dy> with a fixed random dy, the backward pass given dy must
return dL/dx; central differences of L along a random direction check it."""

import numpy as np
import pytest
from support.oracle import check_gradient

from polycnn import reference

CONV_SETTINGS = [
    pytest.param((2, 2, 7, 6), (3, 2, 3, 2), {"stride": (2, 1), "padding": (1, 2),
                                               "dilation": (1, 2)}, id="stride-pad-dilation"),
    pytest.param((1, 3, 5, 6), (2, 3, 2, 4), {"padding": "same"}, id="same-even-kernel"),
    pytest.param((2, 1, 6, 5), (2, 1, 3, 3), {"stride": 3, "padding": 2}, id="stride3-pad2"),
    pytest.param((1, 2, 4, 3), (2, 2, 4, 3), {}, id="kernel-eq-input"),
]

POOL_SETTINGS = [
    pytest.param((2, 2, 7, 6), {"kernel_size": 3, "stride": 2, "padding": 1}, id="overlap-pad"),
    pytest.param((1, 3, 5, 8), {"kernel_size": (2, 3), "stride": (1, 2)}, id="nonsquare"),
    pytest.param((2, 1, 6, 6), {"kernel_size": 2}, id="2x2"),
]


def _host(backend, a):
    return backend.to_numpy(a).astype(np.float64)


@pytest.mark.parametrize("x_shape, w_shape, params", CONV_SETTINGS)
def test_conv2d_backward_gradcheck(backend, x_shape, w_shape, params):
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    be = backend
    y, ctx = be.conv2d_forward(be.asarray(x), be.asarray(w), be.asarray(b), **params)
    dy = rng.standard_normal(tuple(y.shape))
    dx, dw, db = (_host(be, g) for g in be.conv2d_backward(be.asarray(dy), ctx))

    def loss(x_, w_, b_):
        out, _ = be.conv2d_forward(be.asarray(x_), be.asarray(w_), be.asarray(b_), **params)
        return float(np.sum(_host(be, out) * dy))

    where = f"conv2d backward, backend={be.name}, dtype=float64, x {x_shape}, w {w_shape}, {params}"
    check_gradient(f"{where}, dx", lambda v: loss(v, w, b), x, dx, rng)
    check_gradient(f"{where}, dw", lambda v: loss(x, v, b), w, dw, rng)
    check_gradient(f"{where}, db", lambda v: loss(x, w, v), b, db, rng)


@pytest.mark.parametrize("op", ["maxpool2d", "avgpool2d"])
@pytest.mark.parametrize("x_shape, params", POOL_SETTINGS)
def test_pool_backward_gradcheck(backend, op, x_shape, params):
    # NOTE: distinct normal values keep every max-pool argmax fixed under the tiny perturbation
    rng = np.random.default_rng(sum(x_shape))
    x = rng.standard_normal(x_shape)
    be = backend
    forward, backward = getattr(be, f"{op}_forward"), getattr(be, f"{op}_backward")
    y, ctx = forward(be.asarray(x), **params)
    dy = rng.standard_normal(tuple(y.shape))
    dx = _host(be, backward(be.asarray(dy), ctx))

    def loss(v):
        return float(np.sum(_host(be, forward(be.asarray(v), **params)[0]) * dy))

    check_gradient(f"{op} backward, dx, backend={be.name}, dtype=float64, x {x_shape}, {params}",
                   loss, x, dx, rng)


# ---- the reference's own backward passes ------------------------------------------------------

@pytest.mark.parametrize("x_shape, w_shape, params", CONV_SETTINGS)
def test_reference_conv2d_backward_gradcheck(x_shape, w_shape, params):
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    dy = rng.standard_normal(reference.conv2d_forward(x, w, b, **params).shape)
    dx, dw, db = reference.conv2d_backward(dy, x, w, has_bias=True, **params)

    def loss(x_, w_, b_):
        return float(np.sum(reference.conv2d_forward(x_, w_, b_, **params) * dy))

    check_gradient("reference conv2d dx", lambda v: loss(v, w, b), x, dx, rng)
    check_gradient("reference conv2d dw", lambda v: loss(x, v, b), w, dw, rng)
    check_gradient("reference conv2d db", lambda v: loss(x, w, v), b, db, rng)


@pytest.mark.parametrize("x_shape, params", POOL_SETTINGS)
def test_reference_pool_backward_gradcheck(x_shape, params):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(x_shape)
    y = reference.maxpool2d_forward(x, **params)
    dy = rng.standard_normal(y.shape)
    check_gradient("reference maxpool2d dx",
                   lambda v: float(np.sum(reference.maxpool2d_forward(v, **params) * dy)),
                   x, reference.maxpool2d_backward(dy, x, **params), rng)
    check_gradient("reference avgpool2d dx",
                   lambda v: float(np.sum(reference.avgpool2d_forward(v, **params) * dy)),
                   x, reference.avgpool2d_backward(dy, x_shape, **params), rng)
