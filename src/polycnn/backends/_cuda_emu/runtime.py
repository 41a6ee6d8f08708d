"""Load an emulated kernel library and launch its kernels, checking every argument first.

Arguments follow CuPy's conventions (``cupy.RawKernel.__call__``): a device array passes its
pointer, ``None`` a null pointer, a size-1 host ``numpy.ndarray`` its bytes by value (a struct),
a NumPy scalar its own type, a Python ``int`` an int64 and a Python ``float`` a float64. Each is
checked against the parameter type the compiler saw; on a GPU the mismatches below would be
silent garbage, here they are ``TypeError``/``ValueError`` naming the kernel and the argument.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

import numpy as np

from ...errors import BackendUnavailable
from . import build

_SCALAR_TYPES = {"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                 "float32", "float64"}
_LOCK = threading.Lock()
_LIBRARIES: dict[str, "Library"] = {}

#: the most worker threads the emulator runs a launch on (cuda_emu.h caps it there too)
MAX_THREADS = 1024


def read_options() -> dict:
    """The emulator options the environment sets: ``POLYCNN_EMU_REVERSE`` (1: run the threads
    of a block in reverse order between barriers; 0 or unset: in order) and
    ``POLYCNN_EMU_THREADS`` (worker threads, 1 to MAX_THREADS; 0 or unset: one per CPU).
    BackendUnavailable naming the variable, its value and what it takes."""
    reverse = os.environ.get("POLYCNN_EMU_REVERSE", "").strip()
    if reverse not in ("", "0", "1"):
        raise BackendUnavailable(
            f"POLYCNN_EMU_REVERSE={reverse!r} is not 0 or 1 (1: run each block's threads in"
            " reverse order between barriers; 0 or unset: in order)")
    threads = os.environ.get("POLYCNN_EMU_THREADS", "").strip()
    count = int(threads) if threads.isascii() and threads.isdigit() else -1
    if threads and not 0 <= count <= MAX_THREADS:
        raise BackendUnavailable(
            f"POLYCNN_EMU_THREADS={threads!r} is not a number of emulator threads: expected a"
            f" whole number from 1 to {MAX_THREADS}, or 0 (or unset) for one per CPU")
    return {"reverse": reverse == "1", "threads": count if count > 0 else (os.cpu_count() or 1)}


def check_environment() -> None:
    """BackendUnavailable when a ``POLYCNN_EMU_*`` variable holds a value the emulator cannot
    use (the options above, ``POLYCNN_EMU_SANITIZE``)."""
    read_options()
    try:
        build.cxx_flags()
    except ValueError as exc:
        raise BackendUnavailable(str(exc)) from None


def _initial_options() -> dict:
    try:
        return read_options()
    except BackendUnavailable:  # NOTE: said by check_environment when the backend is created
        return {"reverse": False, "threads": os.cpu_count() or 1}


#: emulator options (see read_options), read from the environment when this module loads
options = _initial_options()


@dataclass(frozen=True)
class Kernel:
    library: "Library"
    index: int
    name: str
    params: tuple[str, ...]

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        grid = _dims(grid, "grid", self.name)
        block = _dims(block, "block", self.name)
        args = tuple(args)
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments"
                            f" ({', '.join(self.params)}), got {len(args)}")
        keep = [_argument(self.name, i, p, a) for i, (p, a) in enumerate(zip(self.params, args))]
        pointers = (ctypes.c_void_p * max(1, len(keep)))(
            *[ctypes.cast(k, ctypes.c_void_p) for k in keep])
        flags = 1 if options["reverse"] else 0
        lib = self.library.lib
        status = lib.emu_launch(self.index, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
                                ctypes.c_ulonglong(int(shared_mem)), pointers, flags,
                                int(options["threads"]))
        if status != 0:
            raise RuntimeError(f"cupy-emu: kernel {self.name}: {lib.emu_last_error().decode()}")


class Library:
    """One compiled source: its kernels by name."""

    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        lib.emu_kernel_name.restype = ctypes.c_char_p
        lib.emu_kernel_signature.restype = ctypes.c_char_p
        lib.emu_last_error.restype = ctypes.c_char_p
        lib.emu_launch.restype = ctypes.c_int
        lib.emu_launch.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint),
                                   ctypes.POINTER(ctypes.c_uint), ctypes.c_ulonglong,
                                   ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        self.lib = lib
        self.kernels = {}
        for i in range(lib.emu_kernel_count()):
            name = lib.emu_kernel_name(i).decode()
            params = tuple(lib.emu_kernel_signature(i).decode().split(";"))
            self.kernels[name] = Kernel(self, i, name, params if params != ("",) else ())


def load(source: str) -> Library:
    """The library compiled from ``source`` (compiled and loaded once per process)."""
    path = str(build.build(source))
    with _LOCK:
        if path not in _LIBRARIES:
            _LIBRARIES[path] = Library(path)
        return _LIBRARIES[path]


def _dims(value, what: str, kernel: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        value = (value,)
    value = tuple(int(v) for v in value)
    if not 1 <= len(value) <= 3 or min(value) < 0:
        raise ValueError(f"{kernel}: {what} must be 1 to 3 non-negative sizes, got {value}")
    return (value + (1, 1))[:3]


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{type(value).__module__}.{type(value).__name__} {value.dtype} shape {value.shape}"
    return f"{type(value).__name__} {value!r:.40}"


def _argument(kernel: str, i: int, param: str, value):
    """A ctypes buffer holding the argument's bytes (kept alive by the caller)."""
    from .standin import ndarray as device_array

    where = f"{kernel}: argument {i} ({param})"
    if param.endswith("*"):
        pointee = param.removeprefix("const ").removesuffix("*")
        if value is None:
            return ctypes.pointer(ctypes.c_void_p(0))
        if not isinstance(value, device_array):
            raise TypeError(f"{where} must be a device array, got {_describe(value)}"
                            " (a host array is never a device pointer)")
        if value.dtype.name != pointee:
            raise TypeError(f"{where} must hold {pointee}, got {value.dtype} (shape {value.shape})")
        if not value.flags.c_contiguous:
            raise ValueError(f"{where} is not C-contiguous (shape {value.shape}, strides"
                             f" {value.strides}): a kernel sees only the pointer, so the strides"
                             " would be ignored; pass cupy.ascontiguousarray(...)")
        if not param.startswith("const ") and not value.flags.writeable:
            raise ValueError(f"{where} is read-only but the kernel writes through it")
        return ctypes.pointer(ctypes.c_void_p(value.ctypes.data))
    if param.startswith("struct "):
        size = int(param.rsplit(":", 1)[1])
        if (type(value) is not np.ndarray or value.size != 1 or value.dtype.names is None
                or value.dtype.itemsize != size):
            raise TypeError(f"{where} is a {size}-byte struct passed by value: pass a size-1 numpy"
                            f" array of a structured dtype of {size} bytes, got {_describe(value)}")
        return ctypes.create_string_buffer(np.ascontiguousarray(value).tobytes(), size)
    if param not in _SCALAR_TYPES:
        raise TypeError(f"{where}: parameter type not supported by cupy-emu")
    if isinstance(value, np.generic):
        sent = value.dtype
    elif isinstance(value, bool):
        sent = np.dtype(np.bool_)
    elif isinstance(value, int):
        sent = np.dtype(np.int64)
    elif isinstance(value, float):
        sent = np.dtype(np.float64)
    else:
        raise TypeError(f"{where} must be a NumPy scalar, got {_describe(value)}")
    if sent.name != param:
        raise TypeError(f"{where} got {_describe(value)}, which CuPy passes as {sent.name}"
                        f" ({sent.itemsize} bytes): pass numpy.{param}(...)")
    return ctypes.create_string_buffer(np.asarray(value, dtype=sent).tobytes(), sent.itemsize)
