"""The Numba backend's compiled loops (private: plain arrays, ints and the named tuples of
:mod:`.args`), behind :mod:`polycnn.backends.numba_backend`.

Modules: :mod:`.target` (SIMD width, fast-math flags, LLVM IR helpers), :mod:`.tiles` (register
and dot-product tiles in LLVM IR), :mod:`.layout` (padding copies), :mod:`.gemm` (GEMM loops),
:mod:`.conv` (convolution passes), :mod:`.pool` (pooling), :mod:`.glue` (ReLU, dropout,
cross-entropy); :mod:`.kernels` gathers them, :mod:`.loader` imports it with a private cache;
:mod:`.args` and :mod:`.plan` are plain Python for the backend's side.

Legend: N batch, C input channels, H×W input, K output channels, R×S kernel, P×Q output,
L reduction length of a GEMM, T a tile of output pixels. A trailing ``p`` (Kp, Lp) is a size
rounded up for a register-blocked micro-kernel; the padding is zero-filled.

NOTE: this file imports nothing: importing a kernel module decorates its kernels, which must
happen inside :func:`.loader.load_kernels` (see there).
"""
