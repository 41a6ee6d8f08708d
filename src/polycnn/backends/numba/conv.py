"""The convolution passes (private: plain arrays, ints and the named tuples of :mod:`.args`).

Every pass computes, for each output pixel ``t`` of an output grid and output channel ``m``,
``Σ_j A[m, j] · src[base(t) + tab[j]]``: ``tab`` holds one flat offset per reduction index
``j`` (channel, tap) into a zero-padded, stride-phase-split source (:mod:`.layout`) and
``base(t)`` is the pixel's corner there. ``_direct_conv`` covers runs of whole padded rows with
register tiles (:mod:`.tiles`) that read the padded source directly; very wide layers run the
gather GEMM (:mod:`.gemm`). Backward-weight (``_conv_weight_tiles``) uses the same tables with
the reduction over pixels, in dot-product register tiles.

Determinism: every output element is computed by one thread in a fixed order; the weight
gradient is summed per fixed chunk of samples (the chunking depends on N only, never on the
thread count) and the chunks are added in order by the caller.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .target import FAST, SIMD_BYTES
from .tiles import DOT_TILE, TILES, _dot_tile, _tile0, _tile1, _tile2


@njit(parallel=True, fastmath=FAST, cache=True)
def _direct_conv(flat, At, tab, phases, run, bias, out):
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
    The names are the fields of ``run`` (``args.DirectRun``); ``tile`` indexes TILES. ``At`` is
    (L, Mp), Mp a multiple of the tile's channels, zero past M."""
    ss, Ws, osh, osw, M = run.ss, run.Ws, run.osh, run.osw, run.M
    TB, chunks, N, To_max, tile = run.TB, run.chunks, run.N, run.To_max, run.tile
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


@njit(parallel=True, cache=True)
def _conv_weight_tiles(flat, dyw, tab, sizes, partial):
    """partial[g, k, j] = Σ over samples n of chunk g, Σ_z dyw[n, k, z] · flat[n*ss + tab[j] + z]

    where dyw is dy with its rows padded to the source's width Ws with zeros (z = p*Ws + q) and
    each (n, k) plane to ``Pz`` elements (a multiple of one SIMD vector), so the reduction runs
    along the padded source as the forward pass does, with no gathered copy. Chunk g holds
    samples [g*N//G, (g+1)*N//G) with G = partial.shape[0] (a function of N only), summed in
    sample order, ``spc`` samples per tile (several when the images are small, so the lanes
    are summed less often). ``sizes`` is an ``args.WeightTiles``; ``partial`` is zero on entry,
    shape (G, Kp, Lp), Kp and Lp multiples of DOT_TILE; dyw is (N, Kp, Pz), ``tab`` has Lp
    entries."""
    ss, Pz, spc = sizes.ss, sizes.Pz, sizes.spc
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


@njit(inline="always")
def _reach(offset, step, size, count):
    """The outputs [p0, p1) of p < count whose tap at ``p*step + offset`` lies in [0, size)."""
    return max(0, -(offset // step)), min(count, -((offset - size) // step))


@njit(inline="always")
def _tap_reach(r, s, steps, H, W, P, Q):
    """Tap (r, s): (its row and column offsets from an output's corner, p*sh and q*sw, in the
    unpadded input; the outputs [p0, p1) × [q0, q1) whose tap is inside the H×W input)."""
    top = r * steps.dh - steps.ph
    left = s * steps.dw - steps.pw
    p0, p1 = _reach(top, steps.sh, H, P)
    q0, q1 = _reach(left, steps.sw, W, Q)
    return top, left, p0, p1, q0, q1


@njit(parallel=True, cache=True)
def _conv_grad_exact(dy, other, steps, out, data):
    """With ``data``: dx = ``out`` from w = ``other``, dx[n, c, h, v] = Σ dy[n, k, p, q] ·
    w[k, c, r, s] over the (k, p, q, r, s) with h = p*sh + r*dh - ph and v = q*sw + s*dw - pw
    (dh, dw: the dilation; ``steps`` is an ``args.ConvSteps``); one task per (n, c) plane,
    terms added in (k, r, s, p, q) order.

    Else: dw = ``out`` from x = ``other``, dw[k, c, r, s] = Σ dy[n, k, p, q] · x[n, c, h, v]
    over the (n, p, q) whose pixel is inside x; one task per (k, c), terms added in (n, p, q)
    order. ``out`` is zero on entry."""
    N, K, P, Q = dy.shape
    image = out if data else other
    C, H, W = image.shape[1], image.shape[2], image.shape[3]
    R, S = (other if data else out).shape[2:]
    A, B = (N, K) if data else (K, N)  # a task's planes a, its inner loop b
    for ac in prange(A * C):
        a = ac // C
        c = ac - a * C
        for b in range(B):
            n, k = (a, b) if data else (b, a)
            for r in range(R):
                for s in range(S):
                    top, left, p0, p1, q0, q1 = _tap_reach(r, s, steps, H, W, P, Q)
                    for p in range(p0, p1):
                        h = p * steps.sh + top
                        for q in range(q0, q1):
                            v = q * steps.sw + left
                            if data:
                                out[n, c, h, v] += dy[n, k, p, q] * other[k, c, r, s]
                            else:
                                out[k, c, r, s] += dy[n, k, p, q] * other[n, c, h, v]
