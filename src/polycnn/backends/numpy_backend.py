"""The NumPy backend: see :mod:`polycnn.backends.base` for the contract.

Optimisations:
- conv as im2col + one batched GEMM per chunk of samples. The column buffer is built with one
  strided copy per kernel offset (R·S Python iterations, never one per sample, channel or pixel)
  and holds at most ``COLUMN_BUFFER_BYTES``: a large batch is processed in chunks of samples, so
  memory stays bounded whatever N is.
- the backward recomputes the columns chunk by chunk (no buffer kept between passes), gets dw
  from the same columns and dx by scattering ``wᵀ·dy`` back with one strided add per offset.
- pools run one vectorised pass per window offset over (N, C, P, Q) views; max-pool keeps the
  offset of the first maximum as ``uint8`` (int32 for windows over 256 entries).
"""

from __future__ import annotations

import os

import numpy as np

from ..geometry import ConvGeometry, PoolGeometry
from .base import Backend

#: Upper bound on the temporary im2col buffer, in bytes (the batch is chunked to respect it;
#: a single sample larger than this still runs, one sample at a time).
COLUMN_BUFFER_BYTES = 32 * 2**20


def _window(xpad, r0: int, s0: int, P: int, Q: int, sh: int, sw: int):
    """The (n, C, P, Q) strided view of ``xpad`` seen by kernel offset (r0, s0)."""
    return xpad[:, :, r0:r0 + sh * (P - 1) + 1:sh, s0:s0 + sw * (Q - 1) + 1:sw]


def _padded(x, top: int, bottom: int, left: int, right: int, fill):
    if top == bottom == left == right == 0:
        return x
    n, c, h, w = x.shape
    out = np.full((n, c, h + top + bottom, w + left + right), fill, dtype=x.dtype)
    out[:, :, top:top + h, left:left + w] = x
    return out


def _chunks(n: int, bytes_per_sample: int, cap: int):
    step = max(1, cap // max(1, bytes_per_sample))
    for start in range(0, n, step):
        yield start, min(n, start + step)


class NumpyBackend(Backend):
    """Vectorised NumPy; arrays are ``numpy.ndarray``. See the base class for the contract."""

    name = "numpy"
    xp = np
    array_type = np.ndarray

    def __init__(self, column_buffer_bytes: int = COLUMN_BUFFER_BYTES):
        self.column_buffer_bytes = int(column_buffer_bytes)

    def info(self) -> dict:
        threads = None
        try:
            from threadpoolctl import threadpool_info

            blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
            if blas:
                threads = blas[0].get("num_threads")
        except ImportError:
            threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count()
        return {"version": f"numpy {np.__version__}", "threads": threads, "device": "cpu"}

    # ---- convolution --------------------------------------------------------------------
    def _columns(self, x, g: ConvGeometry, out):
        """im2col of samples ``x`` (n, C, H, W) into ``out`` (n, C, R, S, P, Q)."""
        xpad = _padded(x, g.pad_h, g.pad_bottom, g.pad_w, g.pad_right, 0)
        for r in range(g.R):
            for s in range(g.S):
                out[:, :, r, s] = _window(xpad, r * g.dil_h, s * g.dil_w, g.P, g.Q,
                                          g.stride_h, g.stride_w)
        return out

    def _col_chunks(self, g: ConvGeometry, dtype):
        crs, pq = g.C * g.R * g.S, g.P * g.Q
        per_sample = crs * pq * np.dtype(dtype).itemsize
        for n0, n1 in _chunks(g.N, per_sample, self.column_buffer_bytes):
            yield n0, n1

    def _conv2d_forward(self, x, w, b, g: ConvGeometry):
        crs, pq = g.C * g.R * g.S, g.P * g.Q
        y = np.empty(g.y_shape, dtype=x.dtype)
        w2 = w.reshape(g.K, crs)
        buf = None
        for n0, n1 in self._col_chunks(g, x.dtype):
            if buf is None or buf.shape[0] != n1 - n0:
                buf = np.empty((n1 - n0, g.C, g.R, g.S, g.P, g.Q), dtype=x.dtype)
            cols = self._columns(x[n0:n1], g, buf).reshape(n1 - n0, crs, pq)
            np.matmul(w2, cols, out=y[n0:n1].reshape(n1 - n0, g.K, pq))
        if b is not None:
            y += b.reshape(1, g.K, 1, 1)
        return y, None

    def _conv2d_backward(self, dy, ctx):
        g: ConvGeometry = ctx.geom
        x, w = ctx.inputs["x"], ctx.inputs["w"]
        crs, pq = g.C * g.R * g.S, g.P * g.Q
        w2 = w.reshape(g.K, crs)
        dw = np.zeros((g.K, crs), dtype=x.dtype)
        dx = np.empty(g.x_shape, dtype=x.dtype)
        Hp, Wp = g.H + g.pad_h + g.pad_bottom, g.W + g.pad_w + g.pad_right
        unpadded = (Hp, Wp) == (g.H, g.W)
        buf = None
        for n0, n1 in self._col_chunks(g, x.dtype):
            n = n1 - n0
            if buf is None or buf.shape[0] != n:
                buf = np.empty((n, g.C, g.R, g.S, g.P, g.Q), dtype=x.dtype)
            dy3 = dy[n0:n1].reshape(n, g.K, pq)
            cols = self._columns(x[n0:n1], g, buf).reshape(n, crs, pq)
            # dw += sum over samples of dy[n] · cols[n]ᵀ, in sample order (deterministic)
            dw += np.matmul(dy3, cols.transpose(0, 2, 1)).sum(axis=0)
            # dx: columns of wᵀ·dy scattered back (col2im), one strided add per offset
            dcols = np.matmul(w2.T, dy3, out=buf.reshape(n, crs, pq)).reshape(
                n, g.C, g.R, g.S, g.P, g.Q)
            dxpad = dx[n0:n1] if unpadded else np.empty((n, g.C, Hp, Wp), dtype=x.dtype)
            dxpad[...] = 0
            for r in range(g.R):
                for s in range(g.S):
                    _window(dxpad, r * g.dil_h, s * g.dil_w, g.P, g.Q,
                            g.stride_h, g.stride_w)[...] += dcols[:, :, r, s]
            if not unpadded:
                dx[n0:n1] = dxpad[:, :, g.pad_h:g.pad_h + g.H, g.pad_w:g.pad_w + g.W]
        db = dy.sum(axis=(0, 2, 3)) if ctx.inputs["has_bias"] else None
        return dx, dw.reshape(g.w_shape), db

    # ---- pooling ------------------------------------------------------------------------
    def _pool_views(self, xpad, g: PoolGeometry):
        for r in range(g.R):
            for s in range(g.S):
                yield r * g.S + s, _window(xpad, r, s, g.P, g.Q, g.stride_h, g.stride_w)

    def _maxpool2d_forward(self, x, g: PoolGeometry):
        xpad = _padded(x, g.pad_h, g.pad_h, g.pad_w, g.pad_w, -np.inf)
        views = self._pool_views(xpad, g)
        _, first = next(views)
        y = first.copy()
        arg = np.zeros(g.y_shape, dtype=np.uint8 if g.R * g.S <= 256 else np.int32)
        has_nan = bool(np.isnan(x).any())
        for idx, v in views:
            better = v > y
            if has_nan:  # NOTE: a NaN is the max of its window (first NaN wins), as in PyTorch
                better |= np.isnan(v) & ~np.isnan(y)
            np.copyto(y, v, where=better)
            np.copyto(arg, idx, where=better)
        return y, arg

    def _maxpool2d_backward(self, dy, ctx):
        g: PoolGeometry = ctx.geom
        arg = ctx.saved
        dxpad = np.zeros((g.N, g.C, g.H + 2 * g.pad_h, g.W + 2 * g.pad_w), dtype=dy.dtype)
        tmp = np.empty_like(dy)
        for idx, view in self._pool_views(dxpad, g):
            np.multiply(dy, arg == idx, out=tmp)
            view += tmp
        return np.ascontiguousarray(dxpad[:, :, g.pad_h:g.pad_h + g.H, g.pad_w:g.pad_w + g.W])

    def _avgpool2d_forward(self, x, g: PoolGeometry):
        xpad = _padded(x, g.pad_h, g.pad_h, g.pad_w, g.pad_w, 0)
        y = np.zeros(g.y_shape, dtype=x.dtype)
        for _, v in self._pool_views(xpad, g):
            y += v
        y *= x.dtype.type(1.0 / (g.R * g.S))
        return y

    def _avgpool2d_backward(self, dy, ctx):
        g: PoolGeometry = ctx.geom
        dxpad = np.zeros((g.N, g.C, g.H + 2 * g.pad_h, g.W + 2 * g.pad_w), dtype=dy.dtype)
        share = dy * dy.dtype.type(1.0 / (g.R * g.S))
        for _, view in self._pool_views(dxpad, g):
            view += share
        return np.ascontiguousarray(dxpad[:, :, g.pad_h:g.pad_h + g.H, g.pad_w:g.pad_w + g.W])


def create() -> NumpyBackend:
    return NumpyBackend()
