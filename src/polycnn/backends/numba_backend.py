"""The Numba backend: see :mod:`polycnn.backends.base` for the contract.

Optimisations (kernels in the package :mod:`.numba`, whose modules say how each works):
- a convolution pass reads a zero-padded copy of its source that is also split into stride
  phases (space-to-depth), so every pass, whatever its stride, reads with unit stride (for
  stride 2 in float32 the copy is made from column pairs read as 8-byte words);
- the *row-direct* kernel covers runs of whole padded rows with register tiles (8 output
  channels × 3 AVX-512 vectors of pixels, or 6 × 4 / 4 × 5 where those pad the channel count
  less; one accumulator register each, written in LLVM IR) that read the padded source
  directly: no im2col buffer;
- very wide layers (output × input channels above DIRECT_MAX_WORK) run a *gather GEMM*: tiles
  of im2row rows built by contiguous copies from a channel-last copy, multiplied in a 4×4
  register-blocked dot-product kernel;
- backward-data is a forward pass over the padded ``dy`` with the transposed kernel, per
  stride phase (all phases in one call), so no scatter and no multiplications by inserted
  zeros;
- backward-weight runs dot-product register tiles (4 output channels × 6 taps, LLVM IR) along
  the padded input and a copy of dy with the same row width, so nothing is gathered; it sums
  per fixed chunk of samples, then adds the chunks in order: results are bit-identical for any
  thread count (every other output has a single writer);
- both backward passes multiply zeros that are no term of the sum (dy's padding, the columns
  past each output row) with w and x, so a non-finite weight, or a NaN in dw, sends that
  gradient to plain loops over the real terms only (``_conv_grad_exact``, about 40x slower):
  an inf never makes NaN in a gradient that does not depend on it;
- pooling (a branch-free 2×2 max-pool), ReLU, the linear layers (the same dot-product kernel:
  OpenBLAS's spinning threads would slow the next parallel loop) and the cross-entropy are
  compiled too.

Compiled code is cached in a private per-user folder (:mod:`.numba.loader`).
``NUMBA_DISABLE_JIT=1`` runs the same code as Python (slowly). Unless ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` is set, OpenMP worker threads wait passively between parallel loops (see
``_load_kernels``); freed arrays stay in the heap for the next training step (:mod:`._heap`).
"""

from __future__ import annotations

import os
import sys

import numpy as np

from .. import hashing
from ..errors import BackendUnavailable
from ..geometry import ConvGeometry, PoolGeometry, ceil_div
from . import _heap
from .base import Backend, OpContext, hash_mask
from .numba import plan
from .numba.args import ConvSteps, DirectRun, GemmRun, PoolWindow, WeightTiles, named
from .numba.loader import cache_dir, user_cache_dir  # noqa: F401 (the backend's API)
from .numba.loader import load_kernels as _load_kernels
from .numba.plan import Source, padded_matrix, round_up

#: weight-gradient partial sums: at most this many chunks of samples (fixed: never the
#: thread count, so the summation order, hence the result, is the same on any machine setting)
WEIGHT_GRAD_CHUNKS = 16

#: a weight-gradient dot tile sums about this many pixels per lane-sum: several samples of
#: small images (measured, 2 threads, min of 9, ms: layer e 5.71 with one sample a tile, 5.03
#: with 7; LeNet conv2 0.49 and 0.40; layer b, one sample either way, 14.3)
WEIGHT_GRAD_RUN = 2048

#: target bytes of one tile of gathered rows of the GEMM path (measured: 16-128 KiB perform
#: alike)
ROW_TILE_BYTES = 128 * 1024

#: passes with (output channels × source channels) up to this run the row-direct kernel,
#: larger ones the gather GEMM; see _use_direct. Measured (2 threads, min of 10, float32,
#: forward / backward-data ms, direct vs GEMM): 32×56×56 64→64 3×3 37.7/40.9 vs 50.5/51.1;
#: 16×14×14 256→256 1×1 3.3/3.2 vs 4.8/4.9; 8×14×14 256→256 3×3 11.3/14.0 vs 10.5/12.7
DIRECT_MAX_WORK = 1 << 16

#: a task of the row-direct kernel covers whole padded rows, about this many elements
DIRECT_ROW_ELEMENTS = 2048

#: dropout masks with fewer elements than this are made with NumPy (measured: a parallel launch
#: cost about 0.1 ms, NumPy about 0.04 ms for 2,048 elements)
SMALL_MASK = 1 << 14


class NumbaBackend(Backend):
    """Numba-compiled CPU loops; arrays are ``numpy.ndarray``. See the base class for the
    contract and the module docstring for the optimisations.

    ``threads``: how many threads the parallel loops use (default: ``NUMBA_NUM_THREADS``, which
    Numba sets from the environment or the CPU count). Results do not depend on it."""

    name = "numba"
    xp = np
    array_type = np.ndarray

    def __init__(self, threads: int | None = None):
        import numba

        self._numba = numba
        self._k = _load_kernels()
        limit = numba.config.NUMBA_NUM_THREADS
        if threads is None:
            threads = limit
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
            raise TypeError(f"threads must be an int or None, got {threads!r}")
        if not 1 <= int(threads) <= limit:
            raise ValueError(
                f"threads must be between 1 and {limit} (NUMBA_NUM_THREADS), got {threads}"
            )
        self.threads = int(threads)
        _heap.keep_freed_blocks()

    def _set_threads(self):
        # NOTE: numba's thread count is per calling thread, so it is set before every launch.
        if self._numba.get_num_threads() != self.threads:
            self._numba.set_num_threads(self.threads)

    def info(self) -> dict:
        numba = self._numba
        self._set_threads()
        layer = self._threading_layer()
        return {
            "version": f"numba {numba.__version__}",
            "threads": self.threads,
            "threading_layer": layer,
            "jit": not numba.config.DISABLE_JIT,
            "cache_dir": cache_dir(),
            "device": "cpu",
            "heap": _heap.describe(),
        }

    def _threading_layer(self) -> str:
        numba = self._numba
        if numba.config.DISABLE_JIT:
            return "none (NUMBA_DISABLE_JIT=1)"
        try:
            return numba.threading_layer()
        except ValueError:
            # NOTE: the layer is chosen on the first parallel launch; run a tiny one.
            x = np.zeros(1)
            self._k._relu_fwd(x, x)
            return numba.threading_layer()

    # ---- convolution --------------------------------------------------------------------
    def _row_tile(self, lp: int, itemsize: int, npix: int) -> int:
        tile = max(4, min(256, ROW_TILE_BYTES // (lp * itemsize)) // 4 * 4)
        return min(tile, round_up(npix, 4))

    def _chunks(self, tasks: int) -> int:
        # Any split gives the same result here (each output has one writer); a few chunks per
        # thread balance the load on a busy machine.
        return max(1, min(tasks, 4 * self.threads))

    _forward_table = staticmethod(plan.forward_table)

    def _padded(self, src, top: int, left: int, Hs: int, Ws: int, slack: bool,
                stride=(1, 1)) -> Source:
        """``src`` (N, C, H, W) zero-padded by (top, left) and split into ``stride`` phases
        (space-to-depth, see ``_pad_planes``): (N, C*sh*sw, Hs, Ws). With ``slack``, Ws +
        ZBLOCK zeros follow it (see ``_direct_conv``)."""
        N, C = src.shape[:2]
        sh, sw = stride
        size = N * C * sh * sw * Hs * Ws
        buf = np.empty(size + (Ws + self._k.ZBLOCK if slack else 0), dtype=src.dtype)
        buf[size:] = 0
        dst = buf[:size].reshape(N, C * sh * sw, Hs, Ws)
        unit = np.uint32 if src.dtype.itemsize == 4 else np.uint64  # a bit copy
        pairs = (sw == 2 and src.dtype.itemsize == 4 and src.shape[3] % 2 == 0
                 and src.ctypes.data % 8 == 0 and sys.byteorder == "little")
        # with pairs, (N, C, H, W/2): two columns an element
        self._k._pad_planes(src.view(np.uint64 if pairs else unit), dst.view(unit), top, left,
                            sh, sw, pairs)
        return Source(buf, C * sh * sw * Hs * Ws, Hs * Ws, Hs, Ws)

    def _padded_input(self, x, g: ConvGeometry, slack: bool = False) -> Source:
        """x padded and split into stride phases, so that the output grid reads it with unit
        stride (``plan.input_extent``). Without ``slack``, an input that needs neither is read
        as it is (NCHW)."""
        Hs, Ws = plan.input_extent(g)
        if (not slack and (Hs, Ws) == (g.H, g.W) and g.pad_h == g.pad_w == 0
                and g.stride_h == g.stride_w == 1):
            return Source(x.reshape(-1), g.C * g.H * g.W, g.H * g.W, g.H, g.W)
        return self._padded(x, g.pad_h, g.pad_w, Hs, Ws, slack, (g.stride_h, g.stride_w))

    def _use_direct(self, M: int, C: int) -> bool:
        """Row-direct kernel for M output and C source channels, or the gather GEMM."""
        return M * C <= DIRECT_MAX_WORK

    def _padded_nhwc(self, src, top: int, left: int, Hs: int, Ws: int):
        dst = np.empty((src.shape[0], Hs, Ws, src.shape[1]), dtype=src.dtype)
        self._k._pad_nhwc(src, dst, top, left)
        return dst

    def _direct(self, src: Source, N, a, tab, phases, stride, bias, out):
        """Row-direct passes over a unit-stride source padded with slack, with the weights
        ``a`` (M, L): ``phases`` lists (l0, l1, oh0, ow0, To, Uo): taps [l0, l1) of ``tab``
        and ``a`` make output pixels (t, u) < (To, Uo), which land at (oh0 + t*osh,
        ow0 + u*osw) for ``stride`` = (osh, osw)."""
        M, L = a.shape
        Mp, tile = plan.pick_tile(M, self._k.TILES)
        At = padded_matrix(a.T, L, Mp)
        phases = np.asarray(phases, dtype=np.int64).reshape(-1, 6)
        To = int(phases[:, 4].max())
        tb = max(1, min(To, DIRECT_ROW_ELEMENTS // src.Ws))
        chunks = self._chunks(N * ceil_div(To, tb))
        run = named(DirectRun, ss=src.ss, Ws=src.Ws, osh=stride[0], osw=stride[1], M=M, TB=tb,
                    chunks=chunks, N=N, To_max=To, tile=tile)
        self._k._direct_conv(src.flat, At, tab, phases, run, bias, out)

    def _gemm(self, src, A, seg, plen, M, grid, place, bias, out):
        """Gather-GEMM pass over a channel-last source (N, Hs, Ws, Cs): ``grid`` = (ish, isw,
        To, Uo); segments of ``plen`` elements at offsets ``seg`` make one row."""
        ish, isw, To, Uo = grid
        oh0, ow0, osh, osw = place
        Ws, Cs = src.shape[2], src.shape[3]
        tp = self._row_tile(A.shape[1], src.dtype.itemsize, To * Uo)
        chunks = self._chunks(src.shape[0] * ceil_div(To * Uo, tp))
        run = named(GemmRun, ish=ish, isw=isw, To=To, Uo=Uo, M=M, oh0=oh0, ow0=ow0, osh=osh,
                    osw=osw, TP=tp, chunks=chunks, rs=Ws * Cs, cs=Cs, plen=plen)
        self._k._gather_gemm(src, A, seg, run, bias, out)

    def _conv2d_forward(self, x, w, b, g: ConvGeometry):
        self._set_threads()
        L = g.C * g.R * g.S
        y = np.empty(g.y_shape, dtype=x.dtype)
        bias = b if b is not None else np.zeros(0, dtype=x.dtype)
        if self._use_direct(g.K, g.C):
            xpad = self._padded_input(x, g, slack=True)
            tab = self._forward_table(g, xpad)
            self._direct(xpad, g.N, w.reshape(g.K, L), tab, [(0, L, 0, 0, g.P, g.Q)], (1, 1),
                         bias, y)
            return y, xpad  # the weight gradient reads the same padded input

        Hp = (g.P - 1) * g.stride_h + (g.R - 1) * g.dil_h + 1
        Wp = (g.Q - 1) * g.stride_w + (g.S - 1) * g.dil_w + 1
        xh = self._padded_nhwc(x, g.pad_h, g.pad_w, Hp, Wp)
        A = padded_matrix(w.transpose(0, 2, 3, 1).reshape(g.K, L),  # (r, s, c) order
                          round_up(g.K, 4), round_up(L, 16))
        r, s = np.meshgrid(np.arange(g.R), np.arange(g.S), indexing="ij")
        if g.dil_w == 1:  # a kernel row is one run of S*C channel-last elements
            seg, plen = np.arange(g.R) * (g.dil_h * Wp * g.C), g.S * g.C
        else:
            seg, plen = ((r * g.dil_h * Wp + s * g.dil_w) * g.C).ravel(), g.C
        self._gemm(xh, A, seg.astype(np.int64), plen, g.K, (g.stride_h, g.stride_w, g.P, g.Q),
                   (0, 0, 1, 1), bias, y)
        return y, None

    def _conv2d_backward(self, dy, ctx: OpContext, input_grad: bool):
        self._set_threads()
        g: ConvGeometry = ctx.geom
        x, w = ctx.inputs["x"], ctx.inputs["w"]
        # NOTE: the fast passes multiply zeros that are no term (dy's padding, its widened rows'
        # columns past Q) with w and x: a non-finite w or x gives NaN (inf * 0) in gradients
        # that do not depend on it. Then plain loops over the real terms only; a leak is a NaN,
        # so a dw without one is right, and dx can leak only through w (tests/ops/test_fuzz.py).
        # The tests are sums (no temporary arrays): an overflow only takes the slow path.
        steps = named(ConvSteps, sh=g.stride_h, sw=g.stride_w, dh=g.dil_h, dw=g.dil_w,
                      ph=g.pad_h, pw=g.pad_w)
        dw = self._conv_weight_grad(x, dy, g, ctx.saved)
        if np.isnan(dw.sum()):
            dw = np.zeros(g.w_shape, dtype=dy.dtype)
            self._k._conv_grad_exact(dy, x, steps, dw, data=False)
        dx = None
        if input_grad and np.isfinite(w.sum()):
            dx = self._conv_data_grad(dy, w, g)
        elif input_grad:
            dx = np.zeros(g.x_shape, dtype=dy.dtype)
            self._k._conv_grad_exact(dy, w, steps, dx, data=True)
        db = None
        if ctx.inputs["has_bias"]:
            db = np.empty(g.K, dtype=dy.dtype)
            self._k._bias_grad(dy, db)
        return dx, dw, db

    def _conv_weight_grad(self, x, dy, g: ConvGeometry, xpad=None):
        """dw with dot-product register tiles along the padded input (``_conv_weight_tiles``):
        dy is first laid out with the padded input's row width."""
        if xpad is None or xpad.flat.size == xpad.ss * g.N:  # the tiles read past the end
            xpad = self._padded_input(x, g, slack=True)
        L = g.C * g.R * g.S
        tk, tj = self._k.DOT_TILE
        Kp, Lp = round_up(g.K, tk), round_up(L, tj)
        tab = np.zeros(Lp, dtype=np.int64)  # padding taps read offset 0; their sums are dropped
        tab[:L] = self._forward_table(g, xpad)
        Pz = round_up(g.P * xpad.Ws, self._k.SIMD_BYTES // dy.itemsize)
        dyw = np.empty((g.N, Kp, Pz), dtype=dy.dtype)
        self._k._widen_rows(dy, dyw, xpad.Ws)
        partial = np.zeros((min(g.N, WEIGHT_GRAD_CHUNKS), Kp, Lp), dtype=dy.dtype)
        spc = max(1, WEIGHT_GRAD_RUN // Pz)  # samples a tile sums before its lanes
        sizes = named(WeightTiles, ss=xpad.ss, Pz=Pz, spc=spc)
        self._k._conv_weight_tiles(xpad.flat, dyw, tab, sizes, partial)
        dw = np.empty((g.K, L), dtype=dy.dtype)
        self._k._sum_partials(partial, dw)
        return dw.reshape(g.w_shape)

    def _conv_data_grad(self, dy, w, g: ConvGeometry):
        """dx as a stride-1 correlation of padded dy with the transposed kernel, per stride
        phase (output rows h ≡ a mod sh, columns ≡ b mod sw)."""
        sh, sw = g.stride_h, g.stride_w
        # per phase: the taps that reach it and their offset into dy (rows: p = t + off)
        rows = [plan.phase_taps(a, g.H, g.pad_h, g.R, g.dil_h, sh) for a in range(sh)]
        cols = [plan.phase_taps(b, g.W, g.pad_w, g.S, g.dil_w, sw) for b in range(sw)]
        top, Hs = plan.source_extent(rows)
        left, Ws = plan.source_extent(cols)
        direct = self._use_direct(g.C, g.K)
        if direct:
            dyp = self._padded(dy, top, left, Hs, Ws, slack=True)
        else:
            dyh = self._padded_nhwc(dy, top, left, Hs, Ws)
        empty_phase = any(not t[1] for t in rows) or any(not t[1] for t in cols)
        dx = (np.zeros if empty_phase else np.empty)(g.x_shape, dtype=dy.dtype)
        bias = np.zeros(0, dtype=dy.dtype)
        tabs, mats, phases = [], [], []  # the row-direct kernel runs every phase in one call
        for a, (Ta, rtaps, roffs) in enumerate(rows):
            for b, (Ub, staps, soffs) in enumerate(cols):
                if not rtaps or not staps or Ta == 0 or Ub == 0:
                    continue
                sub = w[:, :, rtaps][:, :, :, staps]  # (K, C, taps r, taps s)
                ro = np.asarray(roffs, dtype=np.int64) + top
                so = np.asarray(soffs, dtype=np.int64) + left
                if direct:
                    k, ri, si = np.meshgrid(np.arange(g.K), np.arange(len(rtaps)),
                                            np.arange(len(staps)), indexing="ij")
                    tabs.append((k * dyp.ps + ro[ri] * Ws + so[si]).ravel())
                    mats.append(sub.transpose(1, 0, 2, 3).reshape(g.C, -1))  # (c; k, r, s)
                    l0 = phases[-1][1] if phases else 0
                    phases.append((l0, l0 + tabs[-1].size, a, b, Ta, Ub))
                else:
                    seg = ((ro[:, None] * Ws + so[None, :]) * g.K).ravel()
                    A = sub.transpose(1, 2, 3, 0).reshape(g.C, -1)  # (c; r, s, k)
                    A = padded_matrix(A, round_up(g.C, 4), round_up(A.shape[1], 16))
                    self._gemm(dyh, A, seg, g.K, g.C, (1, 1, Ta, Ub), (a, b, sh, sw), bias, dx)
        if phases:
            self._direct(dyp, g.N, np.concatenate(mats, axis=1), np.concatenate(tabs), phases,
                         (sh, sw), bias, dx)
        return dx

    # ---- pooling ------------------------------------------------------------------------
    @staticmethod
    def _pool_window(g: PoolGeometry) -> PoolWindow:
        return named(PoolWindow, R=g.R, S=g.S, sh=g.stride_h, sw=g.stride_w, ph=g.pad_h,
                     pw=g.pad_w)

    @staticmethod
    def _is_2x2(g: PoolGeometry) -> bool:
        """The common pool: 2×2 windows, stride 2, no padding (branch-free kernels)."""
        return (g.R, g.S, g.stride_h, g.stride_w, g.pad_h, g.pad_w) == (2, 2, 2, 2, 0, 0)

    def _maxpool2d_forward(self, x, g: PoolGeometry):
        self._set_threads()
        y = np.empty(g.y_shape, dtype=x.dtype)
        arg = np.empty(g.y_shape, dtype=np.int32 if g.H * g.W < 2**31 else np.int64)
        if self._is_2x2(g):
            self._k._maxpool2x2_fwd(x, y, arg)
        else:
            self._k._maxpool_fwd(x, self._pool_window(g), y, arg)
        return y, arg

    def _maxpool2d_backward(self, dy, ctx: OpContext):
        self._set_threads()
        g: PoolGeometry = ctx.geom
        if self._is_2x2(g):
            dx = np.empty(g.x_shape, dtype=dy.dtype)  # every element written
            self._k._maxpool2x2_bwd(dy, ctx.saved, dx)
        else:
            dx = np.zeros(g.x_shape, dtype=dy.dtype)
            self._k._maxpool_bwd(dy, ctx.saved, dx)
        return dx

    def _avgpool2d_forward(self, x, g: PoolGeometry):
        self._set_threads()
        y = np.empty(g.y_shape, dtype=x.dtype)
        scale = np.array([1.0 / (g.R * g.S)], dtype=x.dtype)
        self._k._avgpool_fwd(x, self._pool_window(g), scale, y)
        return y

    def _avgpool2d_backward(self, dy, ctx: OpContext):
        self._set_threads()
        g: PoolGeometry = ctx.geom
        dx = np.zeros(g.x_shape, dtype=dy.dtype)
        scale = np.array([1.0 / (g.R * g.S)], dtype=dy.dtype)
        self._k._avgpool_bwd(dy, self._pool_window(g), scale, dx)
        return dx

    # ---- training glue ------------------------------------------------------------------
    def _matmul_nt(self, a, b):
        """a (M, L) · b (T, L)ᵀ with the compiled kernel (operands padded to multiples of 4)."""
        M, T = a.shape[0], b.shape[0]
        ap = padded_matrix(a, round_up(M, 4), a.shape[1]) if M % 4 else np.ascontiguousarray(a)
        bp = padded_matrix(b, round_up(T, 4), b.shape[1]) if T % 4 else np.ascontiguousarray(b)
        c = np.empty((ap.shape[0], bp.shape[0]), dtype=a.dtype)
        self._k._matmul_nt(ap, bp, c)
        return c[:M, :T] if (M % 4 or T % 4) else c

    def _linear_forward(self, x, w, b):
        """See base; y = x · wᵀ (+ b) with the compiled GEMM.

        NOTE: not BLAS: OpenBLAS threads keep spinning after a call and slow the next
        parallel loop of this backend down (LeNet-5 trained 5x slower on 2 cores)."""
        self._set_threads()
        y = self._matmul_nt(x, w)
        if b is not None:
            y = y + b
        return np.ascontiguousarray(y)

    def _linear_backward(self, dy, ctx, input_grad: bool):
        """See base; dx = dy · w and dw = dyᵀ · x as row updates (``_matmul_tn``): no
        transposed copy of x or w."""
        x, w = ctx.inputs["x"], ctx.inputs["w"]
        self._set_threads()
        dx = None
        if input_grad:
            dx = np.empty(x.shape, dtype=dy.dtype)
            self._k._matmul_tn(np.ascontiguousarray(dy.T), np.ascontiguousarray(w), dx)
        dw = np.empty(w.shape, dtype=dy.dtype)
        self._k._matmul_tn(dy, np.ascontiguousarray(x), dw)
        db = dy.sum(axis=0) if ctx.inputs["has_bias"] else None
        return dx, dw, db

    def _relu_forward(self, x):
        """See base; one compiled pass."""
        self._set_threads()
        y = np.empty_like(x)
        self._k._relu_fwd(x.reshape(-1), y.reshape(-1))
        return y

    def _relu_backward(self, dy, ctx):
        x = ctx.inputs["x"]
        self._set_threads()
        dx = np.empty_like(dy)
        self._k._relu_bwd(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
        return dx

    def _dropout_mask(self, shape: tuple, threshold: int, key: int):
        """See base; one compiled pass (small masks, e.g. Dropout2d's one draw per map, through
        NumPy: waking the worker threads costs more than the hashing)."""
        if int(np.prod(shape)) < SMALL_MASK:
            return hash_mask(np, shape, threshold, key)
        self._set_threads()
        keep = np.empty(shape, dtype=np.bool_)
        u64 = np.uint64
        self._k._dropout_mask(u64(key), u64(threshold), u64(hashing.GAMMA), u64(hashing.MIX1),
                              u64(hashing.MIX2), keep.reshape(-1))
        return keep

    def _cross_entropy(self, logits, labels, label_smoothing: float):
        """See base; one compiled pass over the rows."""
        dlogits = np.empty_like(logits)
        loss = self._k._cross_entropy(logits, labels, label_smoothing, dlogits)
        return float(loss), dlogits


def create() -> NumbaBackend:
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend 'numba' needs numba ({exc}); install it with `pip install numba`"
        ) from exc
    except ValueError as exc:  # NOTE: numba checks NUMBA_* variables (NUMBA_NUM_THREADS=0) here
        numba_env = {k: v for k, v in os.environ.items() if k.startswith("NUMBA_")}
        raise BackendUnavailable(
            f"numba refused its settings from the environment ({exc}); NUMBA_* variables set:"
            f" {numba_env}") from None
    return NumbaBackend()
