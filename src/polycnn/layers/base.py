"""The base of every layer: :class:`Parameter`, :class:`Layer` and the small checks and
formatting the layers share (see :mod:`polycnn.layers`)."""

from __future__ import annotations

import numpy as np

from .. import init as _init
from .._args import flag
from ..backends import get_backend

_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


def _dtype(dtype) -> np.dtype:
    # NOTE: np.dtype(None) is float64: None is refused rather than read as a choice
    try:
        dt = np.dtype(dtype) if dtype is not None else None
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt is None or dt.name not in _DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


class Parameter:
    """A trainable array on the backend (``data``) and its gradient (``grad``, set by backward).
    ``backend``: the backend the array lives on (optimisers update through it), None for a
    plain array."""

    __slots__ = ("data", "grad", "name", "backend")

    def __init__(self, data, name: str, backend=None):
        self.data = data
        self.grad = None
        self.name = name
        self.backend = backend

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.data.shape))

    def __repr__(self):
        return f"Parameter({self.name}, shape={self.shape}, dtype={self.data.dtype})"


class Layer:
    """Base class: see the module docstring. Subclasses implement ``_build``, ``forward``,
    ``backward``, ``output_shape``, ``config`` and, when they compute, ``flops``."""

    def __init__(self):
        self.training = True
        self.backend = None
        self.dtype = None
        self._rng = None
        self._ctx = None
        self._params: dict[str, Parameter] = {}
        self._buffers: dict = {}

    # ---- life cycle ----------------------------------------------------------------------
    def build(self, backend, rng: np.random.Generator, dtype) -> "Layer":
        """Bind to a backend and draw the initial parameters from ``rng`` (host, float64)."""
        self.backend = get_backend(backend)
        self.dtype = _dtype(dtype)
        self._rng = rng
        self._params = {}
        self._buffers = {}
        self._build(rng)
        return self

    def _build(self, rng):
        pass

    def _ensure_built(self):
        if self.backend is None:
            self.build(None, np.random.default_rng(0), np.float32)

    def _param(self, name: str, host: np.ndarray) -> None:
        self._params[name] = Parameter(self.backend.asarray(host, dtype=self.dtype), name, self.backend)

    def parameters(self) -> list[Parameter]:
        return list(self._params.values())

    def buffers(self) -> dict:
        """Non-trained state saved in checkpoints (e.g. BatchNorm running statistics)."""
        return dict(self._buffers)

    def train(self, mode: bool = True):
        self.training = flag(mode, f"{type(self).__name__}.train(mode)")
        return self

    def eval(self):
        return self.train(False)

    # ---- computing -----------------------------------------------------------------------
    def __call__(self, x):
        self._ensure_built()
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def backward_params(self, dy) -> None:
        """The parameter gradients of :meth:`backward` without the gradient with respect to
        the input (a model's first layer: the images need none). Layers whose input gradient
        is costly (Conv2d, Linear) skip computing it."""
        self.backward(dy)

    def _saved(self):
        if self._ctx is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        return self._ctx

    def _check_input(self, x, ndim: int, what: str):
        if getattr(x, "ndim", None) != ndim:
            raise ValueError(
                f"{self!r} expects {ndim}-D input {what}, got shape {tuple(getattr(x, 'shape', ()))}"
            )

    # ---- description ---------------------------------------------------------------------
    def output_shape(self, in_shape: tuple) -> tuple:
        """One sample's output shape for one sample's ``in_shape``; raises on a mismatch."""
        return tuple(in_shape)

    def flops(self, in_shape: tuple) -> int:
        """Forward FLOPs for one sample (a multiply-add counts 2)."""
        return 0

    def config(self) -> dict:
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _image_shape(layer: Layer, in_shape) -> tuple:
    if len(in_shape) != 3:
        raise ValueError(f"{layer!r} expects images (C, H, W), got a sample shape {tuple(in_shape)}")
    return tuple(int(v) for v in in_shape)


def _init_scheme(init) -> str:
    if not isinstance(init, str):
        raise TypeError(f"init must be one of {', '.join(map(repr, _init.SCHEMES))}, got {init!r}")
    return _init.check_scheme(init)


def _short(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1]:
        return v[0]
    return v


class _Weighted(Layer):
    """A layer with a ``weight`` and an optional ``bias`` whose forward and backward are the
    backend's ``<_op>_forward`` / ``<_op>_backward`` (Conv2d, Linear)."""

    _op = ""

    def _apply(self, x, *args):
        b = self._params["bias"].data if self.bias else None
        fwd = getattr(self.backend, f"{self._op}_forward")
        y, self._ctx = fwd(x, self._params["weight"].data, b, *args)
        return y

    def backward(self, dy):
        dx, dw, db = getattr(self.backend, f"{self._op}_backward")(dy, self._saved())
        self._set_grads(dw, db)
        return dx

    def backward_params(self, dy) -> None:
        _, dw, db = getattr(self.backend, f"{self._op}_backward")(dy, self._saved(),
                                                                  input_grad=False)
        self._set_grads(dw, db)

    def _set_grads(self, dw, db):
        """Store the weight gradient, and the bias gradient when the layer has a bias."""
        self._params["weight"].grad = dw
        if self.bias:
            self._params["bias"].grad = db
