"""The hand-written register tiles of the convolution kernels, in LLVM IR: the row-direct
kernel's GEMM micro-kernel (``_make_register_tile``), the weight gradient's dot-product tile
(``_make_dot_tile``), and the FMA probe of the benchmark (``_make_fma_loop``).

NOTE: written as IR because LLVM does not keep array accumulators in registers across a loop;
each tile holds one accumulator register per output (a fixed summation order). Under
NUMBA_DISABLE_JIT each is the same sum in NumPy.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import config, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .target import I64, SIMD_BYTES, array_data, float_vector, splat, vector_intrinsic

#: the register tiles of the row-direct kernel, (output channels, SIMD vectors of pixels),
#: one accumulator register each: 24 of AVX-512's 32 registers (8 × 3, 6 × 4), or 20 for
#: passes with at most 4 output channels; AVX2 has 16 registers. A pass takes the tile that
#: pads its channel count least (see ``plan.pick_tile``)
TILES = ((8, 3), (6, 4), (4, 5)) if SIMD_BYTES == 64 else ((8, 1), (6, 2), (4, 3))

#: float32 pixels in the widest register tile: the row-direct kernel's source has ``Ws +
#: ZBLOCK`` zeros of slack
ZBLOCK = max(v for _, v in TILES) * SIMD_BYTES // 4


def _register_tile_py(tm: int, tv: int):
    """:func:`_make_register_tile` in NumPy (NUMBA_DISABLE_JIT)."""

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


def _make_register_tile(tm: int, tv: int):
    """The micro-kernel ``tile(flat, at, utab, l0, l1, base, m0, acc, zcol)``:

    acc[m0 + m, zcol + i] = Σ_{l0 <= l < l1} at[l, m0 + m] · flat[base + utab[l] + i] for
    m < tm, i < tv
    SIMD vectors of pixels, built in LLVM IR with one accumulator register per (m, vector),
    so a tap costs tv loads and tm broadcasts for tm·tv fused multiply-adds, in tap order
    l = l0, l0 + 1, ... (the sum's order is fixed). It is the register-blocked micro-kernel
    of a GEMM reading its right-hand operand straight from the padded source (no gathered
    copy)."""
    if config.DISABLE_JIT:
        return _register_tile_py(tm, tv)

    @intrinsic
    def tile(typingctx, flat, at, utab, l0, l1, base, m0, acc, zcol):
        sig = types.void(flat, at, utab, l0, l1, base, m0, acc, zcol)

        def codegen(context, builder, signature, args):
            flat_v, at_v, utab_v, l0_v, l1_v, base_v, m0_v, acc_v, zcol_v = args
            vty, width, suffix = float_vector(signature.args[0].dtype)
            src = array_data(context, builder, signature.args[0], flat_v)
            at_ary = context.make_array(signature.args[1])(context, builder, at_v)
            tab = array_data(context, builder, signature.args[2], utab_v)
            acc_ary = context.make_array(signature.args[7])(context, builder, acc_v)
            at_cols = builder.extract_value(at_ary.shape, 1)
            acc_cols = builder.extract_value(acc_ary.shape, 1)
            fma = vector_intrinsic(builder, "fma", vty, [vty, vty, vty], suffix)
            zero = ir.Constant(vty, [ir.Constant(vty.element, 0.0)] * width)

            def acc_ptr(m, v):
                row = builder.add(builder.mul(builder.add(m0_v, ir.Constant(I64, m)), acc_cols),
                                  zcol_v)
                p = builder.gep(acc_ary.data, [builder.add(row, ir.Constant(I64, v * width))])
                return builder.bitcast(p, vty.as_pointer())

            # allocas in the entry block: LLVM promotes them to registers
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(tv)]
                    for _ in range(tm)]
            one = ir.Constant(I64, 1)
            with cgutils.for_range_slice(builder, l0_v, l1_v, one, intp=I64) as (l, _):
                off = builder.add(base_v, builder.load(builder.gep(tab, [l])))
                srcs = []
                for v in range(tv):
                    p = builder.gep(src, [builder.add(off, ir.Constant(I64, v * width))])
                    srcs.append(builder.load(builder.bitcast(p, vty.as_pointer()), align=4))
                row = builder.add(builder.mul(l, at_cols), m0_v)
                for m in range(tm):
                    p = builder.gep(at_ary.data, [builder.add(row, ir.Constant(I64, m))])
                    av = splat(builder, vty, builder.load(p))
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


def _dot_tile_py(tk: int, tj: int):
    """:func:`_make_dot_tile` in NumPy (NUMBA_DISABLE_JIT)."""

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


def _make_dot_tile(tk: int, tj: int):
    """The weight gradient's micro-kernel
    ``dot(a, ab, astride, b, bb, utab, j0, zlen, out, k0, count, an, bn)``:

    out[k0 + k, j0 + j] += Σ_{i < count} Σ_{z < zlen} a[ab + i*an + k*astride + z]
                                                      · b[bb + i*bn + utab[j0 + j] + z]

    for k < tk, j < tj (i: samples): tk·tj accumulator registers along i then z (zlen a
    multiple of one SIMD vector), tk + tj loads for tk·tj fused multiply-adds, each register
    summed across its lanes at the end (a tree fixed at compile time)."""
    if config.DISABLE_JIT:
        return _dot_tile_py(tk, tj)

    @intrinsic
    def dot(typingctx, a, ab, astride, b, bb, utab, j0, zlen, out, k0, count, an, bn):
        sig = types.void(a, ab, astride, b, bb, utab, j0, zlen, out, k0, count, an, bn)

        def codegen(context, builder, signature, args):
            (a_v, ab_v, as_v, b_v, bb_v, utab_v, j0_v, zlen_v, out_v, k0_v, count_v, an_v,
             bn_v) = args
            vty, width, suffix = float_vector(signature.args[0].dtype)
            fty = vty.element
            aptr = array_data(context, builder, signature.args[0], a_v)
            bptr = array_data(context, builder, signature.args[3], b_v)
            tab = array_data(context, builder, signature.args[5], utab_v)
            out_ary = context.make_array(signature.args[8])(context, builder, out_v)
            out_cols = builder.extract_value(out_ary.shape, 1)
            fma = vector_intrinsic(builder, "fma", vty, [vty, vty, vty], suffix)
            hsum = vector_intrinsic(builder, "vector.reduce.fadd", fty, [fty, vty], suffix)
            zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * width)
            accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(tj)]
                    for _ in range(tk)]
            rows = [builder.add(ab_v, builder.mul(ir.Constant(I64, k), as_v)) for k in range(tk)]
            cols = [builder.add(bb_v, builder.load(builder.gep(
                tab, [builder.add(j0_v, ir.Constant(I64, j))]))) for j in range(tj)]
            step = ir.Constant(I64, width)
            with cgutils.for_range(builder, count_v) as sample:
                ia = builder.mul(sample.index, an_v)
                ib = builder.mul(sample.index, bn_v)
                with cgutils.for_range_slice(builder, ir.Constant(I64, 0), zlen_v, step,
                                             intp=I64) as (z, _):
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
                orow = builder.mul(builder.add(k0_v, ir.Constant(I64, k)), out_cols)
                for j in range(tj):
                    p = builder.gep(out_ary.data, [builder.add(orow, builder.add(
                        j0_v, ir.Constant(I64, j)))])
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
            vty, _, suffix = float_vector(types.float32)
            f32 = vty.element
            av = splat(builder, vty, context.cast(builder, a_v, signature.args[1], types.float32))
            bv = splat(builder, vty, context.cast(builder, b_v, signature.args[2], types.float32))
            fma = vector_intrinsic(builder, "fma", vty, [vty, vty, vty], suffix)
            start = [ir.Constant(vty, [ir.Constant(f32, 1.0 + k / 64)] * FMA_LANES)
                     for k in range(FMA_ACCS)]
            accs = [cgutils.alloca_once_value(builder, v) for v in start]
            count = context.cast(builder, iters_v, signature.args[0], types.int64)
            with cgutils.for_range(builder, count, intp=I64):
                for acc in accs:
                    builder.store(builder.call(fma, [builder.load(acc), av, bv]), acc)
            total = builder.load(accs[0])
            for acc in accs[1:]:
                total = builder.fadd(total, builder.load(acc))
            hsum = vector_intrinsic(builder, "vector.reduce.fadd", f32, [f32, vty], suffix)
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
