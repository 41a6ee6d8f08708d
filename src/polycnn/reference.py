"""The reference implementation: the definitions of :mod:`polycnn.backends.base`, as loops.

Slow on purpose: plain nested Python loops over every index, in float64, written straight from
the pseudo-loops of the backend contract so that each line can be checked against it by eye.
Every backend is compared with these functions (``tests/test_ops_*.py``, ``polycnn parity``).

NOTE: the oracle works out its own sizes and padding (:func:`conv_sizes`, :func:`pool_sizes`, a
few lines from the definitions) and does not import :mod:`polycnn.geometry`, the backends' one
source of truth: a wrong rule there (the odd "same" pixel put before instead of after, say)
then shows up as a parity failure instead of being shared by the oracle and every backend.
``tests/ops/test_fuzz.py`` checks that the two agree on random arguments. The oracle validates
little: its arguments are assumed valid (the backends' public checks are tested elsewhere).

Inputs are NumPy arrays of any float dtype; outputs are new float64 arrays. Only for small
inputs: a conv forward costs N·K·P·Q·C·R·S Python iterations. The training glue (ReLU, dropout,
cross-entropy, the SGD step) is here too, as vectorised float64 formulas.

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel, P×Q output.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np

from . import hashing


def _f64(a):
    return None if a is None else np.array(a, dtype=np.float64)


# ---- sizes (the oracle's own arithmetic, see the module docstring) --------------------------

def _pair(v) -> tuple:
    """``3 -> (3, 3)``, ``(2, 3) -> (2, 3)``."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _out_size(size: int, span: int, stride: int, before: int, after: int) -> int:
    """How many windows of ``span`` pixels, ``stride`` apart, fit in the padded axis."""
    return (before + size + after - span) // stride + 1


def conv_sizes(x_shape, w_shape, stride=1, padding=0, dilation=1) -> SimpleNamespace:
    """N, C, H, W, K, R, S, P, Q, stride_h/_w, dil_h/_w and the padding on each side
    (pad_h/pad_w before: top/left; pad_bottom/pad_right after) of a convolution.

    ``"same"`` pads ``dilation*(kernel-1)`` in all per axis, the odd pixel after (bottom/right),
    as PyTorch does; ``"valid"`` pads nothing. ValueError when no window fits."""
    N, C, H, W = (int(v) for v in x_shape)
    K, Cw, R, S = (int(v) for v in w_shape)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    span_h, span_w = dh * (R - 1) + 1, dw * (S - 1) + 1
    mode = padding.lower() if isinstance(padding, str) else None
    if mode == "same":
        if (sh, sw) != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride {(sh, sw)}")
        top, left = (span_h - 1) // 2, (span_w - 1) // 2
        bottom, right = span_h - 1 - top, span_w - 1 - left
    elif mode == "valid":
        top = bottom = left = right = 0
    else:
        ph, pw = _pair(padding)
        top = bottom = ph
        left = right = pw
    P, Q = _out_size(H, span_h, sh, top, bottom), _out_size(W, span_w, sw, left, right)
    if Cw != C or P < 1 or Q < 1:
        raise ValueError(f"no convolution of x {tuple(x_shape)} with w {tuple(w_shape)}:"
                         f" {Cw} vs {C} channels, output {P}x{Q}")
    return SimpleNamespace(N=N, C=C, H=H, W=W, K=K, R=R, S=S, P=P, Q=Q, stride_h=sh,
                           stride_w=sw, dil_h=dh, dil_w=dw, pad_h=top, pad_w=left,
                           pad_bottom=bottom, pad_right=right,
                           x_shape=(N, C, H, W), w_shape=(K, C, R, S), y_shape=(N, K, P, Q))


def pool_sizes(x_shape, kernel_size=2, stride=None, padding=0) -> SimpleNamespace:
    """N, C, H, W, R, S, P, Q, stride_h/_w, pad_h/_w of a pooling (``stride`` None: the
    kernel size; the same padding on both sides). ValueError when no window fits."""
    N, C, H, W = (int(v) for v in x_shape)
    R, S = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    P, Q = _out_size(H, R, sh, ph, ph), _out_size(W, S, sw, pw, pw)
    if P < 1 or Q < 1:
        raise ValueError(f"no {R}x{S} pooling window fits x {tuple(x_shape)} padded by {(ph, pw)}")
    return SimpleNamespace(N=N, C=C, H=H, W=W, R=R, S=S, P=P, Q=Q, stride_h=sh, stride_w=sw,
                           pad_h=ph, pad_w=pw, x_shape=(N, C, H, W), y_shape=(N, C, P, Q))


# ---- loops shared by the ops ----------------------------------------------------------------

def _outputs(n: int, channels: int, g):
    """Every output index (n, k or c, p, q), in row-major order."""
    return itertools.product(range(n), range(channels), range(g.P), range(g.Q))


def _taps(g, p: int, q: int):
    """(r, s, h, v) of each kernel offset (r, s) of output (p, q), row-major, whose input pixel
    (h, v) lies inside x: h = p*sh - ph + r*dh, v = q*sw - pw + s*dw (pools: no dilation)."""
    dh, dw = getattr(g, "dil_h", 1), getattr(g, "dil_w", 1)
    for r in range(g.R):
        for s in range(g.S):
            h = p * g.stride_h - g.pad_h + r * dh
            v = q * g.stride_w - g.pad_w + s * dw
            if 0 <= h < g.H and 0 <= v < g.W:
                yield r, s, h, v


# ---- convolution -------------------------------------------------------------------------

def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1):
    """y[n, k, p, q] = b[k] + sum over c, r, s of w[k, c, r, s] * x[n, c, h, v] (0 outside x)."""
    x, w, b = _f64(x), _f64(w), _f64(b)
    g = conv_sizes(x.shape, w.shape, stride, padding, dilation)
    if b is not None and b.shape != (g.K,):
        raise ValueError(f"b has shape {b.shape}, expected {(g.K,)}")
    y = np.zeros(g.y_shape)
    for n, k, p, q in _outputs(g.N, g.K, g):
        total = 0.0 if b is None else b[k]
        for c in range(g.C):
            for r, s, h, v in _taps(g, p, q):
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
    g = conv_sizes(x.shape, w.shape, stride, padding, dilation)
    if dy.shape != g.y_shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {g.y_shape}")
    dx = np.zeros(g.x_shape)
    dw = np.zeros(g.w_shape)
    db = np.zeros(g.K)
    for n, k, p, q in _outputs(g.N, g.K, g):
        grad = dy[n, k, p, q]
        db[k] += grad
        for c in range(g.C):
            for r, s, h, v in _taps(g, p, q):
                dx[n, c, h, v] += w[k, c, r, s] * grad
                dw[k, c, r, s] += x[n, c, h, v] * grad
    return dx, dw, (db if has_bias else None)


# ---- max pooling ---------------------------------------------------------------------------

def _max_window(x, n, c, p, q, g):
    """(value, (h, v)) of the max of one window, over its real entries only (padding is -inf
    and never the argmax): the first NaN, else the first of tied maxima in row-major order."""
    best, where = -math.inf, None
    for _, _, h, v in _taps(g, p, q):
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
    g = pool_sizes(x.shape, kernel_size, stride, padding)
    y = np.zeros(g.y_shape)
    for n, c, p, q in _outputs(g.N, g.C, g):
        y[n, c, p, q] = _max_window(x, n, c, p, q, g)[0]
    return y


def maxpool2d_backward(dy, x, kernel_size=2, stride=None, padding=0):
    """dx[n, c, argmax of window (p, q)] += dy[n, c, p, q]."""
    dy, x = _f64(dy), _f64(x)
    g = pool_sizes(x.shape, kernel_size, stride, padding)
    if dy.shape != g.y_shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {g.y_shape}")
    dx = np.zeros(g.x_shape)
    for n, c, p, q in _outputs(g.N, g.C, g):
        h, v = _max_window(x, n, c, p, q, g)[1]
        dx[n, c, h, v] += dy[n, c, p, q]
    return dx


# ---- average pooling -----------------------------------------------------------------------

def avgpool2d_forward(x, kernel_size=2, stride=None, padding=0):
    """y[n, c, p, q] = sum over r, s of x[n, c, p*sh - ph + r, q*sw - pw + s] / (R*S);
    padding counts as zeros (``count_include_pad=True``)."""
    x = _f64(x)
    g = pool_sizes(x.shape, kernel_size, stride, padding)
    y = np.zeros(g.y_shape)
    for n, c, p, q in _outputs(g.N, g.C, g):
        total = 0.0
        for _, _, h, v in _taps(g, p, q):
            total += x[n, c, h, v]
        y[n, c, p, q] = total / (g.R * g.S)
    return y


def avgpool2d_backward(dy, x_shape, kernel_size=2, stride=None, padding=0):
    """dx[n, c, h, v] = sum of dy[n, c, p, q] / (R*S) over the windows (p, q) containing (h, v)."""
    dy = _f64(dy)
    g = pool_sizes(tuple(x_shape), kernel_size, stride, padding)
    if dy.shape != g.y_shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {g.y_shape}")
    dx = np.zeros(g.x_shape)
    for n, c, p, q in _outputs(g.N, g.C, g):
        for _, _, h, v in _taps(g, p, q):
            dx[n, c, h, v] += dy[n, c, p, q] / (g.R * g.S)
    return dx


# ---- training glue -------------------------------------------------------------------------
# Elementwise formulas of the backend contract in float64 (vectorised: nothing to loop over).

def relu_forward(x):
    """y = max(x, 0), a NaN staying NaN."""
    x = _f64(x)
    return np.where((x > 0) | np.isnan(x), x, 0.0)


def relu_backward(dy, x):
    """dx = dy * (x > 0), a multiply: an inf or NaN in dy gives NaN where x <= 0."""
    with np.errstate(invalid="ignore"):
        return _f64(dy) * (_f64(x) > 0)


def dropout_apply(x, keep, scale):
    """(x * keep) * scale; ``scale`` as given (round it to the arrays' dtype first to get the
    contract's result in that dtype: one rounding of an exact float64 product)."""
    with np.errstate(invalid="ignore"):
        return _f64(x) * np.asarray(keep, dtype=bool) * float(scale)


def cross_entropy(logits, labels, label_smoothing=0.0):
    """-> (mean loss, dlogits): loss = mean over rows of -sum_j t[i, j] * log softmax(z)[i, j]
    with t = (1 - smoothing) * onehot(label) + smoothing / K; dlogits = (softmax - t) / N."""
    z = _f64(logits)
    n, k = z.shape
    t = np.full((n, k), label_smoothing / k)
    t[np.arange(n), np.asarray(labels)] += 1.0 - label_smoothing
    shifted = z - z.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(t * logp).sum() / n), (np.exp(logp) - t) / n


def sgd_step(p, grad, velocity, lr, momentum, weight_decay, nesterov):
    """-> (new p, new velocity or None): g = grad + wd*p; v = momentum*v + g;
    p - lr * (g + momentum*v if nesterov else v)  (no momentum: p - lr*g)."""
    p, g = _f64(p), _f64(grad) + weight_decay * _f64(p)
    if not momentum:
        return p - lr * g, None
    v = momentum * _f64(velocity) + g
    return p - lr * (g + momentum * v if nesterov else v), v


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
    "conv_sizes", "pool_sizes", "conv2d_forward", "conv2d_backward", "maxpool2d_forward",
    "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward", "relu_forward",
    "relu_backward", "dropout_apply", "cross_entropy", "sgd_step", "splitmix64", "dropout_mask",
]
