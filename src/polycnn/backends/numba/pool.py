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


@njit(inline="always")
def _window(p, step, pad, taps, size):
    """Output p's window along one dimension: (its first input index, which may be padding;
    the range [k0, k1) of its taps k whose input lies inside [0, size))."""
    start = p * step - pad
    return start, max(0, -start), min(taps, size - start)


@njit(parallel=True, cache=True)
def _maxpool_fwd(x, win, y, arg):
    """y = window max over the real pixels (a NaN wins; ties: first in row-major order; padding
    is never the argmax, as in PyTorch); arg = flat h*W + w of it. ``win`` is an
    ``args.PoolWindow``; the contract's padding limit leaves every window a real pixel."""
    N, C, H, W = x.shape
    P, Q = y.shape[2], y.shape[3]
    R, S, sh, sw, ph, pw = win.R, win.S, win.sh, win.sw, win.ph, win.pw
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        for p in range(P):
            h0, r0, r1 = _window(p, sh, ph, R, H)
            for q in range(Q):
                w0, s0, s1 = _window(q, sw, pw, S, W)
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

    def bwd_py(dxf, top, bot, dyf, af, o, at, W):
        zero = dxf.dtype.type(0)
        for i in range(width):
            g = dyf[o + i] + zero
            rel = af[o + i] - at - 2 * i
            dxf[top + 2 * i] = g if rel == 0 else zero
            dxf[top + 2 * i + 1] = g if rel == 1 else zero
            dxf[bot + 2 * i] = g if rel == W else zero
            dxf[bot + 2 * i + 1] = g if rel == W + 1 else zero

    return fwd_py, bwd_py


class _Block:
    """What a 2×2 block's IR is built from (see :func:`_block_intrinsic`): the ``builder``;
    vector types ``wide`` (2·width pixels), ``vty`` (width pixels) and ``vity`` (width
    indices); the index type ``ity`` (af's elements); ``at`` and ``W`` as index values;
    ``args`` (image, top, bot, outs, af, o, at, W) and :meth:`ptr`."""

    def __init__(self, context, builder, signature, args, width: int):
        self.context, self.builder, self.signature, self.args = context, builder, signature, args
        fty = context.get_value_type(signature.args[0].dtype)
        self.ity = ity = context.get_value_type(signature.args[4].dtype)
        self.wide, self.vty, self.vity = (ir.VectorType(fty, 2 * width),
                                          ir.VectorType(fty, width), ir.VectorType(ity, width))
        at_w = [context.cast(builder, v, t, types.int64)
                for v, t in zip(args[6:8], signature.args[6:8])]
        self.at, self.W = [builder.trunc(v, ity) if ity.width < 64 else v for v in at_w]

    def ptr(self, i: int, offset, vty):
        """Element ``offset`` of array argument ``i`` as a pointer to a ``vty`` vector."""
        return vector_pointer(self.context, self.builder, self.signature.args[i], self.args[i],
                              offset, vty)


def _block_intrinsic(width: int, emit):
    """A 2×2 block of ``width`` outputs, ``block(image, top, bot, outs, af, o, at, W)`` (both
    directions take these arguments, see :func:`_make_pool2x2_blocks`), whose body
    ``emit(block)`` builds from a :class:`_Block`."""

    @intrinsic
    def block(typingctx, image, top, bot, outs, af, o, at, W):
        sig = types.void(image, top, bot, outs, af, o, at, W)

        def codegen(context, builder, signature, args):
            emit(_Block(context, builder, signature, args, width))
            return context.get_dummy_value()

        return sig, codegen

    return block


def _pool2x2_fwd_block(width: int):
    """The forward block of :func:`_make_pool2x2_blocks` (image xf, outs yf)."""
    even = lane_mask([2 * i for i in range(width)])
    odd = lane_mask([2 * i + 1 for i in range(width)])

    def emit(k: _Block):
        bld, ity, vity = k.builder, k.ity, k.vity
        top, bot, o = k.args[1], k.args[2], k.args[5]
        t = bld.load(k.ptr(0, top, k.wide), align=4)
        b = bld.load(k.ptr(0, bot, k.wide), align=4)
        cands = [(bld.shuffle_vector(t, t, even), None),
                 (bld.shuffle_vector(t, t, odd), ir.Constant(ity, 1)),
                 (bld.shuffle_vector(b, b, even), k.W),
                 (bld.shuffle_vector(b, b, odd), bld.add(k.W, ir.Constant(ity, 1)))]
        best = cands[0][0]
        off = ir.Constant(vity, [ir.Constant(ity, 0)] * width)
        for v, idx in cands[1:]:
            keep = bld.or_(bld.fcmp_ordered("<=", v, best), bld.fcmp_unordered("uno", best, best))
            best = bld.select(keep, best, v)
            off = bld.select(keep, off, splat(bld, vity, idx))
        lanes = ir.Constant(vity, [ir.Constant(ity, 2 * i) for i in range(width)])
        index = bld.add(bld.add(splat(bld, vity, k.at), lanes), off)
        bld.store(best, k.ptr(3, o, k.vty), align=4)
        bld.store(index, k.ptr(4, o, vity), align=4)

    return _block_intrinsic(width, emit)


def _pool2x2_bwd_block(width: int):
    """The backward block of :func:`_make_pool2x2_blocks` (image dxf, outs dyf)."""
    zipped = lane_mask([j for i in range(width) for j in (i, width + i)])  # a0 b0 a1 b1 ...

    def emit(k: _Block):
        bld, ity, vity = k.builder, k.ity, k.vity
        top, bot, o = k.args[1], k.args[2], k.args[5]
        zero = ir.Constant(k.vty, [ir.Constant(k.vty.element, 0.0)] * width)
        # + 0 as in 0 += dy: -0.0 becomes 0.0 (no fast-math flag may drop it)
        g = bld.fadd(bld.load(k.ptr(3, o, k.vty), align=4), zero)
        a = bld.load(k.ptr(4, o, vity), align=4)
        lanes = ir.Constant(vity, [ir.Constant(ity, 2 * i) for i in range(width)])
        rel = bld.sub(a, bld.add(splat(bld, vity, k.at), lanes))
        parts = [bld.select(bld.icmp_signed("==", rel, splat(bld, vity, c)), g, zero)
                 for c in (ir.Constant(ity, 0), ir.Constant(ity, 1), k.W,
                           bld.add(k.W, ir.Constant(ity, 1)))]
        for (left, right), row in (((parts[0], parts[1]), top), ((parts[2], parts[3]), bot)):
            bld.store(bld.shuffle_vector(left, right, zipped), k.ptr(0, row, k.wide), align=4)

    return _block_intrinsic(width, emit)


def _make_pool2x2_blocks(width: int):
    """The 2×2 max-pool's vector blocks of ``width`` outputs of one output row:

    ``fwd(xf, top, bot, yf, af, o, at, W)``: for i < width, the window of top-row pixels
    xf[top + 2i], xf[top + 2i + 1] and bottom-row pixels xf[bot + 2i], xf[bot + 2i + 1] (in
    that order, row-major) gives yf[o + i] (its max: a NaN wins, the first NaN stays, ties keep
    the first) and af[o + i] (at + 2i plus 0, 1, W or W + 1: the flat index of that pixel);

    ``bwd(dxf, top, bot, dyf, af, o, at, W)`` (the same argument order): the inverse: dxf[top + 2i + {0, 1}] and
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


@njit(inline="always")
def _block_count(Q):
    """How many vector blocks a row of Q outputs takes: whole blocks, then one that overlaps
    the last (when Q is no multiple of POOL_BLOCK); half blocks likewise; else none."""
    B, B2 = POOL_BLOCK, POOL_BLOCK // 2
    return (Q + B - 1) // B if Q >= B else (Q + B2 - 1) // B2 if Q >= B2 else 0


@njit(inline="always")
def _block_at(i, Q):
    """(first output, whole block or half) of block i < _block_count(Q) of a row."""
    full = Q >= POOL_BLOCK
    width = POOL_BLOCK if full else POOL_BLOCK // 2
    return min(i * width, Q - width), full


@njit(inline="always")
def _row_offsets(nc, p, H, W, P, Q):
    """For output row p of plane nc: (flat index in the plane of the row's first window's
    top-left pixel, flat offsets of its top and bottom input rows, of its outputs)."""
    h = 2 * p
    top = np.uint64((nc * H + h) * W)
    return h * W, top, top + np.uint64(W), np.uint64((nc * P + p) * Q)


@njit(inline="always")
def _row_blocks(image, top, bot, outs, af, o, at, W, Q, backward):
    """The vector blocks of one output row (``_make_pool2x2_blocks``): forward, ``image`` is x
    and ``outs`` y; ``backward``, ``image`` is dx and ``outs`` dy."""
    for i in range(_block_count(Q)):
        q, full = _block_at(i, Q)
        uq = np.uint64(q)
        t, b, oq, aq = top + 2 * uq, bot + 2 * uq, o + uq, at + 2 * q
        if backward and full:
            _pool_bwd_full(image, t, b, outs, af, oq, aq, W)
        elif backward:
            _pool_bwd_half(image, t, b, outs, af, oq, aq, W)
        elif full:
            _pool_fwd_full(image, t, b, outs, af, oq, aq, W)
        else:
            _pool_fwd_half(image, t, b, outs, af, oq, aq, W)


@njit(inline="always")
def _max2x2_row(xf, yf, af, at, top, bot, o, W, Q):
    """One output row of :func:`_maxpool2x2_fwd`: its vector blocks, then the outputs past
    them (rows shorter than a half block) as scalar selects."""
    _row_blocks(xf, top, bot, yf, af, o, at, W, Q, False)
    for q in range(Q if Q >= POOL_BLOCK // 2 else 0, Q):
        t = top + np.uint64(2 * q)
        b = bot + np.uint64(2 * q)
        best = xf[t]
        off = 0
        for v, k in ((xf[t + 1], 1), (xf[b], W), (xf[b + 1], W + 1)):
            keep = (v <= best) | (best != best)
            best = _pick(keep, best, v)
            off = _pick(keep, off, k)
        yf[o + np.uint64(q)] = best
        af[o + np.uint64(q)] = at + 2 * q + off


@njit(inline="always")
def _max2x2_row_grad(dyf, af, dxf, at, top, bot, o, W, Q):
    """One output row of :func:`_maxpool2x2_bwd`: its vector blocks, the outputs past them
    as scalar selects, and zeros in an odd last column."""
    _row_blocks(dxf, top, bot, dyf, af, o, at, W, Q, True)
    for q in range(Q if Q >= POOL_BLOCK // 2 else 0, Q):
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


@njit(parallel=True, cache=True)
def _maxpool2x2(image, outs, arg, backward):
    """Both directions of the 2×2 max-pool (``image`` x and ``outs`` y, or ``backward``, dx and
    dy): one plane per thread, each output row in vector blocks, its short remainder in
    scalar selects (:func:`_max2x2_row`, :func:`_max2x2_row_grad`)."""
    N, C, H, W = image.shape
    P, Q = outs.shape[2], outs.shape[3]
    imf = image.reshape(image.size)
    of = outs.reshape(outs.size)
    af = arg.reshape(arg.size)
    for nc in prange(N * C):
        for p in range(P):
            at, top, bot, o = _row_offsets(nc, p, H, W, P, Q)
            if backward:
                _max2x2_row_grad(of, af, imf, at, top, bot, o, W, Q)
            else:
                _max2x2_row(imf, of, af, at, top, bot, o, W, Q)
        if backward:  # an odd last row, outside every window
            for h in range(2 * P, H):
                for w in range(W):
                    image[nc // C, nc % C, h, w] = 0


@njit(cache=True)
def _maxpool2x2_fwd(x, y, arg):
    """:func:`_maxpool_fwd` for the common 2×2 window, stride 2, no padding: each output row in
    vector blocks (``_make_pool2x2_blocks``, the same on every compile target), its short
    remainder without branches (explicit selects, ``_pick``). A candidate v replaces the
    best so far unless ``v <= best`` or best is NaN: a NaN wins, the first NaN stays, ties
    keep the first."""
    _maxpool2x2(x, y, arg, False)


@njit(cache=True)
def _maxpool2x2_bwd(dy, arg, dx):
    """:func:`_maxpool_bwd` for the 2×2 window, stride 2, no padding: the windows tile dx, so
    every element is written once (dy or 0) and dx needs no zeroing first; an odd last row or
    column, outside every window, gets 0. Vector blocks and a branch-free remainder, as in
    :func:`_maxpool2x2_fwd`."""
    _maxpool2x2(dx, dy, arg, True)


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


@njit(inline="always")
def _window_walk(a, n, c, p, q, win, share, spread):
    """The real pixels of output (p, q)'s window in plane (n, c) of ``a`` (x or dx; padding is
    no pixel), in (r, s) order: with ``spread``, each gets ``+= share``; else their sum."""
    H, W = a.shape[2], a.shape[3]
    h0 = p * win.sh - win.ph
    w0 = q * win.sw - win.pw
    total = np.float32(0)
    for r in range(win.R):
        h = h0 + r
        if 0 <= h < H:
            for s in range(win.S):
                w = w0 + s
                if 0 <= w < W:
                    if spread:
                        a[n, c, h, w] += share
                    else:
                        total += a[n, c, h, w]
    return total


@njit(parallel=True, cache=True)
def _avgpool_fwd(x, win, scale, y):
    """y = Σ of the window's pixels (padding counts as 0) · scale[0] (1/(R·S) in x's dtype),
    one plane per thread; ``win`` is an ``args.PoolWindow``."""
    C = x.shape[1]
    for nc in prange(x.shape[0] * C):
        n, c = nc // C, nc % C
        for p in range(y.shape[2]):
            for q in range(y.shape[3]):
                y[n, c, p, q] = _window_walk(x, n, c, p, q, win, 0.0, False) * scale[0]


@njit(parallel=True, cache=True)
def _avgpool_bwd(dy, win, scale, dx):
    """dx (zero on entry) += dy · scale[0] over every window, one plane per thread."""
    C = dy.shape[1]
    for nc in prange(dy.shape[0] * C):
        n, c = nc // C, nc % C
        for p in range(dy.shape[2]):
            for q in range(dy.shape[3]):
                _window_walk(dx, n, c, p, q, win, dy[n, c, p, q] * scale[0], True)
