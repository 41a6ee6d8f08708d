"""The pooling loops: max-pool (a general window, and a branch-free 2×2 window of stride 2
in LLVM IR vector blocks) and average pool, forward and backward.

Max-pool semantics on every path: a NaN wins, the first NaN stays, ties keep the first pixel in
row-major window order; padding is never the argmax.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types
from numba.extending import intrinsic

from .target import SIMD_BYTES, lane_mask, splat, vector_pointer


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
def _maxpool_fwd(x, win, y, arg):
    """y = window max over the real pixels (a NaN wins; ties: first in row-major order; padding
    is never the argmax, as in PyTorch); arg = flat h*W + w of it. ``win`` is an
    ``args.PoolWindow``; the contract's padding limit leaves every window a real pixel."""
    R, S, sh, sw, ph, pw = win.R, win.S, win.sh, win.sw, win.ph, win.pw
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


def _pool2x2_blocks_py(width: int):
    """:func:`_make_pool2x2_blocks` in Python (NUMBA_DISABLE_JIT)."""

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


def _block_setup(context, builder, signature, args, width: int, af: int):
    """What both 2×2 blocks start from: vectors of ``2·width`` and ``width`` pixels (the first
    argument's type), the index type (of argument ``af``) and its vector of ``width``, and the
    last two arguments (at, W: any integer types) as index values."""
    fty = context.get_value_type(signature.args[0].dtype)
    ity = context.get_value_type(signature.args[af].dtype)
    wide, vty, vity = (ir.VectorType(fty, 2 * width), ir.VectorType(fty, width),
                       ir.VectorType(ity, width))
    at_w = [context.cast(builder, v, t, types.int64) for v, t in zip(args[6:8],
                                                                     signature.args[6:8])]
    at_i, w_i = [builder.trunc(v, ity) if ity.width < 64 else v for v in at_w]
    return wide, vty, vity, ity, at_i, w_i


def _pool2x2_fwd_block(width: int):
    """The forward block of :func:`_make_pool2x2_blocks`."""
    even = lane_mask([2 * i for i in range(width)])
    odd = lane_mask([2 * i + 1 for i in range(width)])

    @intrinsic
    def fwd(typingctx, xf, top, bot, yf, af, o, at, W):
        sig = types.void(xf, top, bot, yf, af, o, at, W)

        def codegen(context, builder, signature, args):
            xf_v, top_v, bot_v, yf_v, af_v, o_v = args[:6]
            wide, vty, vity, ity, at_i, w_i = _block_setup(context, builder, signature, args,
                                                           width, 4)
            ty = signature.args
            t = builder.load(vector_pointer(context, builder, ty[0], xf_v, top_v, wide), align=4)
            b = builder.load(vector_pointer(context, builder, ty[0], xf_v, bot_v, wide), align=4)
            cands = [(builder.shuffle_vector(t, t, even), None),
                     (builder.shuffle_vector(t, t, odd), ir.Constant(ity, 1)),
                     (builder.shuffle_vector(b, b, even), w_i),
                     (builder.shuffle_vector(b, b, odd), builder.add(w_i, ir.Constant(ity, 1)))]
            best = cands[0][0]
            off = ir.Constant(vity, [ir.Constant(ity, 0)] * width)
            for v, k in cands[1:]:
                keep = builder.or_(builder.fcmp_ordered("<=", v, best),
                                   builder.fcmp_unordered("uno", best, best))
                best = builder.select(keep, best, v)
                off = builder.select(keep, off, splat(builder, vity, k))
            lanes = ir.Constant(vity, [ir.Constant(ity, 2 * i) for i in range(width)])
            idx = builder.add(builder.add(splat(builder, vity, at_i), lanes), off)
            builder.store(best, vector_pointer(context, builder, ty[3], yf_v, o_v, vty), align=4)
            builder.store(idx, vector_pointer(context, builder, ty[4], af_v, o_v, vity), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return fwd


def _pool2x2_bwd_block(width: int):
    """The backward block of :func:`_make_pool2x2_blocks`."""
    zipped = lane_mask([j for i in range(width) for j in (i, width + i)])  # a0 b0 a1 b1 ...

    @intrinsic
    def bwd(typingctx, dyf, af, o, dxf, top, bot, at, W):
        sig = types.void(dyf, af, o, dxf, top, bot, at, W)

        def codegen(context, builder, signature, args):
            dyf_v, af_v, o_v, dxf_v, top_v, bot_v = args[:6]
            wide, vty, vity, ity, at_i, w_i = _block_setup(context, builder, signature, args,
                                                           width, 1)
            ty = signature.args
            zero = ir.Constant(vty, [ir.Constant(vty.element, 0.0)] * width)
            # + 0 as in 0 += dy: -0.0 becomes 0.0 (no fast-math flag may drop it)
            g = builder.fadd(builder.load(
                vector_pointer(context, builder, ty[0], dyf_v, o_v, vty), align=4), zero)
            a = builder.load(vector_pointer(context, builder, ty[1], af_v, o_v, vity), align=4)
            lanes = ir.Constant(vity, [ir.Constant(ity, 2 * i) for i in range(width)])
            rel = builder.sub(a, builder.add(splat(builder, vity, at_i), lanes))
            parts = [builder.select(builder.icmp_signed("==", rel, splat(builder, vity, k)),
                                    g, zero)
                     for k in (ir.Constant(ity, 0), ir.Constant(ity, 1), w_i,
                               builder.add(w_i, ir.Constant(ity, 1)))]
            for (left, right), at_row in (((parts[0], parts[1]), top_v),
                                           ((parts[2], parts[3]), bot_v)):
                builder.store(builder.shuffle_vector(left, right, zipped),
                              vector_pointer(context, builder, ty[3], dxf_v, at_row, wide),
                              align=4)
            return context.get_dummy_value()

        return sig, codegen

    return bwd


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
    targets. Under NUMBA_DISABLE_JIT the same
    blocks in Python."""
    if config.DISABLE_JIT:
        return _pool2x2_blocks_py(width)
    return _pool2x2_fwd_block(width), _pool2x2_bwd_block(width)


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
def _avgpool_fwd(x, win, scale, y):
    """y = Σ of the window's pixels (padding counts as 0) · scale[0] (1/(R·S) in x's dtype);
    ``win`` is an ``args.PoolWindow``."""
    R, S, sh, sw, ph, pw = win.R, win.S, win.sh, win.sw, win.ph, win.pw
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
def _avgpool_bwd(dy, win, scale, dx):
    """dx (zero on entry) += dy · scale[0] over every window, one plane per thread."""
    R, S, sh, sw, ph, pw = win.R, win.S, win.sh, win.sw, win.ph, win.pw
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
