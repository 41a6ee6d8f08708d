"""Register-blocked GEMM loops: the 4×4 dot-product micro-kernel ``_mm_block``, the linear
layers' products (``_matmul_nt``, ``_matmul_tn``) and the convolution's *gather GEMM* for very
wide layers (``_gather_gemm``), which copies tiles of im2row rows from a channel-last source
(long contiguous segments) into a thread-local buffer and multiplies them with ``_mm_block``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .target import FAST


@njit(fastmath=FAST, cache=True)
def _mm_block(A, i, B, j, C, L):
    """C[i:i+4, j:j+4] = A[i:i+4, :L] · B[j:j+4, :L]ᵀ with 16 scalar accumulators."""
    # NOTE: the accumulators start from a float32 literal (numba widens them to float64 for
    # float64 arrays); a start value read from an array stops LLVM from vectorising the loop.
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0)
    for l in range(L):
        x0 = A[i, l]
        x1 = A[i + 1, l]
        x2 = A[i + 2, l]
        x3 = A[i + 3, l]
        y0 = B[j, l]
        y1 = B[j + 1, l]
        y2 = B[j + 2, l]
        y3 = B[j + 3, l]
        a00 += x0 * y0
        a01 += x0 * y1
        a02 += x0 * y2
        a03 += x0 * y3
        a10 += x1 * y0
        a11 += x1 * y1
        a12 += x1 * y2
        a13 += x1 * y3
        a20 += x2 * y0
        a21 += x2 * y1
        a22 += x2 * y2
        a23 += x2 * y3
        a30 += x3 * y0
        a31 += x3 * y1
        a32 += x3 * y2
        a33 += x3 * y3
    C[i, j] = a00
    C[i, j + 1] = a01
    C[i, j + 2] = a02
    C[i, j + 3] = a03
    C[i + 1, j] = a10
    C[i + 1, j + 1] = a11
    C[i + 1, j + 2] = a12
    C[i + 1, j + 3] = a13
    C[i + 2, j] = a20
    C[i + 2, j + 1] = a21
    C[i + 2, j + 2] = a22
    C[i + 2, j + 3] = a23
    C[i + 3, j] = a30
    C[i + 3, j + 1] = a31
    C[i + 3, j + 2] = a32
    C[i + 3, j + 3] = a33


@njit(fastmath=FAST, cache=True)
def _mm_nt(A, B, C, M, T, L):
    """C[:M, :T] = A[:M, :L] · B[:T, :L]ᵀ; M and T multiples of 4: 4 rows of A stay hot while
    B streams."""
    for i in range(0, M, 4):
        for j in range(0, T, 4):
            _mm_block(A, i, B, j, C, L)


@njit(parallel=True, fastmath=FAST, cache=True)
def _matmul_nt(A, B, C):
    """C = A · Bᵀ for A (Mp, L), B (Tp, L), C (Mp, Tp), Mp and Tp multiples of 4; blocks of 4
    rows of A in parallel (each element has one writer: the result is thread-independent)."""
    Mp, L = A.shape
    Tp = B.shape[0]
    for ib in prange(Mp // 4):
        for j in range(0, Tp, 4):
            _mm_block(A, 4 * ib, B, j, C, L)


#: columns of C per task of :func:`_matmul_tn` (4 accumulator rows of this many stay in L1)
TN_TILE = 256


@njit(parallel=True, fastmath=FAST, cache=True)
def _matmul_tn(A, B, C):
    """C = Aᵀ · B for A (L, M), B (L, T), C (M, T), as row updates: C[m, :] += A[l, m] · B[l, :]
    for l in order. For the linear layers' backward, where L or M is small (the batch, a few
    classes): no transposed copy of B, and the inner loop runs along B's rows. Tasks own 4 rows
    × TN_TILE columns of C, so each element has one writer."""
    L, M = A.shape
    T = B.shape[1]
    tiles = (T + TN_TILE - 1) // TN_TILE
    for task in prange(((M + 3) // 4) * tiles):
        m0 = (task // tiles) * 4
        m1 = min(M, m0 + 4)
        t0 = (task % tiles) * TN_TILE
        t1 = min(T, t0 + TN_TILE)
        for m in range(m0, m1):
            C[m, t0:t1] = 0
        for l in range(L):
            b = B[l, t0:t1]
            for m in range(m0, m1):
                a = A[l, m]
                c = C[m, t0:t1]
                for t in range(t1 - t0):
                    c[t] += a * b[t]


@njit(parallel=True, fastmath=FAST, cache=True)
def _gather_gemm(src, A, seg, run, bias, out):
    """out[n, m, oh0 + t*osh, ow0 + u*osw] = bias[m] + Σ_j A[m, j] · row(n, t, u)[j]

    for t < To, u < Uo, m < M, where row(n, t, u) is the concatenation over k of the ``plen``
    contiguous source elements at ``n*plane + t*ish*rs + u*isw*cs + seg[k]`` (rs/cs: the
    source's row and pixel strides; channel-last sources give long segments, so the rows are
    built with vectorised copies); the names are the fields of ``run`` (``args.GemmRun``).
    ``bias`` has length M or 0. A is (Mp, Lp) with zero padding."""
    ish, isw, To, Uo, M = run.ish, run.isw, run.To, run.Uo, run.M
    oh0, ow0, osh, osw, TP, chunks = run.oh0, run.ow0, run.osh, run.osw, run.TP, run.chunks
    rs, cs, plen = run.rs, run.cs, run.plen
    N = src.shape[0]
    plane = src.size // N
    Mp, Lp = A.shape
    nseg = seg.shape[0]
    npix = To * Uo
    ntile = (npix + TP - 1) // TP
    ntask = N * ntile
    has_bias = bias.shape[0] > 0
    flat = src.reshape(src.size)
    # NOTE: unsigned offsets (see _direct_conv) so the segment copies vectorise
    useg = seg.astype(np.uint64)
    uplen = np.uint64(plen)
    for ch in prange(chunks):
        rows = np.zeros((TP, Lp), dtype=A.dtype)
        tile = np.empty((Mp, TP), dtype=A.dtype)
        hh = np.empty(TP, dtype=np.int64)  # where each pixel of the tile lands in out
        ww = np.empty(TP, dtype=np.int64)
        for task in range(ch * ntask // chunks, (ch + 1) * ntask // chunks):
            n = task // ntile
            t0 = (task - n * ntile) * TP
            t1 = min(npix, t0 + TP)
            for t in range(t0, t1):
                p = t // Uo
                q = t - p * Uo
                base = np.uint64(n * plane + p * ish * rs + q * isw * cs)
                row = rows[t - t0]
                for k in range(nseg):
                    o = base + useg[k]
                    d = np.uint64(k) * uplen
                    for l in range(uplen):
                        row[d + l] = flat[o + l]
                hh[t - t0] = oh0 + p * osh
                ww[t - t0] = ow0 + q * osw
            T4 = (t1 - t0 + 3) // 4 * 4
            _mm_nt(A, rows, tile, Mp, T4, Lp)
            for m in range(M):
                bm = bias[m] if has_bias else np.float32(0)
                om = out[n, m]
                tm = tile[m]
                for tt in range(t1 - t0):
                    om[hh[tt], ww[tt]] = tm[tt] + bm
