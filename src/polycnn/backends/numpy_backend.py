"""The NumPy backend: see :mod:`polycnn.backends.base` for the contract.

Optimisations:
- conv as im2col + one GEMM per chunk of samples. The column buffer is built with one copy per
  kernel offset (R·S Python iterations, never one per sample, channel or pixel) and holds at most
  ``COLUMN_BUFFER_BYTES``: a large batch is processed in chunks of samples, so memory stays
  bounded whatever N is. The copies are contiguous runs of stride-phase planes ("wide rows",
  see ``_layout``), for every stride and dilation.
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
from . import _heap
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
        _heap.keep_freed_blocks()

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
        return {"version": f"numpy {np.__version__}", "threads": threads, "device": "cpu",
                "heap": _heap.describe()}

    # ---- convolution --------------------------------------------------------------------
    @staticmethod
    def _layout(g: ConvGeometry):
        """``(Hph, Wph, L, slack)`` of the phase planes and the column buffer.

        NOTE: split the zero-padded input into stride phases, plane ``(a, b)`` holding the padded
        pixels ``(a + i*sh, b + j*sw)``. Kernel offset ``(r, s)`` then reads plane
        ``(r*dh % sh, s*dw % sw)`` at a *contiguous* run of its flattened pixels, starting at
        ``(r*dh // sh) * Wph + s*dw // sw``. Columns hold "wide" output rows of ``Wph`` pixels
        (the last ``Wph - Q`` of each are garbage: cropped from y and zero in dy), so im2col and
        col2im are plain contiguous copies and adds, for any stride and dilation.
        """
        Hp, Wp = g.H + g.pad_h + g.pad_bottom, g.W + g.pad_w + g.pad_right
        Hph, Wph = -(-Hp // g.stride_h), -(-Wp // g.stride_w)
        return Hph, Wph, g.P * Wph, (g.S - 1) * g.dil_w // g.stride_w

    @staticmethod
    def _offsets(g: ConvGeometry):
        """(r, s, plane, start) for every kernel offset; ``plane`` indexes ``_planes``."""
        Wph = NumpyBackend._layout(g)[1]
        for r in range(g.R):
            for s in range(g.S):
                a, b = r * g.dil_h % g.stride_h, s * g.dil_w % g.stride_w
                yield r, s, (a, b), (r * g.dil_h // g.stride_h) * Wph + s * g.dil_w // g.stride_w

    @staticmethod
    def _phase_slices(g: ConvGeometry, plane):
        """(x rows/cols of this phase plane, where they sit inside the plane)."""
        a, b = plane
        h0, w0 = (a - g.pad_h) % g.stride_h, (b - g.pad_w) % g.stride_w
        i0, j0 = (h0 + g.pad_h) // g.stride_h, (w0 + g.pad_w) // g.stride_w
        hn, wn = len(range(h0, g.H, g.stride_h)), len(range(w0, g.W, g.stride_w))
        src = (slice(None), slice(None), slice(h0, None, g.stride_h), slice(w0, None, g.stride_w))
        dst = (slice(None), slice(None), slice(i0, i0 + hn), slice(j0, j0 + wn))
        return src, dst

    def _planes(self, g: ConvGeometry, n: int, dtype, key: str):
        """Zeroed flat phase planes, one per plane that some kernel offset reads."""
        Hph, Wph, _, slack = self._layout(g)
        used = sorted({plane for _, _, plane, _ in self._offsets(g)})
        buf = self._scratch(key, (len(used), n, g.C, Hph * Wph + slack), dtype, zero=True)
        return {plane: buf[i] for i, plane in enumerate(used)}

    def _columns(self, x, g: ConvGeometry, out):
        """im2col of samples ``x`` (n, C, H, W) into ``out`` (C, R, S, n, L)."""
        Hph, Wph, L, _ = self._layout(g)
        n = x.shape[0]
        planes = self._planes(g, n, x.dtype, "planes")
        for plane, flat in planes.items():
            src, dst = self._phase_slices(g, plane)
            flat[:, :, :Hph * Wph].reshape(n, g.C, Hph, Wph)[dst] = x[src]
        for r, s, plane, start in self._offsets(g):
            out[:, r, s] = planes[plane][:, :, start:start + L].transpose(1, 0, 2)
        return out

    def _col2im(self, dcols, g: ConvGeometry, out):
        """The adjoint of :meth:`_columns`: (C, R, S, n, L) summed into ``out`` (n, C, H, W)."""
        Hph, Wph, L, _ = self._layout(g)
        n = out.shape[0]
        planes = self._planes(g, n, dcols.dtype, "planes")
        for r, s, plane, start in self._offsets(g):
            planes[plane][:, :, start:start + L] += dcols[:, r, s].transpose(1, 0, 2)
        covered = np.zeros((g.stride_h, g.stride_w), dtype=bool)
        for plane, flat in planes.items():
            src, dst = self._phase_slices(g, plane)
            out[src] = flat[:, :, :Hph * Wph].reshape(n, g.C, Hph, Wph)[dst]
            covered[plane] = True
        for a, b in zip(*np.nonzero(~covered)):  # pixels no kernel offset reads: no gradient
            out[self._phase_slices(g, (a, b))[0]] = 0
        return out

    def _col_chunks(self, g: ConvGeometry, dtype):
        """(n0, n1, buffer) per chunk of samples; the buffer is (C, R, S, n, L), within the cap."""
        L = self._layout(g)[2]
        per_sample = g.C * g.R * g.S * L * np.dtype(dtype).itemsize
        for n0, n1 in _chunks(g.N, per_sample, self.column_buffer_bytes):
            yield n0, n1, self._scratch("cols", (g.C, g.R, g.S, n1 - n0, L), dtype)

    def _conv2d_forward(self, x, w, b, g: ConvGeometry):
        _, row, L, _ = self._layout(g)
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

    def _conv2d_backward(self, dy, ctx, input_grad):
        g: ConvGeometry = ctx.geom
        x, w = ctx.inputs["x"], ctx.inputs["w"]
        _, row, L, _ = self._layout(g)
        crs = g.C * g.R * g.S
        w2 = w.reshape(g.K, crs)
        dw_t = np.zeros((crs, g.K), dtype=x.dtype)  # dwᵀ: see the NOTE below
        dx = np.empty(g.x_shape, dtype=x.dtype) if input_grad else None
        for n0, n1, buf in self._col_chunks(g, x.dtype):
            n = n1 - n0
            # dy as (K, n, P, row), zero in the garbage columns of wide rows
            dyw = self._scratch("dy", (g.K, n, g.P, row), dy.dtype, zero=row != g.Q)
            dyw[..., :g.Q] = dy[n0:n1].transpose(1, 0, 2, 3)
            dyw = dyw.reshape(g.K, n * L)
            cols = self._columns(x[n0:n1], g, buf).reshape(crs, n * L)
            # NOTE: the garbage columns pair pixels with the zeros of dyw (and w with them, for
            # dx): zeroed, so that an inf or NaN there cannot make a NaN (inf * 0) that leaks
            # into dw or, through col2im, into dx at pixels it never touched (tests/ops/test_fuzz.py)
            garbage = cols.reshape(crs, n, g.P, row)[..., g.Q:]
            garbage.fill(0)
            # NOTE: OpenBLAS threads a GEMM with few output rows and a long inner dimension
            # badly (17x slower on 2 busy cores for K=64 rows); dwᵀ = cols · dywᵀ has CRS rows.
            # Chunks are summed in a fixed order (deterministic).
            dw_t += cols @ dyw.T
            if input_grad:
                dcols = np.matmul(w2.T, dyw, out=cols)  # reuse the column buffer
                garbage.fill(0)
                self._col2im(dcols.reshape(g.C, g.R, g.S, n, L), g, dx[n0:n1])
        db = dy.sum(axis=(0, 2, 3)) if ctx.inputs["has_bias"] else None
        return dx, np.ascontiguousarray(dw_t.T).reshape(g.w_shape), db

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
        better = np.empty(g.y_shape, dtype=bool)
        step = np.empty_like(arg)
        for idx, v in views:
            np.greater(v, y, out=better)
            if has_nan:  # NOTE: a NaN is the max of its window (first NaN wins), as in PyTorch
                better |= np.isnan(v) & ~np.isnan(y)
            np.maximum(y, v, out=y)  # NOTE: propagates NaN, like the rule above
            # arg = where(better, idx, arg) as arithmetic: masked copies (np.copyto with
            # where=) are 5x slower; uint8 wrap-around cancels in idx - arg + arg
            np.subtract(arg.dtype.type(idx), arg, out=step)
            step *= better
            arg += step
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
        # windows that do not overlap write each input pixel at most once: no accumulation
        disjoint = g.stride_h >= g.R and g.stride_w >= g.S
        tmp = None if disjoint else np.empty_like(dy)
        # NOTE: dy * mask makes NaN of an infinite dy off the argmax (inf * 0): then masked adds
        finite = bool(np.isfinite(dy).all())
        for idx, view in self._pool_views(dxpad, g):
            if not finite:
                np.add(view, dy, out=view, where=arg == idx)
            elif disjoint:
                np.multiply(dy, arg == idx, out=view)
            else:
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
