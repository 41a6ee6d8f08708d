"""Compiled loops behind :mod:`polycnn.backends.numba_backend` (private: plain arrays and ints).

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel, P×Q output,
L reduction length of a GEMM, T a tile of output pixels. A trailing ``p`` (Kp, Lp) is a size
rounded up for the register-blocked micro-kernel; the padding is zero-filled.

Every convolution pass computes, for each output pixel ``t`` of an output grid and output
channel ``m``, ``Σ_j A[m, j] · src[base(t) + tab[j]]``: ``tab`` holds one flat offset per
reduction index ``j`` (channel, tap) into a zero-padded, stride-phase-split source and
``base(t)`` is the pixel's corner there. Two kernels compute it:
- ``_direct_conv`` covers runs of whole padded rows with register tiles (a GEMM micro-kernel
  written in LLVM IR, ``_make_register_tile``) that read the padded source directly;
- ``_gather_gemm`` (very wide layers) copies tiles of those rows (channel-last source: long
  contiguous segments) into a thread-local buffer and multiplies them with ``_mm_block``, a
  4×4 register-blocked dot-product kernel whose reduction loop LLVM vectorises.
Backward-weight (``_conv_weight_tiles``) uses the same tables with the reduction over
pixels, in dot-product register tiles (``_make_dot_tile``).

Determinism: every output element is computed by one thread in a fixed order; the weight
gradient is summed per fixed chunk of samples (the chunking depends on N only, never on the
thread count) and the chunks are added in order by the caller.

NOTE: ``fastmath`` is limited to reassociation/contraction (no ``nnan``/``ninf``): NaN and inf
still propagate, and reassociation only changes the order inside a loop that LLVM fixes at
compile time, so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

#: fast-math flags for the GEMM loops (vectorised reductions); see the module NOTE
FAST = {"reassoc", "contract", "nsz"}

def _simd_bytes() -> int:
    """Bytes in one SIMD register of the CPU Numba compiles for (AVX-512 or not)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return 64 if "+avx512f" in features.split(",") else 32


#: the register tiles of the row-direct kernel, (output channels, SIMD vectors of pixels),
#: one accumulator register each: 24 of AVX-512's 32 registers (8 × 3, 6 × 4), or 20 for
#: passes with at most 4 output channels; AVX2 has 16 registers. A pass takes the tile that
#: pads its channel count least (see ``NumbaBackend._direct``)
SIMD_BYTES = _simd_bytes()
TILES = ((8, 3), (6, 4), (4, 5)) if SIMD_BYTES == 64 else ((8, 1), (6, 2), (4, 3))

#: float32 pixels in the widest register tile: the row-direct kernel's source has ``Ws +
#: ZBLOCK`` zeros of slack
ZBLOCK = max(v for _, v in TILES) * SIMD_BYTES // 4

# ---- the micro-kernel -------------------------------------------------------------------------


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


# ---- layout helpers ---------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _pad_planes(src, dst, top, left, sh, sw, pairs):
    """Zero padding and space-to-depth in one copy: dst (N, C*sh*sw, Hd, Wd) with
    dst[n, (c*sh + a)*sw + b, i, j] = src[n, c, i*sh + a - top, j*sw + b - left] where that is
    inside src, else 0. With sh = sw = 1 it is plain padding; ``top``/``left`` may be negative
    (the destination window starts inside the source).

    A convolution with stride (sh, sw) reads such a copy with unit stride: tap (r, s) of
    output (p, q) is dst[n, (c*sh + r % sh)*sw + s % sw, p + r // sh, q + s // sw] (with
    r, s the dilated tap offsets).

    It is a bit copy: ``src`` and ``dst`` come as unsigned-integer views of the data. With
    ``pairs`` (sw = 2, 4-byte elements, an even width) ``src`` is viewed as (N, C, H, W/2)
    uint64, column 2k the low half of pair k (little-endian), and each phase takes one half of
    consecutive pairs: a shift and a truncation, which vectorise where a stride-2 load is a
    gather."""
    N, C, H, Wu = src.shape  # Wu: units in a source row (columns, or column pairs)
    Hd, Wd = dst.shape[2], dst.shape[3]
    sflat = src.reshape(src.size)
    dflat = dst.reshape(dst.size)
    uWd = np.uint64(Wd)
    # NOTE: a task is one source plane (n, c) and writes its sh*sw phases, which read the
    # same rows: the plane is fetched into cache once
    for nc in prange(N * C):  # nc = n*C + c
        for ab in range(sh * sw):
            a = ab // sw
            b = ab - a * sw
            ccn = nc * sh * sw + ab  # the destination plane, n*C*sh*sw + (c*sh + a)*sw + b
            # column j reads unit j*step + base of the row, its bits shifted right by shift
            if pairs:
                par = (b - left) % 2
                base, step, shift = (b - left - par) // 2, 1, 32 * par
            else:
                base, step, shift = b - left, sw, 0
            # the columns j whose unit is inside the row: no bounds test inside the copy loop
            j0 = min(Wd, max(0, (step - 1 - base) // step))
            j1 = max(j0, min(Wd, (Wu - base + step - 1) // step))
            uj0 = np.uint64(j0)
            uj1 = np.uint64(j1)
            ustep = np.uint64(step)
            ushift = np.uint64(shift)
            for i in range(Hd):
                h = i * sh + a - top
                # NOTE: unsigned flat offsets (see _direct_conv)
                d = np.uint64((ccn * Hd + i) * Wd)
                if h < 0 or h >= H:
                    for j in range(uWd):
                        dflat[d + j] = 0
                    continue
                for j in range(uj0):
                    dflat[d + j] = 0
                # unit of column j, from j0 on (wrapping offsets)
                s = np.uint64((nc * H + h) * Wu + j0 * step + base) - uj0 * ustep
                # NOTE: three loops, each with what it needs only, so the first two vectorise
                if pairs:
                    for j in range(uj0, uj1):
                        dflat[d + j] = np.uint32(sflat[s + j] >> ushift)
                elif step == 1:
                    for j in range(uj0, uj1):
                        dflat[d + j] = sflat[s + j]
                else:
                    for j in range(uj0, uj1):
                        dflat[d + j] = sflat[s + j * ustep]
                for j in range(uj1, uWd):
                    dflat[d + j] = 0


@njit(parallel=True, cache=True)
def _widen_rows(src, dst, Ws):
    """dst (N, Kp, Pz) flat planes: dst[n, k, p*Ws + q] = src[n, k, p, q] for q < Q, every other
    element 0 (columns Q..Ws-1, the tail past P*Ws, planes k >= K): dy laid out with the padded
    source's row width, for the weight gradient's dot tiles."""
    N, K, P, Q = src.shape
    Kp, Pz = dst.shape[1], dst.shape[2]
    sflat = src.reshape(src.size)
    dflat = dst.reshape(dst.size)
    uQ = np.uint64(Q)
    uWs = np.uint64(Ws)
    for nk in prange(N * Kp):
        n = nk // Kp
        k = nk - n * Kp
        d0 = np.uint64(nk * Pz)
        if k >= K:
            for z in range(np.uint64(Pz)):
                dflat[d0 + z] = 0
            continue
        s0 = np.uint64((n * K + k) * P * Q)
        for p in range(P):
            d = d0 + np.uint64(p) * uWs
            s = s0 + np.uint64(p) * uQ
            for q in range(uQ):
                dflat[d + q] = sflat[s + q]
            for q in range(uQ, uWs):
                dflat[d + q] = 0
        for z in range(np.uint64(P * Ws), np.uint64(Pz)):
            dflat[d0 + z] = 0


@njit(parallel=True, cache=True)
def _pad_nhwc(src, dst, top, left):
    """dst[n, i, j, c] = src[n, c, i - top, j - left] where that is inside src, else 0: a
    zero-padded channel-last copy (``top``/``left`` may be negative, as in ``_pad_planes``)."""
    N, C, H, W = src.shape
    Hd, Wd = dst.shape[1], dst.shape[2]
    for ni in prange(N * Hd):
        n = ni // Hd
        i = ni - n * Hd
        h = i - top
        for j in range(Wd):
            w = j - left
            if 0 <= h < H and 0 <= w < W:
                for c in range(C):
                    dst[n, i, j, c] = src[n, c, h, w]
            else:
                for c in range(C):
                    dst[n, i, j, c] = 0


@njit(parallel=True, fastmath=FAST, cache=True)
def _gather_gemm(src, A, seg, geo, bias, out):
    """out[n, m, oh0 + t*osh, ow0 + u*osw] = bias[m] + Σ_j A[m, j] · row(n, t, u)[j]

    for t < To, u < Uo, m < M, where row(n, t, u) is the concatenation over k of the ``plen``
    contiguous source elements at ``n*plane + t*ish*rs + u*isw*cs + seg[k]`` (rs/cs: the
    source's row and pixel strides; channel-last sources give long segments, so the rows are
    built with vectorised copies). ``geo`` = (ish, isw, To, Uo, M, oh0, ow0, osh, osw, TP,
    chunks, rs, cs, plen); ``bias`` has length M or 0. A is (Mp, Lp) with zero padding."""
    ish, isw, To, Uo, M = geo[0], geo[1], geo[2], geo[3], geo[4]
    oh0, ow0, osh, osw, TP, chunks = geo[5], geo[6], geo[7], geo[8], geo[9], geo[10]
    rs, cs, plen = geo[11], geo[12], geo[13]
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


def _make_register_tile(tm: int, tv: int):
    """The micro-kernel ``tile(flat, at, utab, l0, l1, base, m0, acc, zcol)``:

    acc[m0 + m, zcol + i] = Σ_{l0 <= l < l1} at[l, m0 + m] · flat[base + utab[l] + i] for
    m < tm, i < tv
    SIMD vectors of pixels, built in LLVM IR with one accumulator register per (m, vector),
    so a tap costs tv loads and tm broadcasts for tm·tv fused multiply-adds, in tap order
    l = l0, l0 + 1, ... (the sum's order is fixed).

    NOTE: written as IR because LLVM does not keep array accumulators in registers across the
    tap loop; it is the register-blocked micro-kernel of a GEMM reading its right-hand operand
    straight from the padded source (no gathered copy). Under NUMBA_DISABLE_JIT it is the
    same sum in NumPy."""
    if config.DISABLE_JIT:

        def tile_py(flat, at, utab, l0, l1, base, m0, acc, zcol):
            width = tv * SIMD_BYTES // flat.itemsize
            pix = np.arange(width)
            for m in range(tm):
                cols = zcol + pix
                total = np.zeros(width, dtype=flat.dtype)
                for l in range(l0, l1):
                    # fancy indexing: an index past the end raises (a slice is cut short)
                    total = at[l, m0 + m] * flat[int(base) + int(utab[l]) + pix] + total
                acc[m0 + m, cols] = total

        return tile_py

    @intrinsic
    def tile(typingctx, flat, at, utab, l0, l1, base, m0, acc, zcol):
        sig = types.void(flat, at, utab, l0, l1, base, m0, acc, zcol)

        def codegen(context, builder, signature, args):
            flat_v, at_v, utab_v, l0_v, l1_v, base_v, m0_v, acc_v, zcol_v = args
            dtype = signature.args[0].dtype
            fty = context.get_value_type(dtype)
            width = SIMD_BYTES // (4 if dtype == types.float32 else 8)
            vty = ir.VectorType(fty, width)
            i32, i64 = ir.IntType(32), ir.IntType(64)
            src = context.make_array(signature.args[0])(context, builder, flat_v).data
            at_ary = context.make_array(signature.args[1])(context, builder, at_v)
            tab_ary = context.make_array(signature.args[2])(context, builder, utab_v)
            acc_ary = context.make_array(signature.args[7])(context, builder, acc_v)
            at_cols = builder.extract_value(at_ary.shape, 1)
            acc_cols = builder.extract_value(acc_ary.shape, 1)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                f"llvm.fma.v{width}{'f32' if dtype == types.float32 else 'f64'}")
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * width)

            def acc_ptr(m, v):
                row = builder.add(builder.mul(builder.add(m0_v, ir.Constant(i64, m)), acc_cols),
                                  zcol_v)
                p = builder.gep(acc_ary.data, [builder.add(row, ir.Constant(i64, v * width))])
                return builder.bitcast(p, vty.as_pointer())

            # allocas in the entry block: LLVM promotes them to registers
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(tv)]
                    for _ in range(tm)]

            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, width), [0] * width)
            one = ir.Constant(i64, 1)
            with cgutils.for_range_slice(builder, l0_v, l1_v, one, intp=i64) as (l, _):
                off = builder.add(base_v, builder.load(builder.gep(tab_ary.data, [l])))
                srcs = []
                for v in range(tv):
                    p = builder.gep(src, [builder.add(off, ir.Constant(i64, v * width))])
                    srcs.append(builder.load(builder.bitcast(p, vty.as_pointer()), align=4))
                row = builder.add(builder.mul(l, at_cols), m0_v)
                for m in range(tm):
                    p = builder.gep(at_ary.data, [builder.add(row, ir.Constant(i64, m))])
                    a = builder.load(p)
                    av = builder.shuffle_vector(
                        builder.insert_element(undef, a, ir.Constant(i32, 0)), undef, splat)
                    for v in range(tv):
                        builder.store(builder.call(fma, [av, srcs[v], builder.load(accs[m][v])]),
                                      accs[m][v])
            for m in range(tm):
                for v in range(tv):
                    builder.store(builder.load(accs[m][v]), acc_ptr(m, v), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile0 = _make_register_tile(*TILES[0])
_tile1 = _make_register_tile(*TILES[1])
_tile2 = _make_register_tile(*TILES[2])


@njit(parallel=True, fastmath=FAST, cache=True)
def _direct_conv(flat, At, tab, phases, geo, bias, out):
    """For each phase (l0, l1, oh0, ow0, To, Uo) of ``phases``:

    out[n, m, oh0 + t*osh, ow0 + u*osw] = bias[m] + Σ_{l0 <= j < l1} At[j, m] · flat[z + tab[j]]

    with z = n*ss + t*Ws + u, for n < N, t < To, u < Uo, m < M, over a zero-padded unit-stride
    source (``_pad_planes``: a sample every ``ss`` elements, rows of ``Ws``), computed without
    gathering: a task takes a block of ``TB`` rows t of one sample and, phase by phase, covers
    its run of whole padded rows with register tiles (``_make_register_tile``), every group of
    output channels on one tile of pixels before the next, so the source is still in cache. The
    phases of backward-data interleave in ``out``; one task writes all of them for its rows, so
    each cache line of ``out`` is fetched once.

    NOTE: z spans whole padded rows (Ws wide), so the Ws - Uo columns past each output row are
    computed and dropped; that keeps the tiles whole. The reads then run up to Ws + ZBLOCK
    elements past the last output row's source (the run is rounded up to whole tiles), so
    ``flat`` has at least that many zeros after its data.
    ``geo`` = (ss, Ws, osh, osw, M, TB, chunks, N, To_max, tile): ``tile`` indexes TILES;
    ``At`` is (L, Mp), Mp a multiple of the tile's channels, zero past M."""
    ss, Ws, osh, osw, M = geo[0], geo[1], geo[2], geo[3], geo[4]
    TB, chunks, N, To_max, tile = geo[5], geo[6], geo[7], geo[8], geo[9]
    nrb = (To_max + TB - 1) // TB  # row blocks per sample
    ntask = N * nrb
    Mp = At.shape[1]
    tm = TILES[0][0] if tile == 0 else TILES[1][0] if tile == 1 else TILES[2][0]
    tv = TILES[0][1] if tile == 0 else TILES[1][1] if tile == 1 else TILES[2][1]
    has_bias = bias.shape[0] > 0
    # pixels in one register tile
    zb = tv * SIMD_BYTES // flat.itemsize
    # NOTE: unsigned offsets: numba adds a negative-index fix-up to signed indices
    utab = tab.astype(np.uint64)
    Mo, Ho, Wo = out.shape[1], out.shape[2], out.shape[3]
    oflat = out.reshape(out.size)
    uosw = np.uint64(osw)
    for ch in prange(chunks):
        acc = np.empty((Mp, (TB * Ws + zb - 1) // zb * zb), dtype=At.dtype)
        for task in range(ch * ntask // chunks, (ch + 1) * ntask // chunks):
            n = task // nrb
            t0 = (task - n * nrb) * TB
            for ph in range(phases.shape[0]):
                l0, l1, oh0, ow0 = phases[ph, 0], phases[ph, 1], phases[ph, 2], phases[ph, 3]
                t1 = min(phases[ph, 4], t0 + TB)
                uUo = np.uint64(phases[ph, 5])
                zlen = (t1 - t0) * Ws
                base = np.uint64(n * ss + t0 * Ws)
                for z0 in range(0, zlen, zb):
                    zbase = base + np.uint64(z0)
                    for m in range(0, Mp, tm):
                        if tile == 0:
                            _tile0(flat, At, utab, l0, l1, zbase, m, acc, z0)
                        elif tile == 1:
                            _tile1(flat, At, utab, l0, l1, zbase, m, acc, z0)
                        else:
                            _tile2(flat, At, utab, l0, l1, zbase, m, acc, z0)
                # NOTE: flat unsigned offsets (4-D indexing costs about 10 instructions a store)
                for m in range(M):
                    row = acc[m]
                    bm = bias[m] if has_bias else np.float32(0)
                    for t in range(t0, t1):
                        o = np.uint64(((n * Mo + m) * Ho + oh0 + t * osh) * Wo + ow0)
                        r0 = np.uint64((t - t0) * Ws)
                        if osw == 1:
                            for u in range(uUo):
                                oflat[o + u] = row[r0 + u] + bm
                        else:
                            for u in range(uUo):
                                oflat[o + u * uosw] = row[r0 + u] + bm


def _make_dot_tile(tk: int, tj: int):
    """The weight gradient's micro-kernel
    ``dot(a, ab, astride, b, bb, utab, j0, zlen, out, k0, count, an, bn)``:

    out[k0 + k, j0 + j] += Σ_{i < count} Σ_{z < zlen} a[ab + i*an + k*astride + z]
                                                      · b[bb + i*bn + utab[j0 + j] + z]

    for k < tk, j < tj (i: samples): tk·tj accumulator registers along i then z (zlen a
    multiple of one SIMD vector), tk + tj loads for tk·tj fused multiply-adds, each register
    summed across its lanes at the end (a tree fixed at compile time). Built in LLVM IR like
    ``_make_register_tile``; under NUMBA_DISABLE_JIT the same sums in NumPy."""
    if config.DISABLE_JIT:

        def dot_py(a, ab, astride, b, bb, utab, j0, zlen, out, k0, count, an, bn):
            z = np.arange(zlen)
            for k in range(tk):
                for j in range(tj):
                    total = 0.0
                    for i in range(count):
                        # fancy indexing: an index past the end raises (a slice is cut short)
                        row = a[int(ab) + i * an + k * astride + z]
                        total += np.dot(row, b[int(bb) + i * bn + int(utab[j0 + j]) + z])
                    out[k0 + k, j0 + j] += total

        return dot_py

    @intrinsic
    def dot(typingctx, a, ab, astride, b, bb, utab, j0, zlen, out, k0, count, an, bn):
        sig = types.void(a, ab, astride, b, bb, utab, j0, zlen, out, k0, count, an, bn)

        def codegen(context, builder, signature, args):
            (a_v, ab_v, as_v, b_v, bb_v, utab_v, j0_v, zlen_v, out_v, k0_v, count_v, an_v,
             bn_v) = args
            dtype = signature.args[0].dtype
            fty = context.get_value_type(dtype)
            suffix = "f32" if dtype == types.float32 else "f64"
            width = SIMD_BYTES // (4 if dtype == types.float32 else 8)
            vty = ir.VectorType(fty, width)
            i64 = ir.IntType(64)
            aptr = context.make_array(signature.args[0])(context, builder, a_v).data
            bptr = context.make_array(signature.args[3])(context, builder, b_v).data
            tab = context.make_array(signature.args[5])(context, builder, utab_v).data
            out_ary = context.make_array(signature.args[8])(context, builder, out_v)
            out_cols = builder.extract_value(out_ary.shape, 1)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.v{width}{suffix}")
            hsum = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(fty, [fty, vty]),
                f"llvm.vector.reduce.fadd.v{width}{suffix}")
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * width)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(tj)]
                    for _ in range(tk)]
            rows = [builder.add(ab_v, builder.mul(ir.Constant(i64, k), as_v)) for k in range(tk)]
            cols = [builder.add(bb_v, builder.load(builder.gep(
                tab, [builder.add(j0_v, ir.Constant(i64, j))]))) for j in range(tj)]
            step = ir.Constant(i64, width)
            with cgutils.for_range(builder, count_v) as sample:
                ia = builder.mul(sample.index, an_v)
                ib = builder.mul(sample.index, bn_v)
                with cgutils.for_range_slice(builder, ir.Constant(i64, 0), zlen_v, step,
                                             intp=i64) as (z, _):
                    def vload(ptr, off, shift):
                        p = builder.gep(ptr, [builder.add(builder.add(off, shift), z)])
                        return builder.load(builder.bitcast(p, vty.as_pointer()), align=4)

                    av = [vload(aptr, rows[k], ia) for k in range(tk)]
                    bv = [vload(bptr, cols[j], ib) for j in range(tj)]
                    for k in range(tk):
                        for j in range(tj):
                            acc = builder.load(accs[k][j])
                            builder.store(builder.call(fma, [av[k], bv[j], acc]), accs[k][j])
            for k in range(tk):
                orow = builder.mul(builder.add(k0_v, ir.Constant(i64, k)), out_cols)
                for j in range(tj):
                    p = builder.gep(out_ary.data, [builder.add(orow, builder.add(
                        j0_v, ir.Constant(i64, j)))])
                    total = builder.call(hsum, [ir.Constant(fty, 0.0), builder.load(accs[k][j])],
                                         fastmath=("reassoc",))
                    builder.store(builder.fadd(builder.load(p), total), p)
            return context.get_dummy_value()

        return sig, codegen

    return dot


#: the weight gradient's dot tile: (output channels, taps); 24 accumulators and 10 loads with
#: AVX-512's 32 registers, 10 and 7 with AVX2's 16 (there 4 × 6 spilled: layer b's dw took
#: 26 ms against 20 with 2 × 5, compiled for haswell on this machine)
DOT_TILE = (4, 6) if SIMD_BYTES == 64 else (2, 5)
_dot_tile = _make_dot_tile(*DOT_TILE)


@njit(parallel=True, cache=True)
def _conv_weight_tiles(flat, dyw, tab, geo, partial):
    """partial[g, k, j] = Σ over samples n of chunk g, Σ_z dyw[n, k, z] · flat[n*ss + tab[j] + z]

    where dyw is dy with its rows padded to the source's width Ws with zeros (z = p*Ws + q) and
    each (n, k) plane to ``Pz`` elements (a multiple of one SIMD vector), so the reduction runs
    along the padded source as the forward pass does, with no gathered copy. Chunk g holds
    samples [g*N//G, (g+1)*N//G) with G = partial.shape[0] (a function of N only), summed in
    sample order, ``spc`` samples per tile (several when the images are small, so the lanes
    are summed less often). ``geo`` = (ss, Pz, spc); ``partial`` is zero on entry, shape
    (G, Kp, Lp), Kp and Lp multiples of DOT_TILE; dyw is (N, Kp, Pz), ``tab`` has Lp entries."""
    ss, Pz, spc = geo[0], geo[1], geo[2]
    G, Kp, Lp = partial.shape
    N = dyw.shape[0]
    a = dyw.reshape(dyw.size)
    utab = tab.astype(np.uint64)
    tk, tj = DOT_TILE
    for g in prange(G):
        out = partial[g]
        n1 = (g + 1) * N // G
        for n in range(g * N // G, n1, spc):
            count = min(spc, n1 - n)
            for j0 in range(0, Lp, tj):
                for k0 in range(0, Kp, tk):
                    _dot_tile(a, np.uint64((n * Kp + k0) * Pz), Pz, flat, np.uint64(n * ss),
                              utab, j0, Pz, out, k0, count, Kp * Pz, ss)


@njit(parallel=True, fastmath=FAST, cache=True)
def _bias_grad(dy, db):
    """db[k] = Σ over n, p, q of dy[n, k, p, q]: one thread per k, a vectorised sum per plane
    (its order fixed at compile time), planes added in n order."""
    N, K, P, Q = dy.shape
    for k in prange(K):
        s = np.float32(0)
        for n in range(N):
            plane = dy[n, k].reshape(P * Q)
            t = np.float32(0)
            for i in range(P * Q):
                t += plane[i]
            s += t
        db[k] = s


@njit(parallel=True, cache=True)
def _sum_partials(partial, out):
    """out[k, j] = Σ_g partial[g, k, j] in the order g = 0, 1, ...; out is (K, L) ⊂ (Kp, Lp)."""
    G = partial.shape[0]
    K, L = out.shape
    for k in prange(K):
        for j in range(L):
            s = partial[0, k, j]
            for g in range(1, G):
                s += partial[g, k, j]
            out[k, j] = s


# ---- exact backward for non-finite operands ---------------------------------------------------
# NOTE: the fast passes above multiply zeros that are no term of the sum (dy's padding and the
# columns past Q of its widened rows) with real operands (w; x past an output row's reach): an
# inf or NaN there makes a NaN (inf * 0) in gradients that do not depend on it. The caller
# runs these plain loops instead when that can have happened (non-finite w, NaN in dw): they
# visit the terms that exist only. Scalar code, for that rare case.


@njit(parallel=True, cache=True)
def _conv_data_grad_exact(dy, w, geo, dx):
    """dx[n, c, h, v] = Σ dy[n, k, p, q] · w[k, c, r, s] over the (k, p, q, r, s) with
    h = p*sh + r*dh - ph and v = q*sw + s*dw - pw (dh, dw: the dilation); ``geo`` = (sh, sw,
    dh, dw, ph, pw); dx is zero on entry. One task per (n, c) plane, terms added in
    (k, r, s, p, q) order."""
    sh, sw, dil_h, dil_w, ph, pw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    N, K, P, Q = dy.shape
    C, R, S = w.shape[1], w.shape[2], w.shape[3]
    H, W = dx.shape[2], dx.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for k in range(K):
            for r in range(R):
                for s in range(S):
                    wv = w[k, c, r, s]
                    for p in range(P):
                        h = p * sh + r * dil_h - ph
                        if h < 0 or h >= H:
                            continue
                        for q in range(Q):
                            v = q * sw + s * dil_w - pw
                            if 0 <= v < W:
                                dx[n, c, h, v] += dy[n, k, p, q] * wv


@njit(parallel=True, cache=True)
def _conv_weight_grad_exact(dy, x, geo, dw):
    """dw[k, c, r, s] = Σ dy[n, k, p, q] · x[n, c, p*sh + r*dh - ph, q*sw + s*dw - pw] over the
    (n, p, q) whose pixel is inside x; ``geo`` as in ``_conv_data_grad_exact``; dw is zero on
    entry. One task per (k, c), terms added in (n, p, q) order."""
    sh, sw, dil_h, dil_w, ph, pw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    N, K, P, Q = dy.shape
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    R, S = dw.shape[2], dw.shape[3]
    for kc in prange(K * C):
        k = kc // C
        c = kc - k * C
        for r in range(R):
            for s in range(S):
                for n in range(N):
                    for p in range(P):
                        h = p * sh + r * dil_h - ph
                        if h < 0 or h >= H:
                            continue
                        for q in range(Q):
                            v = q * sw + s * dil_w - pw
                            if 0 <= v < W:
                                dw[k, c, r, s] += dy[n, k, p, q] * x[n, c, h, v]


# ---- pooling ----------------------------------------------------------------------------------


def _make_pick():
    """``pick(cond, a, b)``: ``a`` if ``cond`` else ``b`` converted to ``a``'s type, as one LLVM
    ``select`` instruction.

    NOTE: Numba lowers ``a if c else b`` (and ``or``/``and``) as branches and leaves it to
    LLVM's SimplifyCFG to turn them back into selects, which it does or not by the target's
    cost model (compiled for Intel CPUs the 2×2 max-pool kept its branches and did not
    vectorise). An explicit select reaches LLVM's optimiser as a select on every target."""
    if config.DISABLE_JIT:

        def pick_py(cond, a, b):
            return a if cond else type(a)(b)

        return pick_py

    @intrinsic
    def pick(typingctx, cond, a, b):
        if not isinstance(cond, types.Boolean) or not isinstance(a, (types.Number)) \
                or not isinstance(b, types.Number):
            return None
        sig = a(cond, a, b)

        def codegen(context, builder, signature, args):
            c, x, y = args
            y = context.cast(builder, y, signature.args[2], signature.args[1])
            return builder.select(c, x, y)

        return sig, codegen

    return pick


_pick = _make_pick()


@njit(parallel=True, cache=True)
def _maxpool_fwd(x, geo, y, arg):
    """y = window max over the real pixels (a NaN wins; ties: first in row-major order; padding
    is never the argmax, as in PyTorch); arg = flat h*W + w of it. ``geo`` = (R, S, sh, sw,
    ph, pw); the contract's padding limit leaves every window a real pixel."""
    R, S, sh, sw, ph, pw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0 = p * sh - ph
            r0 = max(0, -h0)
            r1 = min(R, H - h0)
            for q in range(Q):
                w0 = q * sw - pw
                s0 = max(0, -w0)
                s1 = min(S, W - w0)
                # the window clipped to the image; its first pixel starts as the max
                best = x[n, c, h0 + r0, w0 + s0]
                at = (h0 + r0) * W + w0 + s0
                # NOTE: selects, not a branch (taken at random on real data: a mispredicted
                # branch a pixel cost 3-4x); a candidate wins unless v <= best or best is NaN
                for r in range(r0, r1):
                    h = h0 + r
                    for s in range(s0, s1):
                        v = x[n, c, h, w0 + s]
                        keep = (v <= best) | (best != best)
                        best = _pick(keep, best, v)
                        at = _pick(keep, at, h * W + w0 + s)
                y[n, c, p, q] = best
                arg[n, c, p, q] = at


def _make_pool2x2_blocks(width: int):
    """The 2×2 max-pool's vector blocks of ``width`` outputs of one output row:

    ``fwd(xf, top, bot, yf, af, o, at, W)``: for i < width, the window of top-row pixels
    xf[top + 2i], xf[top + 2i + 1] and bottom-row pixels xf[bot + 2i], xf[bot + 2i + 1] (in
    that order, row-major) gives yf[o + i] (its max: a NaN wins, the first NaN stays, ties keep
    the first) and af[o + i] (at + 2i plus 0, 1, W or W + 1: the flat index of that pixel);

    ``bwd(dyf, af, o, dxf, top, bot, at, W)``: the inverse: dxf[top + 2i + {0, 1}] and
    dxf[bot + 2i + {0, 1}] get dyf[o + i] + 0 where af[o + i] points at them, else 0.

    NOTE: written as LLVM IR vectors (two loads of 2·width pixels split into even and odd
    columns with shuffles, compares and selects) because whether LLVM vectorises the same
    loop in Numba depends on the compile target's cost model: for Intel targets (rocketlake,
    sapphirerapids, x86-64-v4) it kept branches, or vectorised only rows of 24 outputs or
    more, and the pool of N64 C64 32×32 took 8-11 ms against 0.5-1 ms for AMD or generic
    targets. Under NUMBA_DISABLE_JIT the same blocks in Python."""
    if config.DISABLE_JIT:

        def fwd_py(xf, top, bot, yf, af, o, at, W):
            for i in range(width):
                cands = ((xf[top + 2 * i], 0), (xf[top + 2 * i + 1], 1), (xf[bot + 2 * i], W),
                         (xf[bot + 2 * i + 1], W + 1))
                best, off = cands[0]
                for v, k in cands[1:]:
                    if not (v <= best or best != best):
                        best, off = v, k
                yf[o + i] = best
                af[o + i] = at + 2 * i + off

        def bwd_py(dyf, af, o, dxf, top, bot, at, W):
            zero = dxf.dtype.type(0)
            for i in range(width):
                g = dyf[o + i] + zero
                rel = af[o + i] - at - 2 * i
                dxf[top + 2 * i] = g if rel == 0 else zero
                dxf[top + 2 * i + 1] = g if rel == 1 else zero
                dxf[bot + 2 * i] = g if rel == W else zero
                dxf[bot + 2 * i + 1] = g if rel == W + 1 else zero

        return fwd_py, bwd_py

    i32 = ir.IntType(32)
    even = [2 * i for i in range(width)]
    odd = [2 * i + 1 for i in range(width)]
    zipped = [j for i in range(width) for j in (i, width + i)]  # a0 b0 a1 b1 ...

    def mask(values):
        return ir.Constant(ir.VectorType(i32, len(values)), values)

    def pointer(context, builder, ty, value, offset, vty):
        data = context.make_array(ty)(context, builder, value).data
        return builder.bitcast(builder.gep(data, [offset]), vty.as_pointer())

    def splat(builder, vty, value):
        undef = ir.Constant(vty, ir.Undefined)
        one = builder.insert_element(undef, value, ir.Constant(i32, 0))
        return builder.shuffle_vector(one, undef, mask([0] * width))

    def ints(context, builder, sig, args, ity):
        """at and W (any integer types) as ``ity`` values."""
        return [builder.trunc(v, ity) if ity.width < 64 else v for v in (
            context.cast(builder, a, t, types.int64) for a, t in zip(args, sig))]

    @intrinsic
    def fwd(typingctx, xf, top, bot, yf, af, o, at, W):
        sig = types.void(xf, top, bot, yf, af, o, at, W)

        def codegen(context, builder, signature, args):
            xf_v, top_v, bot_v, yf_v, af_v, o_v, at_v, w_v = args
            fty = context.get_value_type(signature.args[0].dtype)
            ity = context.get_value_type(signature.args[4].dtype)
            wide, vty, vity = (ir.VectorType(fty, 2 * width), ir.VectorType(fty, width),
                               ir.VectorType(ity, width))
            at_i, w_i = ints(context, builder, signature.args[6:8], (at_v, w_v), ity)
            t = builder.load(pointer(context, builder, signature.args[0], xf_v, top_v, wide),
                             align=4)
            b = builder.load(pointer(context, builder, signature.args[0], xf_v, bot_v, wide),
                             align=4)
            cands = [(builder.shuffle_vector(t, t, mask(even)), None),
                     (builder.shuffle_vector(t, t, mask(odd)), ir.Constant(ity, 1)),
                     (builder.shuffle_vector(b, b, mask(even)), w_i),
                     (builder.shuffle_vector(b, b, mask(odd)),
                      builder.add(w_i, ir.Constant(ity, 1)))]
            best = cands[0][0]
            off = ir.Constant(vity, [ir.Constant(ity, 0)] * width)
            for v, k in cands[1:]:
                keep = builder.or_(builder.fcmp_ordered("<=", v, best),
                                   builder.fcmp_unordered("uno", best, best))
                best = builder.select(keep, best, v)
                off = builder.select(keep, off, splat(builder, vity, k))
            lanes = ir.Constant(vity, [ir.Constant(ity, 2 * i) for i in range(width)])
            idx = builder.add(builder.add(splat(builder, vity, at_i), lanes), off)
            builder.store(best, pointer(context, builder, signature.args[3], yf_v, o_v, vty),
                          align=4)
            builder.store(idx, pointer(context, builder, signature.args[4], af_v, o_v, vity),
                          align=4)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def bwd(typingctx, dyf, af, o, dxf, top, bot, at, W):
        sig = types.void(dyf, af, o, dxf, top, bot, at, W)

        def codegen(context, builder, signature, args):
            dyf_v, af_v, o_v, dxf_v, top_v, bot_v, at_v, w_v = args
            fty = context.get_value_type(signature.args[0].dtype)
            ity = context.get_value_type(signature.args[1].dtype)
            wide, vty, vity = (ir.VectorType(fty, 2 * width), ir.VectorType(fty, width),
                               ir.VectorType(ity, width))
            at_i, w_i = ints(context, builder, signature.args[6:8], (at_v, w_v), ity)
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * width)
            # + 0 as in 0 += dy: -0.0 becomes 0.0 (no fast-math flag may drop it)
            g = builder.fadd(builder.load(
                pointer(context, builder, signature.args[0], dyf_v, o_v, vty), align=4), zero)
            a = builder.load(pointer(context, builder, signature.args[1], af_v, o_v, vity),
                             align=4)
            lanes = ir.Constant(vity, [ir.Constant(ity, 2 * i) for i in range(width)])
            rel = builder.sub(a, builder.add(splat(builder, vity, at_i), lanes))
            parts = [builder.select(builder.icmp_signed("==", rel, splat(builder, vity, k)),
                                    g, zero)
                     for k in (ir.Constant(ity, 0), ir.Constant(ity, 1), w_i,
                               builder.add(w_i, ir.Constant(ity, 1)))]
            for (left, right), at_row in (((parts[0], parts[1]), top_v),
                                           ((parts[2], parts[3]), bot_v)):
                builder.store(builder.shuffle_vector(left, right, mask(zipped)),
                              pointer(context, builder, signature.args[3], dxf_v, at_row, wide),
                              align=4)
            return context.get_dummy_value()

        return sig, codegen

    return fwd, bwd


#: outputs in one 2×2 pool block (one SIMD register of float32 at the widest), and a half
#: block for shorter rows: a row takes whole blocks, then one more that overlaps the last
#: (its outputs are computed twice, alike), then scalar code below the half block
POOL_BLOCK = SIMD_BYTES // 4
_pool_fwd_full, _pool_bwd_full = _make_pool2x2_blocks(POOL_BLOCK)
_pool_fwd_half, _pool_bwd_half = _make_pool2x2_blocks(POOL_BLOCK // 2)


@njit(parallel=True, cache=True)
def _maxpool2x2_fwd(x, y, arg):
    """:func:`_maxpool_fwd` for the common 2×2 window, stride 2, no padding: each output row in
    vector blocks (``_make_pool2x2_blocks``, the same on every compile target), its short
    remainder without branches (explicit selects, ``_pick``). A candidate v replaces the
    best so far unless ``v <= best`` or best is NaN: a NaN wins, the first NaN stays, ties
    keep the first."""
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    af = arg.reshape(arg.size)
    B, B2 = POOL_BLOCK, POOL_BLOCK // 2
    # the row's scalar start: after its blocks (which end exactly at Q when Q >= B2)
    qs = Q if Q >= B2 else 0
    for nc in prange(N * C):
        for p in range(P):
            h = 2 * p
            at = h * W  # flat index in the plane of the row's first window's top-left pixel
            top = np.uint64((nc * H + h) * W)
            bot = top + np.uint64(W)
            o = np.uint64((nc * P + p) * Q)
            if Q >= B:
                for q in range(0, Q - B + 1, B):
                    uq = np.uint64(q)
                    _pool_fwd_full(xf, top + 2 * uq, bot + 2 * uq, yf, af, o + uq, at + 2 * q, W)
                if Q % B:
                    q = Q - B
                    uq = np.uint64(q)
                    _pool_fwd_full(xf, top + 2 * uq, bot + 2 * uq, yf, af, o + uq, at + 2 * q, W)
            elif Q >= B2:
                _pool_fwd_half(xf, top, bot, yf, af, o, at, W)
                if Q > B2:
                    q = Q - B2
                    uq = np.uint64(q)
                    _pool_fwd_half(xf, top + 2 * uq, bot + 2 * uq, yf, af, o + uq, at + 2 * q, W)
            for q in range(qs, Q):
                w = 2 * q
                t = top + np.uint64(w)
                b = bot + np.uint64(w)
                best = xf[t]
                off = 0
                v = xf[t + 1]
                keep = (v <= best) | (best != best)
                best = _pick(keep, best, v)
                off = _pick(keep, off, 1)
                v = xf[b]
                keep = (v <= best) | (best != best)
                best = _pick(keep, best, v)
                off = _pick(keep, off, W)
                v = xf[b + 1]
                keep = (v <= best) | (best != best)
                best = _pick(keep, best, v)
                off = _pick(keep, off, W + 1)
                yf[o + np.uint64(q)] = best
                af[o + np.uint64(q)] = at + w + off


@njit(parallel=True, cache=True)
def _maxpool2x2_bwd(dy, arg, dx):
    """:func:`_maxpool_bwd` for the 2×2 window, stride 2, no padding: the windows tile dx, so
    every element is written once (dy or 0) and dx needs no zeroing first; an odd last row or
    column, outside every window, gets 0. Vector blocks and a branch-free remainder, as in
    :func:`_maxpool2x2_fwd`."""
    N, C, P, Q = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    dyf = dy.reshape(dy.size)
    af = arg.reshape(arg.size)
    dxf = dx.reshape(dx.size)
    B, B2 = POOL_BLOCK, POOL_BLOCK // 2
    qs = Q if Q >= B2 else 0
    for nc in prange(N * C):
        for p in range(P):
            h = 2 * p
            at = h * W
            top = np.uint64((nc * H + h) * W)
            bot = top + np.uint64(W)
            o = np.uint64((nc * P + p) * Q)
            if Q >= B:
                for q in range(0, Q - B + 1, B):
                    uq = np.uint64(q)
                    _pool_bwd_full(dyf, af, o + uq, dxf, top + 2 * uq, bot + 2 * uq, at + 2 * q, W)
                if Q % B:
                    q = Q - B
                    uq = np.uint64(q)
                    _pool_bwd_full(dyf, af, o + uq, dxf, top + 2 * uq, bot + 2 * uq, at + 2 * q, W)
            elif Q >= B2:
                _pool_bwd_half(dyf, af, o, dxf, top, bot, at, W)
                if Q > B2:
                    q = Q - B2
                    uq = np.uint64(q)
                    _pool_bwd_half(dyf, af, o + uq, dxf, top + 2 * uq, bot + 2 * uq, at + 2 * q, W)
            for q in range(qs, Q):
                uq = np.uint64(q)
                g = dyf[o + uq] + 0  # + 0 as in 0 += dy: -0.0 becomes 0.0
                a = af[o + uq] - at - 2 * q  # 0, 1 (top row) or W, W + 1 (bottom row)
                t = top + 2 * uq
                b = bot + 2 * uq
                dxf[t] = _pick(a == 0, g, 0)
                dxf[t + 1] = _pick(a == 1, g, 0)
                dxf[b] = _pick(a == W, g, 0)
                dxf[b + 1] = _pick(a == W + 1, g, 0)
            for w in range(2 * Q, W):
                dxf[top + np.uint64(w)] = 0
                dxf[bot + np.uint64(w)] = 0
        for h in range(2 * P, H):
            for w in range(W):
                dx[nc // C, nc % C, h, w] = 0


@njit(parallel=True, cache=True)
def _maxpool_bwd(dy, arg, dx):
    """dx (zero on entry) [n, c, arg] += dy, one plane per thread, in (p, q) order."""
    N, C, P, Q = dy.shape
    W = dx.shape[3]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            for q in range(Q):
                a = arg[n, c, p, q]
                h = a // W
                dx[n, c, h, a - h * W] += dy[n, c, p, q]


@njit(parallel=True, cache=True)
def _avgpool_fwd(x, geo, scale, y):
    """y = Σ of the window's pixels (padding counts as 0) · scale[0] (1/(R·S) in x's dtype).
    ``geo`` as in max-pool."""
    R, S, sh, sw, ph, pw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    inv = scale[0]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0 = p * sh - ph
            for q in range(Q):
                w0 = q * sw - pw
                s_ = np.float32(0)
                for r in range(R):
                    h = h0 + r
                    if 0 <= h < H:
                        for s in range(S):
                            w = w0 + s
                            if 0 <= w < W:
                                s_ += x[n, c, h, w]
                y[n, c, p, q] = s_ * inv


@njit(parallel=True, cache=True)
def _avgpool_bwd(dy, geo, scale, dx):
    """dx (zero on entry) += dy · scale[0] over every window, one plane per thread."""
    R, S, sh, sw, ph, pw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    N, C, P, Q = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    inv = scale[0]
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0 = p * sh - ph
            for q in range(Q):
                w0 = q * sw - pw
                share = dy[n, c, p, q] * inv
                for r in range(R):
                    h = h0 + r
                    if 0 <= h < H:
                        for s in range(S):
                            w = w0 + s
                            if 0 <= w < W:
                                dx[n, c, h, w] += share


# ---- the machine's FMA peak (for the benchmark) ----------------------------------------------

#: independent accumulator registers of the FMA probe: enough FMAs in flight to cover the
#: latency (4-5 cycles) on both FMA ports, few enough to stay in registers (32 with AVX-512,
#: 16 with AVX2)
FMA_ACCS = 16 if SIMD_BYTES == 64 else 10
#: float32 lanes of one probe register
FMA_LANES = SIMD_BYTES // 4


def _make_fma_loop():
    """``loop(iters, a, b)`` -> float32: ``iters`` rounds of FMA_ACCS independent vector FMAs
    acc = acc·a + b (FMA_LANES float32 lanes each), then the sum of every lane: 2 · iters ·
    FMA_ACCS · FMA_LANES FLOPs, the most the FMA units can do. With 0 < a < 1 the values stay
    finite (no denormals, no overflow). LLVM IR, like the register tiles; under
    NUMBA_DISABLE_JIT a NumPy stand-in (the FLOP count is then meaningless)."""
    if config.DISABLE_JIT:

        def loop_py(iters, a, b):
            acc = np.ones((FMA_ACCS, FMA_LANES), dtype=np.float32)
            for _ in range(min(int(iters), 8)):
                acc = acc * a + b
            return np.float32(acc.sum())

        return loop_py

    @intrinsic
    def loop(typingctx, iters, a, b):
        sig = types.float32(iters, types.float32, types.float32)

        def codegen(context, builder, signature, args):
            iters_v, a_v, b_v = args
            i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
            vty = ir.VectorType(f32, FMA_LANES)
            undef = ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, FMA_LANES), [0] * FMA_LANES)

            def broadcast(value):
                one = builder.insert_element(undef, value, ir.Constant(i32, 0))
                return builder.shuffle_vector(one, undef, splat)

            av = broadcast(context.cast(builder, a_v, signature.args[1], types.float32))
            bv = broadcast(context.cast(builder, b_v, signature.args[2], types.float32))
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]), f"llvm.fma.v{FMA_LANES}f32")
            start = [ir.Constant(vty, [ir.Constant(f32, 1.0 + k / 64)] * FMA_LANES)
                     for k in range(FMA_ACCS)]
            accs = [cgutils.alloca_once_value(builder, v) for v in start]
            count = context.cast(builder, iters_v, signature.args[0], types.int64)
            with cgutils.for_range(builder, count, intp=i64):
                for acc in accs:
                    builder.store(builder.call(fma, [builder.load(acc), av, bv]), acc)
            total = builder.load(accs[0])
            for acc in accs[1:]:
                total = builder.fadd(total, builder.load(acc))
            hsum = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(f32, [f32, vty]),
                f"llvm.vector.reduce.fadd.v{FMA_LANES}f32")
            return builder.call(hsum, [ir.Constant(f32, 0.0), total])

        return sig, codegen

    return loop


_fma_loop = _make_fma_loop()


@njit(parallel=True, cache=True)
def _fma_probe(iters, out):
    """out[t] = one FMA loop of ``iters`` rounds (``_make_fma_loop``) per task t: one task per
    thread measures the FMA peak of that many cores."""
    for t in prange(out.shape[0]):
        out[t] = _fma_loop(iters, np.float32(0.999), np.float32(0.001))


# ---- training glue ----------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _relu_fwd(x, y):
    """y = max(x, 0) elementwise on flat arrays (a NaN stays NaN, as in numpy.maximum)."""
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if (v > 0 or v != v) else 0


@njit(parallel=True, cache=True)
def _relu_bwd(dy, x, dx):
    """dx = dy · (x > 0), as a multiply so that NaN/inf in dy behave as in ``dy * mask``."""
    for i in prange(x.shape[0]):
        dx[i] = dy[i] * (1 if x[i] > 0 else 0)


@njit(parallel=True, cache=True)
def _dropout_mask(key, threshold, gamma, mix1, mix2, keep):
    """keep[i] = (splitmix64(key + (i + 1)·gamma) >> 40) >= threshold on a flat bool array; all
    arithmetic in uint64 (a plain int literal would turn it into float64), wrapping."""
    for i in prange(keep.shape[0]):
        z = key + np.uint64(i + 1) * gamma
        z = (z ^ (z >> np.uint64(30))) * mix1
        z = (z ^ (z >> np.uint64(27))) * mix2
        z = z ^ (z >> np.uint64(31))
        keep[i] = (z >> np.uint64(40)) >= threshold


@njit(cache=True)
def _cross_entropy(logits, labels, smoothing, dlogits):
    """Mean softmax cross-entropy with label smoothing; writes (softmax - target)/N to dlogits
    and returns the loss. Rows are independent; sums run in row-major order."""
    N, K = logits.shape
    off = smoothing / K
    on = 1.0 - smoothing
    total = 0.0
    for n in range(N):
        mx = logits[n, 0]
        for k in range(1, K):
            if logits[n, k] > mx:
                mx = logits[n, k]
        se = np.float32(0)
        for k in range(K):
            se += np.exp(logits[n, k] - mx)
        lse = np.log(se)
        for k in range(K):
            logp = logits[n, k] - mx - lse
            tgt = off + (on if k == labels[n] else 0.0)
            total -= tgt * logp
            dlogits[n, k] = (np.exp(logp) - tgt) / N
    return total / N
