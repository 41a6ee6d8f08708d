"""The reference implementation: the definitions of :mod:`polycnn.backends.base`, as loops.

Slow on purpose: plain nested Python loops over every index, in float64, written straight from
the pseudo-loops of the backend contract so that each line can be checked against it by eye.
Every backend is compared with these functions (``tests/test_ops_*.py``, ``polycnn parity``).
Sizes come from :mod:`polycnn.geometry` (the one source of truth); values never do.

Inputs are NumPy arrays of any float dtype; outputs are new float64 arrays. Only for small
inputs: a conv forward costs N·K·P·Q·C·R·S Python iterations.

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel, P×Q output.
"""

from __future__ import annotations

import math

import numpy as np

from . import hashing
from .geometry import conv_geometry, pool_geometry


def _f64(a):
    return None if a is None else np.array(a, dtype=np.float64)


# ---- convolution -------------------------------------------------------------------------

def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """y[n, k, p, q] = b[k] + sum over c, r, s of w[k, c, r, s] * x[n, c, h, v] (0 outside x)."""
    x, w, b = _f64(x), _f64(w), _f64(b)
    g = conv_geometry(x.shape, w.shape, stride, padding, dilation,
                      b_shape=None if b is None else b.shape)
    y = np.zeros(g.y_shape)
    for n in range(g.N):
        for k in range(g.K):
            for p in range(g.P):
                for q in range(g.Q):
                    total = 0.0 if b is None else b[k]
                    for c in range(g.C):
                        for r in range(g.R):
                            for s in range(g.S):
                                h = p * g.stride_h - g.pad_h + r * g.dil_h
                                v = q * g.stride_w - g.pad_w + s * g.dil_w
                                if 0 <= h < g.H and 0 <= v < g.W:
                                    total += w[k, c, r, s] * x[n, c, h, v]
                    y[n, k, p, q] = total
    return y


def conv2d_backward(dy, x, w, stride=1, padding=0, dilation=1, has_bias=True):
    """-> (dx, dw, db), db None when ``has_bias`` is false.

    Every term w[k, c, r, s] * x[n, c, h, v] of the forward sum that lands inside x sends
    dy[n, k, p, q] * w[k, c, r, s] to dx[n, c, h, v] and dy[n, k, p, q] * x[n, c, h, v] to
    dw[k, c, r, s]; db[k] sums dy[n, k, :, :].
    """
    dy, x, w = _f64(dy), _f64(x), _f64(w)
    g = conv_geometry(x.shape, w.shape, stride, padding, dilation)
    if dy.shape != g.y_shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {g.y_shape}")
    dx = np.zeros(g.x_shape)
    dw = np.zeros(g.w_shape)
    db = np.zeros(g.K)
    for n in range(g.N):
        for k in range(g.K):
            for p in range(g.P):
                for q in range(g.Q):
                    grad = dy[n, k, p, q]
                    db[k] += grad
                    for c in range(g.C):
                        for r in range(g.R):
                            for s in range(g.S):
                                h = p * g.stride_h - g.pad_h + r * g.dil_h
                                v = q * g.stride_w - g.pad_w + s * g.dil_w
                                if 0 <= h < g.H and 0 <= v < g.W:
                                    dx[n, c, h, v] += w[k, c, r, s] * grad
                                    dw[k, c, r, s] += x[n, c, h, v] * grad
    return dx, dw, (db if has_bias else None)


# ---- max pooling ---------------------------------------------------------------------------

def _max_window(x, n, c, p, q, g):
    """(value, (h, v)) of the max of one window, over its real entries only (padding is -inf
    and never the argmax): the first NaN, else the first of tied maxima in row-major order."""
    best, where = -math.inf, None
    for r in range(g.R):
        for s in range(g.S):
            h = p * g.stride_h - g.pad_h + r
            v = q * g.stride_w - g.pad_w + s
            if not (0 <= h < g.H and 0 <= v < g.W):
                continue
            value = x[n, c, h, v]
            if where is None:
                better = True
            elif math.isnan(best):
                better = False
            else:
                better = math.isnan(value) or value > best
            if better:
                best, where = value, (h, v)
    return best, where


def maxpool2d_forward(x, kernel_size=2, stride=None, padding=0):
    """y[n, c, p, q] = max over r, s of x[n, c, p*sh - ph + r, q*sw - pw + s] (-inf outside)."""
    x = _f64(x)
    g = pool_geometry(x.shape, kernel_size, stride, padding)
    y = np.zeros(g.y_shape)
    for n in range(g.N):
        for c in range(g.C):
            for p in range(g.P):
                for q in range(g.Q):
                    y[n, c, p, q] = _max_window(x, n, c, p, q, g)[0]
    return y


def maxpool2d_backward(dy, x, kernel_size=2, stride=None, padding=0):
    """dx[n, c, argmax of window (p, q)] += dy[n, c, p, q]."""
    dy, x = _f64(dy), _f64(x)
    g = pool_geometry(x.shape, kernel_size, stride, padding)
    if dy.shape != g.y_shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {g.y_shape}")
    dx = np.zeros(g.x_shape)
    for n in range(g.N):
        for c in range(g.C):
            for p in range(g.P):
                for q in range(g.Q):
                    h, v = _max_window(x, n, c, p, q, g)[1]
                    dx[n, c, h, v] += dy[n, c, p, q]
    return dx


# ---- average pooling -----------------------------------------------------------------------

def avgpool2d_forward(x, kernel_size=2, stride=None, padding=0):
    """y[n, c, p, q] = sum over r, s of x[n, c, p*sh - ph + r, q*sw - pw + s] / (R*S);
    padding counts as zeros (``count_include_pad=True``)."""
    x = _f64(x)
    g = pool_geometry(x.shape, kernel_size, stride, padding)
    y = np.zeros(g.y_shape)
    for n in range(g.N):
        for c in range(g.C):
            for p in range(g.P):
                for q in range(g.Q):
                    total = 0.0
                    for r in range(g.R):
                        for s in range(g.S):
                            h = p * g.stride_h - g.pad_h + r
                            v = q * g.stride_w - g.pad_w + s
                            if 0 <= h < g.H and 0 <= v < g.W:
                                total += x[n, c, h, v]
                    y[n, c, p, q] = total / (g.R * g.S)
    return y


def avgpool2d_backward(dy, x_shape, kernel_size=2, stride=None, padding=0):
    """dx[n, c, h, v] = sum of dy[n, c, p, q] / (R*S) over the windows (p, q) containing (h, v)."""
    dy = _f64(dy)
    g = pool_geometry(tuple(x_shape), kernel_size, stride, padding)
    if dy.shape != g.y_shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {g.y_shape}")
    dx = np.zeros(g.x_shape)
    for n in range(g.N):
        for c in range(g.C):
            for p in range(g.P):
                for q in range(g.Q):
                    for r in range(g.R):
                        for s in range(g.S):
                            h = p * g.stride_h - g.pad_h + r
                            v = q * g.stride_w - g.pad_w + s
                            if 0 <= h < g.H and 0 <= v < g.W:
                                dx[n, c, h, v] += dy[n, c, p, q] / (g.R * g.S)
    return dx


# ---- dropout masks ---------------------------------------------------------------------------

def splitmix64(state: int) -> int:
    """SplitMix64's output function on a 64-bit state, in Python ints."""
    m = (1 << 64) - 1
    z = ((state ^ (state >> 30)) * hashing.MIX1) & m
    z = ((z ^ (z >> 27)) * hashing.MIX2) & m
    return z ^ (z >> 31)


def dropout_mask(shape, p, key):
    """keep[i] = (splitmix64(key + (i + 1) * GAMMA) >> 40) >= ceil(p * 2**24), in Python ints."""
    shape, threshold, key = hashing.check_mask_args(shape, p, key)
    m = (1 << 64) - 1
    keep = [(splitmix64((key + (i + 1) * hashing.GAMMA) & m) >> (64 - hashing.DRAW_BITS)) >= threshold
            for i in range(math.prod(shape))]
    return np.array(keep, dtype=bool).reshape(shape)


__all__ = [
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward", "splitmix64", "dropout_mask",
]
