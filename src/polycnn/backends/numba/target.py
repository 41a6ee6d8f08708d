"""What the compile target gives the kernels (SIMD width, fast-math flags) and the LLVM IR
helpers shared by the hand-written micro-kernels (:mod:`.tiles`, :mod:`.pool`).

NOTE: ``fastmath`` is limited to reassociation/contraction (no ``nnan``/``ninf``): NaN and inf
still propagate, and reassociation only changes the order inside a loop that LLVM fixes at
compile time, so results do not depend on the thread count.
"""

from __future__ import annotations

from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.core.codegen import get_host_cpu_features

#: fast-math flags for the GEMM loops (vectorised reductions); see the module NOTE
FAST = {"reassoc", "contract", "nsz"}

I32 = ir.IntType(32)
I64 = ir.IntType(64)


def _simd_bytes() -> int:
    """Bytes in one SIMD register of the CPU Numba compiles for (AVX-512 or not)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return 64 if "+avx512f" in features.split(",") else 32


SIMD_BYTES = _simd_bytes()


def float_vector(dtype):
    """(LLVM vector type of one SIMD register of ``dtype`` floats, lanes, intrinsic suffix)."""
    single = dtype == types.float32
    width = SIMD_BYTES // (4 if single else 8)
    fty = ir.FloatType() if single else ir.DoubleType()
    return ir.VectorType(fty, width), width, f"v{width}{'f32' if single else 'f64'}"


def vector_intrinsic(builder, name: str, result, operands, suffix: str):
    """The LLVM intrinsic ``llvm.<name>.<suffix>`` (``fma``, ``vector.reduce.fadd``) of this
    module, declared on first use."""
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(result, operands), f"llvm.{name}.{suffix}")


def lane_mask(values):
    """A constant i32 vector: the lane selector of a ``shufflevector``."""
    return ir.Constant(ir.VectorType(I32, len(values)), values)


def splat(builder, vty, value):
    """``value`` in every lane of a vector of type ``vty``."""
    undef = ir.Constant(vty, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(one, undef, lane_mask([0] * vty.count))


def array_data(context, builder, ty, value):
    """The data pointer of a Numba array argument."""
    return context.make_array(ty)(context, builder, value).data


def vector_pointer(context, builder, ty, value, offset, vty):
    """Element ``offset`` of the array argument ``value`` as a pointer to a ``vty`` vector."""
    data = array_data(context, builder, ty, value)
    return builder.bitcast(builder.gep(data, [offset]), vty.as_pointer())
