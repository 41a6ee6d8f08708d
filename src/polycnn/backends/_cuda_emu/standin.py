"""A stand-in for the part of CuPy that polycnn's ``cupy`` backend uses, backed by the CPU.

``ndarray`` is a NumPy subclass: "device" arrays can be told apart from host arrays and are
refused where CuPy refuses them (a host ``numpy.ndarray`` as a kernel pointer or mixed into
arithmetic with a device array). Array functions the glue needs are forwarded to NumPy at module
level and return device arrays. ``empty`` memory is filled with 0xFF bytes (NaN as a float), so a
kernel that forgets to write an output shows it. Kernels are compiled with g++ (see
:mod:`.build`) and launched with CuPy's call form ``kernel(grid, block, args, shared_mem=...)``.

Graph capture (``cuda.Stream.begin_capture()`` / ``end_capture()`` -> ``Graph``, ``launch()``), as
CUDA does it: between the two calls nothing runs. Each kernel launch, each array operation (a
ufunc, a reduction, an in-place update, a copy, ``zeros``' memset, a forwarded array function) is
recorded with its arguments — arrays by reference, scalars by value — and ``Graph.launch()``
replays the list in order. An operation that returns a new array still allocates it during
capture (filled with 0xFF bytes: nothing computed then may be read); its replay writes into that
array. What CUDA refuses while a stream captures is refused here, with a RuntimeError: a copy
from pageable host memory (``asarray`` of a host array), a copy to the host (``asnumpy``,
``get``, ``float(a)``, ``bool(a)``, ``item``), a synchronisation, a graph launch.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import runtime

__version__ = "emu"

#: the operations recorded by the capture in progress, or None when no stream captures
_capture: list | None = None
#: > 0 while an operation runs on behalf of another one (its own inner calls are not recorded)
_nested = 0


def _capturing() -> bool:
    return _capture is not None and _nested == 0


def _refuse(what: str) -> None:
    """The RuntimeError CUDA gives (cudaErrorStreamCaptureUnsupported) for ``what`` during a
    capture."""
    if _capturing():
        raise RuntimeError(f"cupy-emu: {what} is not permitted while a stream is capturing a"
                           " graph (cudaErrorStreamCaptureUnsupported)")


@contextlib.contextmanager
def _inner():
    global _nested
    _nested += 1
    try:
        yield
    finally:
        _nested -= 1


def _poison(value) -> None:
    """Fill a new array made during capture with 0xFF bytes: on a GPU it holds nothing yet."""
    if isinstance(value, np.ndarray) and value.flags.c_contiguous and value.size:
        value.view(np.ndarray).reshape(-1).view(np.uint8)[...] = 0xFF


def _record_new(result, recompute) -> None:
    """Record an operation that made the new array ``result``: replay writes
    ``recompute()`` into it."""
    def replay():
        np.copyto(result.view(np.ndarray), recompute(), casting="unsafe")
    _poison(result)
    _capture.append(replay)


def _is_new(result, inputs) -> bool:
    """Whether ``result`` is an array of its own (not a view of one of ``inputs``)."""
    if not isinstance(result, np.ndarray):
        return False
    return not any(isinstance(a, np.ndarray) and np.may_share_memory(result, a)
                   for a in inputs)


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
        if _capturing():
            return _captured_ufunc(ufunc, method, inputs, kwargs, outs)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if outs:
            return outs[0] if len(outs) == 1 else outs
        if isinstance(result, tuple):
            return tuple(_device(r) for r in result)
        return _device(result)

    @property
    def device(self):
        return cuda.Device(0)

    def get(self, stream=None):
        return asnumpy(self)

    def set(self, arr, stream=None):
        """A host array copied into this one (CuPy's ``ndarray.set``): recorded during capture,
        as a copy from pinned memory is (the host buffer is read at each replay)."""
        arr = np.asarray(arr)
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(f"cupy-emu: set() of a {arr.dtype} array of shape {arr.shape} into"
                             f" a {self.dtype} array of shape {self.shape}")
        if _capturing():
            _capture.append(lambda: np.copyto(self.view(np.ndarray), arr))
        else:
            np.copyto(self.view(np.ndarray), arr)

    # ---- what a capture records or refuses, beyond ufuncs ------------------------------------
    def copy(self, order="C"):
        result = np.ndarray.copy(self, order=order)
        if _capturing():
            _record_new(result, lambda: self.view(np.ndarray))
        return result

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        result = np.ndarray.astype(self, dtype, order=order, casting=casting, subok=True,
                                   copy=copy)
        if _capturing() and result is not self:
            _record_new(result, lambda: self.view(np.ndarray))
        return result

    def fill(self, value):
        if _capturing():
            _capture.append(lambda: np.ndarray.fill(self, value))
        else:
            np.ndarray.fill(self, value)

    def __setitem__(self, index, value):
        if _capturing():
            if type(value) is np.ndarray and value.ndim > 0:
                _refuse("a copy from pageable host memory (assigning a host array)")
            _capture.append(lambda: np.ndarray.__setitem__(self, index, value))
        else:
            np.ndarray.__setitem__(self, index, value)

    def __getitem__(self, index):
        result = np.ndarray.__getitem__(self, index)
        # NOTE: advanced indexing copies; one element is a 0-d device array, as CuPy's is
        if _capturing() and (isinstance(result, np.generic) or _is_new(result, (self,))):
            result = _device(result)
            _record_new(result, lambda: np.ndarray.__getitem__(self, index))
        return result

    def _to_host(self, name):
        _refuse(f"a copy to the host ({name})")

    def __float__(self):
        self._to_host("float()")
        return float(self.view(np.ndarray))

    def __int__(self):
        self._to_host("int()")
        return int(self.view(np.ndarray))

    def __bool__(self):
        self._to_host("bool()")
        return bool(self.view(np.ndarray))

    def __index__(self):
        self._to_host("an index")
        return self.view(np.ndarray).__index__()

    def item(self, *args):
        self._to_host("item()")
        return self.view(np.ndarray).item(*args)

    def tolist(self):
        self._to_host("tolist()")
        return self.view(np.ndarray).tolist()


def _captured_ufunc(ufunc, method, inputs, kwargs, outs):
    """A ufunc call during capture: recorded; in place (``out=``) it does not run now, else its
    new result is allocated (poisoned) and written at each replay."""
    call = getattr(ufunc, method)
    if outs or method == "at":
        _capture.append(lambda: call(*inputs, **kwargs))
        return outs[0] if len(outs) == 1 else (outs or None)
    with _inner(), np.errstate(all="ignore"):
        result = call(*inputs, **kwargs)
    if isinstance(result, tuple):
        result = tuple(_device(r) for r in result)
        for i, r in enumerate(result):
            _record_new(r, lambda i=i: call(*inputs, **kwargs)[i])
        return result
    result = _device(result)
    _record_new(result, lambda: call(*inputs, **kwargs))
    return result


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
    if isinstance(a, ndarray):  # a conversion on the device
        return a.astype(dtype, order=order or "K")
    _refuse("a copy from pageable host memory (asarray of a host array)")
    # NOTE: always a copy, as a host-to-device transfer is: no aliasing of host memory
    return np.array(np.asarray(a), dtype=dtype, copy=True, order=order or "K").view(ndarray)


array = asarray


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    if a.flags.c_contiguous:
        return a
    result = np.ascontiguousarray(a.view(np.ndarray)).view(ndarray)
    if _capturing():
        _record_new(result, lambda: a.view(np.ndarray))
    return result


def empty(shape, dtype=np.float64, order="C"):
    out = np.empty(shape, dtype=dtype, order=order)
    out.view(np.uint8)[...] = 0xFF
    return out.view(ndarray)


def empty_like(a, dtype=None):
    return empty(np.shape(a), dtype=dtype or a.dtype)


def zeros(shape, dtype=np.float64, order="C"):
    out = np.zeros(shape, dtype=dtype, order=order).view(ndarray)
    if _capturing():  # a memset node
        _poison(out)
        _capture.append(lambda: np.ndarray.fill(out, 0))
    return out


def zeros_like(a, dtype=None):
    return zeros(np.shape(a), dtype=dtype or a.dtype)


def asnumpy(a, stream=None):
    """A host copy (a plain ``numpy.ndarray``)."""
    if isinstance(a, ndarray):
        _refuse("a copy to the host (asnumpy)")
        return np.array(a.view(np.ndarray), copy=True)
    return np.asarray(a)


def __getattr__(name):
    """Module-level forwarding of NumPy's array functions and dtypes, returning device arrays."""
    target = getattr(np, name)
    if callable(target) and not isinstance(target, type):
        def forward(*args, **kwargs):
            if not _capturing():
                result = target(*args, **kwargs)
                if isinstance(result, tuple):
                    return tuple(_device(r) for r in result)
                return _device(result)
            # NOTE: recorded as a whole; the calls it makes inside are its own
            with _inner(), np.errstate(all="ignore"):
                result = target(*args, **kwargs)
            inputs = tuple(args) + tuple(kwargs.values())
            if isinstance(result, tuple):
                result = tuple(_device(r) for r in result)
                for i, r in enumerate(result):
                    if _is_new(r, inputs):
                        _record_new(r, lambda i=i: _replay_call(target, args, kwargs)[i])
                return result
            result = _device(result)
            if _is_new(result, inputs):
                _record_new(result, lambda: _replay_call(target, args, kwargs))
            return result
        forward.__name__ = name
        return forward
    return target


def _replay_call(target, args, kwargs):
    with _inner():
        return target(*args, **kwargs)


class RawKernel:
    """``cupy.RawKernel`` for one entry point of a :class:`RawModule`."""

    def __init__(self, kernel: runtime.Kernel):
        self._kernel = kernel
        self.name = kernel.name
        self.params = kernel.params

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        if _capturing():
            args = tuple(args)
            _capture.append(lambda: self._kernel(grid, block, args, shared_mem))
        else:
            self._kernel(grid, block, args, shared_mem)


class Graph:
    """``cupy.cuda.graph.Graph``: the operations a capture recorded, replayed in order."""

    def __init__(self, operations: list):
        self._operations = tuple(operations)

    def __len__(self) -> int:
        return len(self._operations)

    def upload(self, stream=None):
        pass

    def launch(self, stream=None):
        _refuse("a graph launch")
        for op in self._operations:
            op()


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
            _refuse("a device synchronisation")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def __eq__(self, other):
            return isinstance(other, _Cuda.Device) and other.id == self.id

        def __hash__(self):
            return hash(self.id)

    class Stream:
        """A stream: work runs at once (launches are synchronous), except while it captures."""

        null = None

        def __init__(self, non_blocking=False):
            self._capturing = False

        def synchronize(self):
            _refuse("a stream synchronisation")

        def use(self):
            return self

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def begin_capture(self, mode=None):
            global _capture
            if _capture is not None:
                raise RuntimeError("cupy-emu: begin_capture() while a stream is already capturing")
            _capture = []
            self._capturing = True

        def is_capturing(self) -> bool:
            return self._capturing

        def end_capture(self):
            global _capture
            if not self._capturing:
                raise RuntimeError("cupy-emu: end_capture() on a stream that is not capturing")
            graph = Graph(_capture)
            _capture = None
            self._capturing = False
            return graph

    class Event:
        def __init__(self, block=False, disable_timing=False, interprocess=False):
            pass

        def record(self, stream=None):
            pass

        def synchronize(self):
            _refuse("an event synchronisation")

        @property
        def done(self) -> bool:
            return True

    class MemoryPool:
        """A private pool: allocation is NumPy's here, so only the interface."""

        def malloc(self, size):
            raise NotImplementedError("cupy-emu allocates with NumPy")

        def used_bytes(self) -> int:
            return 0

    @staticmethod
    @contextlib.contextmanager
    def using_allocator(allocator=None):
        yield

    @staticmethod
    def alloc_pinned_memory(nbytes: int):
        """Page-locked host memory: a plain buffer here."""
        return bytearray(int(nbytes))

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
