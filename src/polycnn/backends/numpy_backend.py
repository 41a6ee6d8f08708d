"""The NumPy backend: see :mod:`polycnn.backends.base` for the contract.

Optimisations:
- conv as im2col + one GEMM per chunk of samples. The column buffer is built with one copy per
  kernel offset (R·S Python iterations, never one per sample, channel or pixel) and holds at most
  ``COLUMN_BUFFER_BYTES``: a large batch is processed in chunks of samples, so memory stays
  bounded whatever N is. With stride 1 the copies are contiguous ("wide rows", see ``_layout``).
- the backward recomputes the columns chunk by chunk (no buffer kept between passes), gets dw
  from the same columns and dx by adding ``wᵀ·dy`` back with one add per offset (col2im).
- pools run one vectorised pass per window offset over (N, C, P, Q) views; max-pool keeps the
  offset of the first maximum as ``uint8`` (int32 for windows over 256 entries).
"""

from __future__ import annotations

import os
import threading

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
        self._local = threading.local()

    def _scratch(self, key: str, shape, dtype, zero: bool = False):
        """A temporary array reused across calls (per thread).

        NOTE: fresh multi-MB allocations are mmapped and page-faulted on first touch, which cost
        as much as the im2col copy itself; reusing the buffers keeps them mapped. What is kept is
        bounded by the column cap plus the padded input of one chunk.
        """
        store = self._local.__dict__
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        raw = store.get(key)
        if raw is None or raw.nbytes < size:
            raw = store[key] = np.empty(size, dtype=np.uint8)
        out = raw[:size].view(dtype).reshape(shape)
        if zero:
            out.fill(0)
        return out

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
    @staticmethod
    def _layout(g: ConvGeometry):
        """How the column buffer is laid out: ``(wide, row, L)``.

        NOTE: with stride 1 every kernel offset sees a *contiguous* run of the flattened padded
        input, shifted by ``r*dh*Wp + s*dw``. Columns then hold "wide" output rows of ``Wp``
        pixels (the last ``Wp - Q`` of each are garbage, cropped from y and zeroed in dy), so
        im2col and col2im are plain contiguous copies and adds instead of 2-D strided ones.
        """
        Wp = g.W + g.pad_w + g.pad_right
        wide = g.stride_h == 1 and g.stride_w == 1
        row = Wp if wide else g.Q
        return wide, row, g.P * row

    def _flat_padded(self, x, g: ConvGeometry):
        """Samples (n, C, H, W) zero-padded and flattened to (n, C, Hp*Wp + slack)."""
        n = x.shape[0]
        Hp, Wp = g.H + g.pad_h + g.pad_bottom, g.W + g.pad_w + g.pad_right
        flat = self._scratch("flat", (n, g.C, Hp * Wp + g.dil_w * (g.S - 1)), x.dtype, zero=True)
        flat[:, :, :Hp * Wp].reshape(n, g.C, Hp, Wp)[
            :, :, g.pad_h:g.pad_h + g.H, g.pad_w:g.pad_w + g.W] = x
        return flat

    def _columns(self, x, g: ConvGeometry, out):
        """im2col of samples ``x`` (n, C, H, W) into ``out`` (C, R, S, n, L)."""
        wide, row, L = self._layout(g)
        Wp = g.W + g.pad_w + g.pad_right
        if wide:
            flat = self._flat_padded(x, g)
        else:
            xpad = _padded(x, g.pad_h, g.pad_bottom, g.pad_w, g.pad_right, 0)
        for r in range(g.R):
            for s in range(g.S):
                if wide:
                    off = r * g.dil_h * Wp + s * g.dil_w
                    out[:, r, s] = flat[:, :, off:off + L].transpose(1, 0, 2)
                else:
                    out[:, r, s].reshape(g.C, -1, g.P, g.Q)[...] = _window(
                        xpad, r * g.dil_h, s * g.dil_w, g.P, g.Q, g.stride_h, g.stride_w
                    ).transpose(1, 0, 2, 3)
        return out

    def _col2im(self, dcols, g: ConvGeometry, n: int):
        """The adjoint of :meth:`_columns`: (C, R, S, n, L) summed back to (n, C, H, W)."""
        wide, row, L = self._layout(g)
        Hp, Wp = g.H + g.pad_h + g.pad_bottom, g.W + g.pad_w + g.pad_right
        if wide:
            flat = self._scratch("flat", (n, g.C, Hp * Wp + g.dil_w * (g.S - 1)), dcols.dtype,
                                 zero=True)
            for r in range(g.R):
                for s in range(g.S):
                    off = r * g.dil_h * Wp + s * g.dil_w
                    flat[:, :, off:off + L] += dcols[:, r, s].transpose(1, 0, 2)
            dxpad = flat[:, :, :Hp * Wp].reshape(n, g.C, Hp, Wp)
        else:
            dxpad = self._scratch("flat", (n, g.C, Hp, Wp), dcols.dtype, zero=True)
            for r in range(g.R):
                for s in range(g.S):
                    _window(dxpad, r * g.dil_h, s * g.dil_w, g.P, g.Q, g.stride_h, g.stride_w
                            )[...] += dcols[:, r, s].reshape(g.C, n, g.P, g.Q).transpose(1, 0, 2, 3)
        return dxpad[:, :, g.pad_h:g.pad_h + g.H, g.pad_w:g.pad_w + g.W]

    def _col_chunks(self, g: ConvGeometry, dtype):
        """(n0, n1, buffer) per chunk of samples; the buffer is (C, R, S, n, L), within the cap."""
        _, _, L = self._layout(g)
        per_sample = g.C * g.R * g.S * L * np.dtype(dtype).itemsize
        for n0, n1 in _chunks(g.N, per_sample, self.column_buffer_bytes):
            yield n0, n1, self._scratch("cols", (g.C, g.R, g.S, n1 - n0, L), dtype)

    def _conv2d_forward(self, x, w, b, g: ConvGeometry):
        _, row, L = self._layout(g)
        crs = g.C * g.R * g.S
        y = np.empty(g.y_shape, dtype=x.dtype)
        w2 = w.reshape(g.K, crs)
        for n0, n1, buf in self._col_chunks(g, x.dtype):
            n = n1 - n0
            cols = self._columns(x[n0:n1], g, buf).reshape(crs, n * L)
            # one GEMM per chunk: (K, CRS) · (CRS, n·L), then crop and reorder to (n, K, P, Q)
            out = np.matmul(w2, cols, out=self._scratch("out", (g.K, n * L), x.dtype))
            out = out.reshape(g.K, n, g.P, row)
            y[n0:n1] = out[..., :g.Q].transpose(1, 0, 2, 3)
        if b is not None:
            y += b.reshape(1, g.K, 1, 1)
        return y, None

    def _conv2d_backward(self, dy, ctx):
        g: ConvGeometry = ctx.geom
        x, w = ctx.inputs["x"], ctx.inputs["w"]
        _, row, L = self._layout(g)
        crs = g.C * g.R * g.S
        w2 = w.reshape(g.K, crs)
        dw = np.zeros((g.K, crs), dtype=x.dtype)
        dx = np.empty(g.x_shape, dtype=x.dtype)
        for n0, n1, buf in self._col_chunks(g, x.dtype):
            n = n1 - n0
            # dy as (K, n, P, row), zero in the garbage columns of wide rows
            dyw = self._scratch("dy", (g.K, n, g.P, row), dy.dtype, zero=row != g.Q)
            dyw[..., :g.Q] = dy[n0:n1].transpose(1, 0, 2, 3)
            dyw = dyw.reshape(g.K, n * L)
            cols = self._columns(x[n0:n1], g, buf).reshape(crs, n * L)
            dw += dyw @ cols.T                     # chunks summed in a fixed order
            dcols = np.matmul(w2.T, dyw, out=cols)  # reuse the column buffer
            dx[n0:n1] = self._col2im(dcols.reshape(g.C, g.R, g.S, n, L), g, n)
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
        if g.pad_h or g.pad_w:
            # NOTE: a -inf max may sit on padding (it ties with it); the argmax must be the
            # window's first real entry then, which lies at offset (r0, s0) of the window
            r0 = np.maximum(g.pad_h - g.stride_h * np.arange(g.P), 0)
            s0 = np.maximum(g.pad_w - g.stride_w * np.arange(g.Q), 0)
            first_real = (r0[:, None] * g.S + s0[None, :]).astype(arg.dtype)
            np.copyto(arg, first_real, where=y == -np.inf)
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
