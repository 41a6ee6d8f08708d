"""The backend contract, written once.

A backend runs the heavy ops of a CNN on one kind of hardware. Everything above it (layers,
losses, optimisers, training) calls only the methods below, or the backend's ``xp`` array module
for plain elementwise glue, and never asks which backend it has.

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel, P×Q output,
sh/sw stride, ph/pw padding before (top/left), dh/dw dilation. Layout NCHW, weights (K, C, R, S).

Arrays are the backend's own (``numpy.ndarray`` on the CPU backends, ``cupy.ndarray`` on the
GPU): convert with ``asarray`` / ``to_numpy``. A public method validates its arguments with
:mod:`polycnn.geometry`, so every backend raises the same errors; it then calls a private
``_op`` that each backend implements and that may assume valid, C-contiguous input of one dtype
(float32 or float64). The output dtype is the input dtype.

conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, precision="float32") -> (y, ctx)
    x (N, C, H, W), w (K, C, R, S), b (K,) or None  ->  y (N, K, P, Q)::

        for n, k, p, q:
            y[n, k, p, q] = b[k] + sum over c, r, s of
                w[k, c, r, s] * x[n, c, p*sh - ph + r*dh, q*sw - pw + s*dw]   (0 outside x)

    Cross-correlation (no kernel flip), as in PyTorch. ``padding`` is an int, an (h, w) pair,
    ``"valid"`` (0) or ``"same"`` (stride 1; the odd pixel goes after). Output size rounds down.
    ``precision``: ``"float32"`` (the default) computes in the inputs' dtype; ``"tf32"`` (float32
    inputs, a backend whose ``precisions`` name it: ``cupy``, ``cupy-emu``) rounds x, w and, in
    the backward, dy to TF32 (10-bit mantissa) and sums in fp32 on tensor cores, as PyTorch's
    cuDNN convolutions do by default. The backward uses the forward's precision. Any other value,
    TF32 with float64 inputs, or TF32 on a backend without it is a ValueError (never a silent
    fall-back to fp32).

conv2d_backward(dy, ctx, input_grad=True) -> (dx, dw, db)
    dy (N, K, P, Q) -> dx (N, C, H, W), dw (K, C, R, S), db (K,) or None when b was None;
    dx is None with ``input_grad=False`` (a first layer: the images need no gradient)::

        dx[n, c, h, w] = sum of w[k, c, r, s] * dy[n, k, p, q] over all (k, r, s, p, q) with
                         h = p*sh - ph + r*dh and w = q*sw - pw + s*dw
        dw[k, c, r, s] = sum over n, p, q of dy[n, k, p, q] * x[n, c, p*sh-ph+r*dh, q*sw-pw+s*dw]
        db[k]          = sum over n, p, q of dy[n, k, p, q]

maxpool2d_forward(x, kernel_size=2, stride=None, padding=0) -> (y, ctx)
    x (N, C, H, W) -> y (N, C, P, Q); stride None means kernel_size; padding <= kernel/2::

        y[n, c, p, q] = max over r, s of x[n, c, p*sh - ph + r, q*sw - pw + s]  (-inf outside x)

    A NaN in a window is its max. When several entries tie, the first in row-major window
    order (smallest r, then smallest s) is the argmax; the backward sends the gradient there.
    The argmax is always a real entry of x, never padding (PyTorch's rule): a window whose
    real entries are all -inf sends its gradient to the first of them.

maxpool2d_backward(dy, ctx) -> dx
    dx[n, c, argmax window position of (n, c, p, q)] += dy[n, c, p, q]; zero elsewhere.

avgpool2d_forward(x, kernel_size=2, stride=None, padding=0) -> (y, ctx)
    y[n, c, p, q] = sum over r, s of x[n, c, p*sh - ph + r, q*sw - pw + s] / (R*S)
    Padding counts as zeros in the mean (PyTorch's ``count_include_pad=True``).

avgpool2d_backward(dy, ctx) -> dx
    dx[n, c, h, w] = sum of dy[n, c, p, q] / (R*S) over the windows (p, q) that contain (h, w).

The glue below has the same shape: the public method checks its arguments once (array type,
float dtype, shapes, labels) and calls ``_<op>`` with C-contiguous arrays; the base class writes
each ``_<op>`` with ``xp``, and a backend may replace it with its own kernels.

linear_forward(x, w, b) -> (y, ctx); linear_backward(dy, ctx, input_grad=True) -> (dx, dw, db)
    x (N, F), w (O, F), b (O,) or None: y = x @ w.T + b; dx None with ``input_grad=False``.
dropout_apply(x, keep, scale) -> (x * keep) * scale   (keep may broadcast, as Dropout2d's does)
relu_forward(x) -> (y, ctx); relu_backward(dy, ctx) -> dx
    y = max(x, 0); dx = dy where x > 0, else 0 (the context keeps x).
sgd_step(p, grad, velocity, lr, momentum, weight_decay, nesterov) -> None
    In place: g = grad + wd*p; velocity = momentum*velocity + g;
    p -= lr * (g + momentum*velocity if nesterov else velocity)  (velocity None without momentum).
cross_entropy(logits, labels, label_smoothing=0.0) -> (loss, dlogits)
    logits (N, K), labels (N,) integer classes on the host; loss is a Python float (mean over N)
    and dlogits its gradient (softmax - target) / N, on the backend. Labels are checked here
    (``_checks.check_labels``), the one place; empty logits are a ValueError.
dropout_mask(shape, p, key) -> keep, a bool array of ``shape`` made on the backend::

        keep[i] = (splitmix64(key + (i + 1) * 0x9E3779B97F4A7C15) >> 40) >= ceil(p * 2**24)

    for i the C-order flat index, arithmetic modulo 2**64 (SplitMix64's output function; its
    top 24 bits as a uniform draw in [0, 1)). Integer arithmetic, so every backend makes the
    same mask from the same ``key`` (one draw from the host generator): no mask crosses from the
    host, and dropout stays reproducible across backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import hashing
from ..geometry import (
    ConvGeometry,
    PoolGeometry,
    check_array,
    check_same_dtype,
    conv_geometry,
    pool_geometry,
)
from ._checks import check_float_array, check_in_place, check_labels, check_like, check_mask


def _conv_geometry(x_shape, w_shape, b_shape, stride, padding, dilation):
    return conv_geometry(x_shape, w_shape, stride, padding, dilation, b_shape=b_shape)


_GEOMETRY_CACHE: dict = {}


def _typed(v):
    """A cache key that tells 1 from 1.0 and True, inside tuples too (validation must not be
    skipped because an equal value of another type was seen first)."""
    if isinstance(v, (tuple, list)):
        return (type(v),) + tuple(_typed(e) for e in v)
    return (type(v), v)


def _cached(fn, shapes: tuple, *args):
    """``fn(*shapes, *args)`` for a geometry function, remembered (a model asks for the same few
    shapes every step). ``shapes`` are arrays' shapes (tuples of ints); ``args`` the caller's
    other arguments, keyed with their types. Arguments that do not hash are computed each time,
    errors never remembered."""
    try:
        key = (fn, shapes) + tuple(_typed(a) for a in args)
        hit = _GEOMETRY_CACHE.get(key)
    except TypeError:  # unhashable
        return fn(*shapes, *args)
    if hit is None:
        hit = fn(*shapes, *args)
        if len(_GEOMETRY_CACHE) >= 1024:
            _GEOMETRY_CACHE.clear()
        _GEOMETRY_CACHE[key] = hit
    return hit


@dataclass
class OpContext:
    """What a forward pass hands to its backward: the geometry, the inputs the backward needs,
    and ``saved``, which belongs to the backend that made it (column buffers, argmax, ...)."""

    op: str
    geom: Any
    dtype: np.dtype
    inputs: dict = field(default_factory=dict)
    saved: Any = None


class Backend:
    """Base class of every backend; see the module docstring for the contract."""

    #: registry name, e.g. ``"numpy"``
    name = "base"
    #: the array module used for glue: ``numpy`` or ``cupy`` (or a stand-in)
    xp = np
    #: the array type this backend's ops accept (every backend names its own; None, the base
    #: class's, is any array: optim's plain updates, through the arrays' own operators)
    array_type: Any = None
    #: True when arrays live on an accelerator
    is_device = False
    #: the conv2d ``precision`` values this backend computes (see the contract)
    precisions: tuple = ("float32",)

    # ---- arrays -------------------------------------------------------------------------
    def asarray(self, x, dtype=None):
        """A host array (or anything NumPy accepts) as this backend's array, C-contiguous."""
        return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def synchronize(self) -> None:
        """Wait for queued work (a no-op on CPU backends); benchmarks call it before timing."""

    def info(self) -> dict:
        """Facts for ``polycnn backends``: version, threads, device."""
        return {"version": np.__version__, "threads": None, "device": "cpu"}

    def __repr__(self):
        return f"<polycnn backend {self.name!r}>"

    # ---- validation shared by every backend -----------------------------------------------
    def _prepare(self, x, name: str, ndim: int):
        check_array(x, name, ndim, self.array_type)
        return self.xp.ascontiguousarray(x)

    def _check_grad(self, dy, ctx: OpContext, op: str, expected_shape=None):
        """dy of ``op``'s backward: the forward's output shape (``expected_shape``, else the
        geometry's y_shape) and dtype."""
        if not isinstance(ctx, OpContext) or ctx.op != op:
            raise TypeError(f"ctx must be the context returned by {op}_forward, got {ctx!r:.80}")
        if expected_shape is None:
            expected_shape = ctx.geom.y_shape
        check_array(dy, "dy", len(expected_shape), self.array_type)
        if tuple(dy.shape) != tuple(expected_shape):
            raise ValueError(
                f"{ctx.op} backward: dy has shape {tuple(dy.shape)}, expected"
                f" {tuple(expected_shape)} (the forward output's shape)"
            )
        if np.dtype(dy.dtype) != ctx.dtype:
            raise TypeError(f"{ctx.op} backward: dy is {dy.dtype} but the forward ran in {ctx.dtype}")
        return self.xp.ascontiguousarray(dy)

    # ---- convolution --------------------------------------------------------------------
    def conv2d_forward(self, x, w, b=None, stride=1, padding=0, dilation=1, precision="float32"):
        x = self._prepare(x, "x", 4)
        w = self._prepare(w, "w", 4)
        if b is not None:
            b = self._prepare(b, "b", 1)
        dtype = check_same_dtype(x=x, w=w, b=b)
        self._check_precision(precision, dtype)
        shapes = (tuple(x.shape), tuple(w.shape), None if b is None else tuple(b.shape))
        g = _cached(_conv_geometry, shapes, stride, padding, dilation)
        # NOTE: only a backend that lists another precision is asked for it (its _op takes it)
        y, saved = (self._conv2d_forward(x, w, b, g) if precision == "float32"
                    else self._conv2d_forward(x, w, b, g, precision=precision))
        ctx = OpContext("conv2d", g, dtype, {"x": x, "w": w, "has_bias": b is not None,
                                              "precision": precision}, saved)
        return y, ctx

    def _check_precision(self, precision, dtype) -> None:
        if not isinstance(precision, str) or precision not in ("float32", "tf32"):
            raise ValueError(f"conv2d: precision must be 'float32' or 'tf32', got {precision!r}")
        if precision not in self.precisions:
            raise ValueError(f"conv2d: precision={precision!r} needs tensor cores; backend"
                             f" {self.name!r} computes {', '.join(map(repr, self.precisions))}"
                             " only (use backend 'cupy', or precision='float32')")
        if precision == "tf32" and dtype != np.float32:
            raise ValueError(f"conv2d: precision='tf32' rounds float32 inputs; x is {dtype}"
                             " (use precision='float32' for float64)")

    def conv2d_backward(self, dy, ctx, input_grad: bool = True):
        dy = self._check_grad(dy, ctx, "conv2d")
        dx, dw, db = self._conv2d_backward(dy, ctx, bool(input_grad))
        return (dx if input_grad else None), dw, (db if ctx.inputs["has_bias"] else None)

    # ---- pooling ------------------------------------------------------------------------
    def maxpool2d_forward(self, x, kernel_size=2, stride=None, padding=0):
        x = self._prepare(x, "x", 4)
        g = _cached(pool_geometry, (tuple(x.shape),), kernel_size, stride, padding)
        y, saved = self._maxpool2d_forward(x, g)
        return y, OpContext("maxpool2d", g, np.dtype(x.dtype), {}, saved)

    def maxpool2d_backward(self, dy, ctx):
        dy = self._check_grad(dy, ctx, "maxpool2d")
        return self._maxpool2d_backward(dy, ctx)

    def avgpool2d_forward(self, x, kernel_size=2, stride=None, padding=0):
        x = self._prepare(x, "x", 4)
        g = _cached(pool_geometry, (tuple(x.shape),), kernel_size, stride, padding)
        y = self._avgpool2d_forward(x, g)
        return y, OpContext("avgpool2d", g, np.dtype(x.dtype), {}, None)

    def avgpool2d_backward(self, dy, ctx):
        dy = self._check_grad(dy, ctx, "avgpool2d")
        return self._avgpool2d_backward(dy, ctx)

    # ---- what each backend implements (valid, contiguous, one dtype) ----------------------
    def _conv2d_forward(self, x, w, b, g: ConvGeometry):
        """-> (y, saved)"""
        raise NotImplementedError

    def _conv2d_backward(self, dy, ctx: OpContext, input_grad: bool):
        """-> (dx, dw, db); dx may be anything when not ``input_grad``, db when the forward
        had no bias."""
        raise NotImplementedError

    def _maxpool2d_forward(self, x, g: PoolGeometry):
        """-> (y, saved), saved typically the argmax"""
        raise NotImplementedError

    def _maxpool2d_backward(self, dy, ctx: OpContext):
        raise NotImplementedError

    def _avgpool2d_forward(self, x, g: PoolGeometry):
        raise NotImplementedError

    def _avgpool2d_backward(self, dy, ctx: OpContext):
        raise NotImplementedError

    # ---- training glue: checked here once, then the backend's _op -------------------------
    def _prepare_any(self, x, name: str):
        """``x`` as a C-contiguous float array of this backend, of any rank."""
        check_float_array(x, name, self.array_type)
        return self.xp.ascontiguousarray(x)

    def linear_forward(self, x, w, b=None):
        x = self._prepare(x, "x", 2)
        w = self._prepare(w, "w", 2)
        if b is not None:
            b = self._prepare(b, "b", 1)
        dtype = check_same_dtype(x=x, w=w, b=b)
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"linear: x has {x.shape[1]} features (shape {tuple(x.shape)}) but"
                             f" w takes {w.shape[1]} (shape {tuple(w.shape)})")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"linear: b has shape {tuple(b.shape)}, expected ({w.shape[0]},)"
                             f" (w has shape {tuple(w.shape)})")
        y = self._linear_forward(x, w, b)
        return y, OpContext("linear", None, dtype, {"x": x, "w": w, "has_bias": b is not None})

    def linear_backward(self, dy, ctx, input_grad: bool = True):
        shape = (ctx.inputs["x"].shape[0], ctx.inputs["w"].shape[0]) \
            if isinstance(ctx, OpContext) and ctx.op == "linear" else None
        dy = self._check_grad(dy, ctx, "linear", shape)
        dx, dw, db = self._linear_backward(dy, ctx, bool(input_grad))
        return (dx if input_grad else None), dw, (db if ctx.inputs["has_bias"] else None)

    def relu_forward(self, x):
        x = self._prepare_any(x, "x")
        return self._relu_forward(x), OpContext("relu", None, np.dtype(x.dtype), {"x": x})

    def relu_backward(self, dy, ctx):
        shape = ctx.inputs["x"].shape if isinstance(ctx, OpContext) and ctx.op == "relu" else None
        dy = self._check_grad(dy, ctx, "relu", shape)
        return self._relu_backward(dy, ctx)

    def dropout_mask(self, shape, p: float, key: int):
        shape, threshold, key = hashing.check_mask_args(shape, p, key)
        return self._dropout_mask(shape, threshold, key)

    def dropout_apply(self, x, keep, scale: float):
        """(x * keep) * scale, keep a bool mask of x's shape or one that broadcasts to it
        (Dropout2d's (N, C, 1, 1)); Dropout's forward and its backward. The ``_op`` gets the
        mask at x's shape (each entry is one product, so the bits are the same)."""
        x = self._prepare_any(x, "x")
        check_mask(keep, x.shape, self.array_type)
        if tuple(keep.shape) != tuple(x.shape):
            keep = self.xp.broadcast_to(keep, x.shape)
        return self._dropout_apply(x, self.xp.ascontiguousarray(keep), float(scale))

    def sgd_step(self, p, grad, velocity, lr: float, momentum: float, weight_decay: float,
                 nesterov: bool) -> None:
        """One SGD update of the array ``p`` in place (PyTorch's form, see optim.SGD);
        ``velocity`` is updated in place too (None without momentum)."""
        check_float_array(p, "p", self.array_type)
        check_in_place(p, "p", "sgd_step")
        check_float_array(grad, "grad", self.array_type)
        check_like(grad, "grad", p.shape, p.dtype, "sgd_step")
        if momentum:
            check_float_array(velocity, "velocity", self.array_type)
            check_like(velocity, "velocity", p.shape, p.dtype, "sgd_step")
            check_in_place(velocity, "velocity", "sgd_step")
        else:
            velocity = None
        grad = grad if grad.flags.c_contiguous else grad.copy()  # a copy of the array's own type
        self._sgd_step(p, grad, velocity, float(lr), float(momentum), float(weight_decay),
                       bool(nesterov))

    def cross_entropy(self, logits, labels, label_smoothing: float = 0.0):
        """-> (mean loss as a float, dlogits on the backend); ``label_smoothing`` in [0, 1)."""
        if getattr(logits, "ndim", None) != 2:
            raise ValueError(f"logits must be 2-D (N, classes), got shape"
                             f" {tuple(getattr(logits, 'shape', ()))}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        logits = self._prepare(logits, "logits", 2)
        n, k = logits.shape
        if n == 0 or k == 0:
            raise ValueError(f"cross_entropy: logits {tuple(logits.shape)} are empty (no rows"
                             " or no classes)")
        labels = check_labels(labels, n, k)
        return self._cross_entropy(logits, labels, float(label_smoothing))

    # ---- the glue's _ops: a default written with xp (a backend may run kernels instead) ---
    def _linear_forward(self, x, w, b):
        """-> y"""
        y = self.xp.matmul(x, w.T)
        if b is not None:
            y += b
        return y

    def _linear_backward(self, dy, ctx: OpContext, input_grad: bool):
        """-> (dx, dw, db); dx may be anything when not ``input_grad``, db without a bias."""
        xp = self.xp
        x, w = ctx.inputs["x"], ctx.inputs["w"]
        dx = xp.matmul(dy, w) if input_grad else None
        dw = xp.matmul(dy.T, x)
        db = dy.sum(axis=0) if ctx.inputs["has_bias"] else None
        return dx, dw, db

    def _relu_forward(self, x):
        """-> y"""
        return self.xp.maximum(x, 0)

    def _relu_backward(self, dy, ctx: OpContext):
        return dy * (ctx.inputs["x"] > 0)

    def _dropout_mask(self, shape: tuple, threshold: int, key: int):
        return hash_mask(self.xp, shape, threshold, key)

    def _dropout_apply(self, x, keep, scale: float):
        """keep has x's shape"""
        y = x * keep
        y *= x.dtype.type(scale)
        return y

    def _sgd_step(self, p, grad, velocity, lr: float, momentum: float, weight_decay: float,
                  nesterov: bool) -> None:
        """Written with the arrays' own operators; p and velocity contiguous, grad too."""
        t = p.dtype.type
        g = grad
        if weight_decay:
            g = g + t(weight_decay) * p
        if momentum:
            velocity *= t(momentum)
            velocity += g
            g = g + t(momentum) * velocity if nesterov else velocity
        p -= t(lr) * g

    def _cross_entropy(self, logits, labels: np.ndarray, label_smoothing: float):
        """labels: int64 on the host, checked; -> (loss as a float, dlogits)"""
        xp = self.xp
        n, k = logits.shape
        labels = xp.asarray(labels)
        shifted = logits - logits.max(axis=1, keepdims=True)
        logsum = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        logp = shifted - logsum
        target = xp.full(logits.shape, label_smoothing / k, dtype=logits.dtype)
        target[xp.arange(n), labels] += 1.0 - label_smoothing
        loss = float(-(target * logp).sum() / n)
        dlogits = (xp.exp(logp) - target) / n
        return loss, dlogits.astype(logits.dtype, copy=False)


def hash_mask(xp, shape: tuple, threshold: int, key: int):
    """dropout_mask's keep (see the contract) computed with the array module ``xp``: its uint64
    arithmetic wraps as the hash needs."""
    u64 = xp.uint64
    z = xp.arange(1, int(np.prod(shape)) + 1, dtype=u64)
    z *= u64(hashing.GAMMA)
    z += u64(key)
    z ^= z >> u64(30)
    z *= u64(hashing.MIX1)
    z ^= z >> u64(27)
    z *= u64(hashing.MIX2)
    z ^= z >> u64(31)
    return (z >> u64(40) >= u64(threshold)).reshape(shape)
