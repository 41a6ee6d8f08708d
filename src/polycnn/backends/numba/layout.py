"""Layout copies of the convolution passes: zero padding with space-to-depth
(``_pad_planes``), a padded channel-last copy (``_pad_nhwc``) and dy widened to the padded
source's rows (``_widen_rows``). Bit copies, no arithmetic.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


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
