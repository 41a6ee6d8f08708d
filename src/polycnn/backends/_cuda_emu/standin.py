"""A stand-in for the part of CuPy that polycnn's ``cupy`` backend uses, backed by the CPU.

``ndarray`` is a NumPy subclass: "device" arrays can be told apart from host arrays and are
refused where CuPy refuses them (a host ``numpy.ndarray`` as a kernel pointer or mixed into
arithmetic with a device array). Array functions the glue needs are forwarded to NumPy at module
level and return device arrays. ``empty`` memory is filled with 0xFF bytes (NaN as a float), so a
kernel that forgets to write an output shows it. Kernels are compiled with g++ (see
:mod:`.build`) and launched with CuPy's call form ``kernel(grid, block, args, shared_mem=...)``.
"""

from __future__ import annotations

import numpy as np

from . import runtime

__version__ = "emu"


class ndarray(np.ndarray):  # noqa: N801 (CuPy's name)
    """A 'device' array of the emulator."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        outs = kwargs.get("out", ())
        for a in inputs + tuple(outs):
            if type(a) is np.ndarray and a.ndim > 0:
                raise TypeError(
                    f"cupy-emu: {ufunc.__name__} mixes a device array with a host numpy.ndarray"
                    f" of shape {a.shape}; CuPy refuses this (convert with cupy.asarray)")
        inputs = tuple(a.view(np.ndarray) if isinstance(a, ndarray) else a for a in inputs)
        if outs:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, ndarray) else o for o in outs)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if outs:
            return outs[0] if len(outs) == 1 else outs
        if isinstance(result, tuple):
            return tuple(_device(r) for r in result)
        return _device(result)

    @property
    def device(self):
        return cuda.Device(0)

    def get(self):
        return asnumpy(self)


def _device(value):
    """A NumPy result as a device array (scalars become 0-d arrays, as CuPy's are)."""
    if isinstance(value, ndarray):
        return value
    if isinstance(value, (np.ndarray, np.generic)):
        return np.asarray(value).view(ndarray)
    return value


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    # NOTE: always a copy, as a host-to-device transfer is: no aliasing of host memory
    return np.array(np.asarray(a), dtype=dtype, copy=True, order=order or "K").view(ndarray)


array = asarray


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a).view(ndarray)


def empty(shape, dtype=np.float64, order="C"):
    out = np.empty(shape, dtype=dtype, order=order)
    out.view(np.uint8)[...] = 0xFF
    return out.view(ndarray)


def empty_like(a, dtype=None):
    return empty(np.shape(a), dtype=dtype or a.dtype)


def zeros(shape, dtype=np.float64, order="C"):
    return np.zeros(shape, dtype=dtype, order=order).view(ndarray)


def asnumpy(a):
    """A host copy (a plain ``numpy.ndarray``)."""
    if isinstance(a, ndarray):
        return np.array(a.view(np.ndarray), copy=True)
    return np.asarray(a)


def __getattr__(name):
    """Module-level forwarding of NumPy's array functions and dtypes, returning device arrays."""
    target = getattr(np, name)
    if callable(target) and not isinstance(target, type):
        def forward(*args, **kwargs):
            result = target(*args, **kwargs)
            if isinstance(result, tuple):
                return tuple(_device(r) for r in result)
            return _device(result)
        forward.__name__ = name
        return forward
    return target


class RawKernel:
    """``cupy.RawKernel`` for one entry point of a :class:`RawModule`."""

    def __init__(self, kernel: runtime.Kernel):
        self._kernel = kernel
        self.name = kernel.name
        self.params = kernel.params

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        self._kernel(grid, block, args, shared_mem)


class RawModule:
    """``cupy.RawModule(code=..., options=...)``: compiled with g++ on first use."""

    def __init__(self, code=None, *, options=(), name_expressions=None, backend="nvrtc", **_):
        if code is None:
            raise ValueError("cupy-emu: RawModule needs code= (loading a cubin path is not emulated)")
        self.code = code
        self.options = tuple(options)
        self._library = None

    def compile(self, log_stream=None):
        if self._library is None:
            self._library = runtime.load(self.code)

    def get_function(self, name):
        self.compile()
        kernel = self._library.kernels.get(name)
        if kernel is None:
            raise AttributeError(f"cupy-emu: no kernel {name!r} in the module; it has"
                                 f" {', '.join(self._library.kernels)}")
        return RawKernel(kernel)


class _Cuda:
    """``cupy.cuda``: one emulated device, one synchronous stream."""

    class Device:
        def __init__(self, device=None):
            self.id = 0 if device is None else int(device)

        compute_capability = "emu"

        def use(self):
            return self

        def synchronize(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __eq__(self, other):
            return isinstance(other, _Cuda.Device) and other.id == self.id

        def __hash__(self):
            return hash(self.id)

    class Stream:
        null = None

        def __init__(self, non_blocking=False):
            pass

        def synchronize(self):
            pass

        def use(self):
            return self

    class runtime:  # noqa: N801 (CuPy's name)
        @staticmethod
        def getDeviceCount():  # noqa: N802 (CuPy's name)
            return 1

        @staticmethod
        def getDeviceProperties(device):  # noqa: N802
            return {"name": b"cupy-emu (CPU)", "multiProcessorCount": runtime.options["threads"]}

        @staticmethod
        def runtimeGetVersion():  # noqa: N802
            return 0

    @staticmethod
    def get_current_stream():
        return _Cuda.Stream()


cuda = _Cuda()
