"""The CUDA kernels' side of the cupy backend, as tables: launch constants, the parameter list
of every kernel (checked before each launch: a mismatch on a GPU is silent garbage), the dtypes
each is compiled for, and the kernel sources. No CuPy here; cupy_backend launches."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import numpy as np

from ._tiles import TILES

CONV_SHAPE = np.dtype([(f, np.int32) for f in (
    "N", "C", "H", "W", "K", "R", "S", "P", "Q", "sh", "sw", "ph", "pw", "dh", "dw", "chunk")])
POOL_SHAPE = np.dtype([(f, np.int32) for f in (
    "N", "C", "H", "W", "R", "S", "P", "Q", "sh", "sw", "ph", "pw")])

# NOTE: these mirror the #defines of gemm_tile.cuh and glue.cu; the launch shapes depend on them.
GEMM_THREADS = 256
BIAS_THREADS = 256
#: the fewest dy entries one block of the bias gradient sums (8 a thread)
BIAS_MIN_CHUNK = 8 * BIAS_THREADS
#: block size of every grid-stride kernel (pools, reductions, glue, few-channel backward-data)
ELEMENTWISE_THREADS = 256
#: cross_entropy's one block (its shared-memory tree is this wide)
GLUE_THREADS = 256
#: backward-data of at most this many input channels runs the one-pixel-a-thread kernel
FEWC_MAX = 4

#: Upper bound on the backward-weight partial sums, in bytes.
PARTIAL_BYTES = 64 * 2**20
_INT32_MAX = 2**31 - 1

#: NVRTC options given to ``cupy.RawModule`` (CuPy adds the device's ``-arch``); the compile
#: gate in tests/backends/test_cuda_compile.py uses the same.
COMPILE_OPTIONS = ("--std=c++17",)

#: Kernel name (without the dtype suffix) -> its source file and parameters. ``T`` is the op's
#: dtype; ``?`` marks a pointer that may be null.
KERNELS = {
    "conv2d_fwd": ("conv2d.cu", ("x: const T*", "w: const T*", "b: const T*?", "y: T*",
                                 "s: ConvShape")),
    "conv2d_bwd_data": ("conv2d.cu", ("dy: const T*", "w: const T*", "dx: T*", "s: ConvShape")),
    "conv2d_bwd_weight": ("conv2d.cu", ("dy: const T*", "x: const T*", "partial: T*",
                                        "s: ConvShape")),
    "conv2d_reduce": ("conv2d.cu", ("partial: const T*", "out: T*", "count: int64",
                                    "splits: int32")),
    "conv2d_bias_grad": ("conv2d.cu", ("dy: const T*", "partial: T*", "s: ConvShape")),
    "maxpool2d_fwd": ("pool2d.cu", ("x: const T*", "y: T*", "argmax: int32*", "s: PoolShape")),
    "maxpool2d_bwd": ("pool2d.cu", ("dy: const T*", "argmax: const int32*", "dx: T*",
                                    "s: PoolShape")),
    "avgpool2d_fwd": ("pool2d.cu", ("x: const T*", "y: T*", "s: PoolShape")),
    "avgpool2d_bwd": ("pool2d.cu", ("dy: const T*", "dx: T*", "s: PoolShape")),
    "relu_fwd": ("glue.cu", ("x: const T*", "y: T*", "count: int64")),
    "relu_bwd": ("glue.cu", ("dy: const T*", "x: const T*", "dx: T*", "count: int64")),
    "dropout_mask": ("glue.cu", ("keep: bool*", "count: int64", "key: uint64",
                                 "threshold: uint64")),
    "dropout_mask_keyed": ("glue.cu", ("keep: bool*", "count: int64", "keys: const uint64*",
                                       "threshold: uint64")),
    "dropout_apply": ("glue.cu", ("x: const T*", "keep: const bool*", "y: T*", "count: int64",
                                  "scale: T")),
    "sgd_step": ("glue.cu", ("p: T*", "grad: const T*", "v: T*", "count: int64", "lr: T",
                             "momentum: T", "wd: T", "nesterov: int32")),
    "cross_entropy": ("glue.cu", ("logits: const T*", "labels: const int64*", "dlogits: T*",
                                  "loss: float64*", "n: int32", "k: int32", "smoothing: T")),
}
KERNELS["conv2d_bwd_data_fewc"] = KERNELS["conv2d_bwd_data"]
KERNELS["conv2d_fwd_relu"] = KERNELS["conv2d_fwd"]  # the ReLU fused into the epilogue
for _op in ("conv2d_fwd", "conv2d_fwd_relu", "conv2d_bwd_data", "conv2d_bwd_weight"):
    for _tile in TILES:
        KERNELS[_op + _tile] = KERNELS[_op]
    KERNELS[_op + "_tf32"] = KERNELS[_op]
_STRUCTS = {"ConvShape": CONV_SHAPE, "PoolShape": POOL_SHAPE}


class _Param:
    """One parameter of KERNELS, parsed once: checks an argument before a launch."""

    def __init__(self, spec: str):
        self.name, kind = (p.strip() for p in spec.split(":"))
        self.spec = kind
        self.nullable = kind.endswith("?")
        kind = kind.rstrip("?")
        self.pointer = kind.endswith("*")
        base = kind.rstrip("*").removeprefix("const ")
        self.elem = None if base == "T" else np.dtype(_STRUCTS.get(base, base))
        self.struct = base in _STRUCTS

    def check(self, value, shape, dtype, device, array_type):
        """None when ``value`` fits, else (exception type, what is wrong)."""
        if self.pointer:
            if value is None:
                return None if self.nullable else (TypeError, "is None")
            want = dtype if self.elem is None else self.elem
            if not isinstance(value, array_type):
                return TypeError, f"must be a device array, got {type(value).__name__}"
            if value.dtype != want:
                return TypeError, f"must be {np.dtype(want)}, got {value.dtype}"
            if not value.flags.c_contiguous:
                return ValueError, (f"must be C-contiguous (shape {value.shape},"
                                    f" strides {value.strides})")
            if value.device.id != device:
                return ValueError, (f"lives on device {value.device.id}, the kernel on device"
                                    f" {device}")
            if value.shape != tuple(shape):
                return ValueError, f"has shape {tuple(value.shape)}, expected {tuple(shape)}"
            return None
        if self.struct:
            if type(value) is not np.ndarray or value.dtype != self.elem or value.size != 1:
                return TypeError, f"must be a size-1 numpy array of dtype {self.spec}"
            return None
        want = np.dtype(dtype) if self.elem is None else self.elem
        if type(value) is not want.type:
            return TypeError, f"must be numpy.{want.name}, got {type(value).__name__}"
        return None


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: the dtypes a kernel is compiled for, when not float32 and float64
KERNEL_DTYPES = {"dropout_mask": (np.dtype(np.bool_),), "dropout_mask_keyed": (np.dtype(np.bool_),),
                 **{op + "_tf32": (np.dtype(np.float32),)
                    for op in ("conv2d_fwd", "conv2d_fwd_relu", "conv2d_bwd_data",
                               "conv2d_bwd_weight")}}


def entry_points(name: str) -> list[tuple[str, np.dtype]]:
    """(entry point, dtype) of each compiled variant of kernel ``name``: ``<name>_<C type>``."""
    return [(f"{name}_{_C_TYPES[d]}", d) for d in KERNEL_DTYPES.get(name, _FLOAT_DTYPES)]


_PARAMS = {name: tuple(_Param(p) for p in params) for name, (_, params) in KERNELS.items()}
#: kernel-name suffix of each dtype a kernel is launched for (``bool``: dropout_mask's output)
_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
            np.dtype(np.bool_): "bool"}


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


#: ``#include "name.cuh"``: a header of kernels/, inlined by kernel_source
_INCLUDE = re.compile(r'[ \t]*#[ \t]*include[ \t]*"([^"]*)"[ \t]*')
_HEADER = re.compile(r"[A-Za-z0-9_]+\.cuh")


def kernel_source(filename: str, kernel_dir=None) -> str:
    """The text of ``kernels/<filename>`` as one string, each ``#include "name.cuh"`` replaced by
    that header of the same folder (once, as under ``#pragma once``), with ``#line`` directives
    naming the real files: NVRTC and the emulator's g++ compile a string, which has no folder to
    look for headers in. ValueError for an include that is not a plain ``name.cuh``."""
    folder = resources.files("polycnn.kernels") if kernel_dir is None else Path(kernel_dir)
    inlined: set[str] = set()

    def expand(name: str) -> list[str]:
        inlined.add(name)
        lines = [f'#line 1 "kernels/{name}"']
        for number, line in enumerate((folder / name).read_text().splitlines(), 1):
            m = _INCLUDE.fullmatch(line)
            if m is None:
                lines.append(line)
                continue
            if not _HEADER.fullmatch(m[1]):
                raise ValueError(f"kernels/{name}, line {number}: #include \"{m[1]}\": a kernel"
                                 " source may include only a header of kernels/, name.cuh")
            if m[1] in inlined:
                lines.append("")  # keeps the line numbers
            else:
                lines += expand(m[1])
                lines.append(f'#line {number + 1} "kernels/{name}"')
        return lines

    return "\n".join(expand(filename)) + "\n"
