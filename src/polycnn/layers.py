"""Layers and the Sequential model, written once above the backend contract.

A layer holds state, not algorithms: its parameters, their initialisation, the validation of its
arguments and input, and a forward / backward pair that is one call into the backend (or a few
lines of ``backend.xp`` glue). Nothing here knows which backend runs underneath.

Shapes: images are NCHW, features are (N, F). ``output_shape`` works on one sample's shape
(without N), so ``model.summary((3, 32, 32))`` can check a whole network before any data exists.

Randomness: initial weights are drawn on the host from the model's ``numpy.random.Generator``
and copied to the backend; a dropout mask is made on the backend from one key drawn from that
generator (a counter-based hash, see ``dropout_mask`` in the backend contract), so one seed
gives one run on every backend.
"""

from __future__ import annotations

import inspect
import math

import numpy as np

from . import init as _init
from ._args import flag, integer, owned_by, real
from .backends import get_backend
from .geometry import conv_geometry, pair, pool_geometry, resolve_padding
from .hashing import GAMMA as _GAMMA

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


def _probability(p, name: str = "p") -> float:
    return real(p, name, 0.0, 1.0, hi_open=True)


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

    def _set_grads(self, dw, db):
        """Store the weight gradient, and the bias gradient when the layer has a bias."""
        self._params["weight"].grad = dw
        if self.bias:
            self._params["bias"].grad = db

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


class Conv2d(Layer):
    """2-D convolution (cross-correlation), weight (out, in, kh, kw), He or Glorot init, zero bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, bias: bool = True, init: str = "he"):
        super().__init__()
        with owned_by("Conv2d"):
            self.in_channels = integer(in_channels, "in_channels")
            self.out_channels = integer(out_channels, "out_channels")
            self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
            self.stride = pair(stride, "stride", minimum=1)
            self.dilation = pair(dilation, "dilation", minimum=1)
            resolve_padding(padding, self.kernel_size, self.stride, self.dilation)  # validates
            self.padding = padding.lower() if isinstance(padding, str) else pair(padding, "padding")
            self.bias = flag(bias, "bias")
            self.init = _init_scheme(init)

    def _build(self, rng):
        K, C, (R, S) = self.out_channels, self.in_channels, self.kernel_size
        w = _init.weights(self.init, rng, (K, C, R, S), fan_in=C * R * S, fan_out=K * R * S)
        self._param("weight", w)
        if self.bias:
            self._param("bias", np.zeros(K))

    def _geometry(self, in_shape):
        C = in_shape[0]
        if C != self.in_channels:
            raise ValueError(
                f"{self!r}: input has {C} channels but the layer expects {self.in_channels}"
                f" (input shape {tuple(in_shape)})"
            )
        return conv_geometry((1, *in_shape), (self.out_channels, self.in_channels, *self.kernel_size),
                             self.stride, self.padding, self.dilation)

    def forward(self, x):
        self._check_input(x, 4, "(N, C, H, W)")
        self._geometry(tuple(x.shape[1:]))
        b = self._params["bias"].data if self.bias else None
        y, self._ctx = self.backend.conv2d_forward(x, self._params["weight"].data, b, self.stride,
                                                   self.padding, self.dilation)
        return y

    def backward(self, dy):
        dx, dw, db = self.backend.conv2d_backward(dy, self._saved())
        self._set_grads(dw, db)
        return dx

    def backward_params(self, dy) -> None:
        _, dw, db = self.backend.conv2d_backward(dy, self._saved(), input_grad=False)
        self._set_grads(dw, db)

    def output_shape(self, in_shape):
        g = self._geometry(_image_shape(self, in_shape))
        return (g.K, g.P, g.Q)

    def flops(self, in_shape):
        return self._geometry(_image_shape(self, in_shape)).flops

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "bias": self.bias, "init": self.init}

    def __repr__(self):
        extra = "" if self.padding == (0, 0) else f", padding={_short(self.padding)}"
        extra += "" if self.stride == (1, 1) else f", stride={_short(self.stride)}"
        extra += "" if self.dilation == (1, 1) else f", dilation={_short(self.dilation)}"
        extra += "" if self.bias else ", bias=False"
        extra += "" if self.init == "he" else f", init={self.init!r}"
        return (f"Conv2d({self.in_channels}, {self.out_channels},"
                f" kernel_size={_short(self.kernel_size)}{extra})")


def _init_scheme(init) -> str:
    if not isinstance(init, str):
        raise TypeError(f"init must be one of {', '.join(map(repr, _init.SCHEMES))}, got {init!r}")
    return _init.check_scheme(init)


def _short(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1]:
        return v[0]
    return v


class Linear(Layer):
    """Fully connected: y = x @ weight.T + bias, weight (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "he"):
        super().__init__()
        with owned_by("Linear"):
            self.in_features = integer(in_features, "in_features")
            self.out_features = integer(out_features, "out_features")
            self.bias = flag(bias, "bias")
            self.init = _init_scheme(init)

    def _build(self, rng):
        F, O = self.in_features, self.out_features
        self._param("weight", _init.weights(self.init, rng, (O, F), fan_in=F, fan_out=O))
        if self.bias:
            self._param("bias", np.zeros(O))

    def _check_features(self, f: int, shape):
        if f != self.in_features:
            raise ValueError(
                f"{self!r}: input has {f} features but the layer expects {self.in_features}"
                f" (input shape {tuple(shape)})"
            )

    def forward(self, x):
        self._check_input(x, 2, "(N, features); put a Flatten() before it")
        self._check_features(x.shape[1], x.shape)
        b = self._params["bias"].data if self.bias else None
        y, self._ctx = self.backend.linear_forward(x, self._params["weight"].data, b)
        return y

    def backward(self, dy):
        dx, dw, db = self.backend.linear_backward(dy, self._saved())
        self._set_grads(dw, db)
        return dx

    def backward_params(self, dy) -> None:
        _, dw, db = self.backend.linear_backward(dy, self._saved(), input_grad=False)
        self._set_grads(dw, db)

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(f"{self!r} expects flat features, got a sample shape {tuple(in_shape)};"
                             " put a Flatten() before it")
        self._check_features(in_shape[0], in_shape)
        return (self.out_features,)

    def flops(self, in_shape):
        return 2 * self.in_features * self.out_features

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias, "init": self.init}

    def __repr__(self):
        extra = ("" if self.bias else ", bias=False") + ("" if self.init == "he" else f", init={self.init!r}")
        return f"Linear({self.in_features}, {self.out_features}{extra})"


class ReLU(Layer):
    """max(x, 0), elementwise."""

    def forward(self, x):
        y, self._ctx = self.backend.relu_forward(x)
        return y

    def backward(self, dy):
        return self.backend.relu_backward(dy, self._saved())

    def flops(self, in_shape):
        return int(np.prod(in_shape))


class LeakyReLU(Layer):
    """x where x > 0, else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        with owned_by("LeakyReLU"):
            self.negative_slope = real(negative_slope, "negative_slope", 0.0, 1.0, hi_open=True)

    def forward(self, x):
        xp = self.backend.xp
        scale = xp.where(x > 0, x.dtype.type(1), x.dtype.type(self.negative_slope))
        self._ctx = scale
        return x * scale

    def backward(self, dy):
        return dy * self._saved()

    def flops(self, in_shape):
        return int(np.prod(in_shape))

    def config(self):
        return {"negative_slope": self.negative_slope}


class _Pool(Layer):
    _op = ""

    def __init__(self, kernel_size=2, stride=None, padding=0):
        super().__init__()
        with owned_by(type(self).__name__):
            self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
            self.stride = self.kernel_size if stride is None else pair(stride, "stride", minimum=1)
            self.padding = pair(padding, "padding", minimum=0)
            if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
                raise ValueError(f"padding {self.padding} must be at most half the kernel size"
                                 f" {self.kernel_size}")

    def forward(self, x):
        self._check_input(x, 4, "(N, C, H, W)")
        fwd = getattr(self.backend, f"{self._op}_forward")
        y, self._ctx = fwd(x, self.kernel_size, self.stride, self.padding)
        return y

    def backward(self, dy):
        return getattr(self.backend, f"{self._op}_backward")(dy, self._saved())

    def _geometry(self, in_shape):
        return pool_geometry((1, *_image_shape(self, in_shape)), self.kernel_size, self.stride,
                             self.padding)

    def output_shape(self, in_shape):
        g = self._geometry(in_shape)
        return (g.C, g.P, g.Q)

    def flops(self, in_shape):
        g = self._geometry(in_shape)
        return g.C * g.P * g.Q * g.R * g.S

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def __repr__(self):
        extra = "" if self.stride == self.kernel_size else f", stride={_short(self.stride)}"
        extra += "" if self.padding == (0, 0) else f", padding={_short(self.padding)}"
        return f"{type(self).__name__}({_short(self.kernel_size)}{extra})"


class MaxPool2d(_Pool):
    """Max over each window; the gradient goes to the first maximum (row-major)."""

    _op = "maxpool2d"


class AvgPool2d(_Pool):
    """Mean over each window; padding counts as zeros."""

    _op = "avgpool2d"


class GlobalAvgPool2d(Layer):
    """(N, C, H, W) -> (N, C): the mean of each feature map."""

    def forward(self, x):
        self._check_input(x, 4, "(N, C, H, W)")
        self._ctx = tuple(x.shape)
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        N, C, H, W = self._saved()
        xp = self.backend.xp
        scale = dy.dtype.type(1.0 / (H * W))
        return xp.ascontiguousarray(xp.broadcast_to((dy * scale)[:, :, None, None], (N, C, H, W)))

    def output_shape(self, in_shape):
        return (_image_shape(self, in_shape)[0],)

    def flops(self, in_shape):
        return int(np.prod(in_shape))


class BatchNorm2d(Layer):
    """Per-channel normalisation over (N, H, W) with learned scale and shift; running statistics
    (unbiased variance, ``momentum`` weight on the new batch) are used in eval mode."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        with owned_by("BatchNorm2d"):
            self.num_features = integer(num_features, "num_features")
            self.eps = real(eps, "eps", 0.0, math.inf, lo_open=True, hi_open=True)
            self.momentum = real(momentum, "momentum", 0.0, 1.0, lo_open=True)

    def _build(self, rng):
        C = self.num_features
        self._param("weight", np.ones(C))
        self._param("bias", np.zeros(C))
        self._buffers = {"running_mean": self.backend.asarray(np.zeros(C), dtype=self.dtype),
                         "running_var": self.backend.asarray(np.ones(C), dtype=self.dtype)}

    def _check_channels(self, C, shape):
        if C != self.num_features:
            raise ValueError(f"{self!r}: input has {C} channels but the layer expects"
                             f" {self.num_features} (input shape {tuple(shape)})")

    def forward(self, x):
        self._check_input(x, 4, "(N, C, H, W)")
        self._check_channels(x.shape[1], x.shape)
        if self.training:
            m = x.shape[0] * x.shape[2] * x.shape[3]
            if m < 2:
                raise ValueError(f"{self!r} in training mode needs more than one value per channel,"
                                 f" got input shape {tuple(x.shape)}")
            mean = x.mean(axis=(0, 2, 3))
            centred = x - mean[None, :, None, None]
            var = (centred * centred).mean(axis=(0, 2, 3))
            self._update_running(mean, var, m)
        else:
            centred = x - self._buffers["running_mean"][None, :, None, None]
            var = self._buffers["running_var"]
        return self._scale_shift(centred, var, self.training)

    def _update_running(self, mean, var, m: int) -> None:
        """Running statistics from a batch's ``mean`` and biased ``var`` over ``m`` values."""
        t = mean.dtype.type
        rm, rv = self._buffers["running_mean"], self._buffers["running_var"]
        mom = t(self.momentum)
        rm *= t(1) - mom
        rm += mom * mean
        rv *= t(1) - mom
        rv += mom * var * t(m / (m - 1))

    def _scale_shift(self, centred, var, tag):
        """``gamma * centred / sqrt(var + eps) + beta``; the context keeps ``tag`` (the
        training flag here; the synchronised form keeps its global count)."""
        t = centred.dtype.type
        inv_std = (t(1) / self.backend.xp.sqrt(var + t(self.eps)))[None, :, None, None]
        xhat = centred * inv_std
        self._ctx = (xhat, inv_std, tag)
        gamma = self._params["weight"].data[None, :, None, None]
        return xhat * gamma + self._params["bias"].data[None, :, None, None]

    def backward(self, dy):
        xhat, inv_std, training = self._saved()
        gamma = self._params["weight"].data[None, :, None, None]
        self._params["weight"].grad = (dy * xhat).sum(axis=(0, 2, 3))
        self._params["bias"].grad = dy.sum(axis=(0, 2, 3))
        dxhat = dy * gamma
        if not training:
            return dxhat * inv_std
        t = dy.dtype.type
        m = t(dy.shape[0] * dy.shape[2] * dy.shape[3])
        mean_dxhat = dxhat.sum(axis=(0, 2, 3), keepdims=True) / m
        mean_dxhat_xhat = (dxhat * xhat).sum(axis=(0, 2, 3), keepdims=True) / m
        return (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * inv_std

    def output_shape(self, in_shape):
        in_shape = _image_shape(self, in_shape)
        self._check_channels(in_shape[0], in_shape)
        return in_shape

    def flops(self, in_shape):
        return 2 * int(np.prod(in_shape))

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def __repr__(self):
        return f"BatchNorm2d({self.num_features})"


class Dropout(Layer):
    """Zeroes each element with probability ``p`` in training mode; survivors scaled by 1/(1-p)."""

    #: where this batch starts in the global batch (data-parallel training sets it per step)
    sample_offset = 0

    def __init__(self, p: float = 0.5):
        super().__init__()
        with owned_by(type(self).__name__):
            self.p = _probability(p)

    def _mask_shape(self, x):
        return tuple(x.shape)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._ctx = None
            return x
        # NOTE: one key from the host generator; the backend makes the mask from it where its
        # arrays live (the same mask on every backend, no copy from the host: drawing 1M
        # floats on the host and copying them was estimated at a third of a GPU step's forward)
        key = int(self._rng.integers(0, 1 << 64, dtype=np.uint64))
        shape = self._mask_shape(x)
        if self.sample_offset:
            # NOTE: a data-parallel shard starting at sample o gets rows o.. of the whole batch's
            # mask: element i of the mask is hash(key + (i + 1) * GAMMA), so shift the key
            key = (key + self.sample_offset * math.prod(shape[1:]) * _GAMMA) % (1 << 64)
        mask = self.backend.dropout_mask(shape, self.p, key)
        scale = 1.0 / (1.0 - self.p)
        self._ctx = (mask, scale)
        return self.backend.dropout_apply(x, mask, scale)

    def backward(self, dy):
        # NOTE: None means the forward was the identity (eval mode or p == 0)
        if self._ctx is None:
            return dy
        mask, scale = self._ctx
        return self.backend.dropout_apply(dy, mask, scale)

    def config(self):
        return {"p": self.p}


class Dropout2d(Dropout):
    """Zeroes whole feature maps: one draw per (sample, channel), survivors scaled by 1/(1-p)."""

    def forward(self, x):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{self!r} drops whole feature maps and needs 4-D input (N, C, H, W),"
                             f" got shape {tuple(getattr(x, 'shape', ()))}; use Dropout for features")
        return super().forward(x)

    def _mask_shape(self, x):
        return (x.shape[0], x.shape[1], 1, 1)

    def output_shape(self, in_shape):
        return _image_shape(self, in_shape)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), row-major (channel first)."""

    def forward(self, x):
        if getattr(x, "ndim", 0) < 2:
            raise ValueError(f"Flatten expects a batch (N, ...), got shape {tuple(getattr(x, 'shape', ()))}")
        self._ctx = tuple(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._saved())

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)


#: every layer type by name, for checkpoints' architecture specs
LAYER_TYPES = {cls.__name__: cls for cls in (
    Conv2d, Linear, ReLU, LeakyReLU, MaxPool2d, AvgPool2d, GlobalAvgPool2d, BatchNorm2d,
    Dropout, Dropout2d, Flatten)}


def layer_from_spec(spec: dict) -> Layer:
    """A layer from ``{"type": name, "config": {argument: value}}`` (a model JSON entry or a
    checkpoint's spec): the same checks as the constructor; unknown keys and arguments raise.
    JSON lists become tuples (``"kernel_size": [3, 3]``); nothing else is converted."""
    if not isinstance(spec, dict) or spec.get("type") not in LAYER_TYPES:
        raise ValueError(f"unknown layer in architecture spec: {spec!r:.120}"
                         f" (known types: {', '.join(LAYER_TYPES)})")
    name = spec["type"]
    extra = sorted(set(spec) - {"type", "config"}, key=str)
    if extra:
        raise ValueError(f"{name}: unknown key(s) {', '.join(map(repr, extra))} in the layer spec;"
                         ' a layer is {"type": ..., "config": {...}}')
    config = spec.get("config", {})
    if not isinstance(config, dict):
        raise TypeError(f"{name}: config must be an object of arguments, got {config!r:.80}")
    accepted = [p for p in inspect.signature(LAYER_TYPES[name].__init__).parameters if p != "self"]
    unknown = sorted(set(config) - set(accepted), key=str)
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {', '.join(map(repr, unknown))};"
                         f" {name} takes {', '.join(accepted) or 'no arguments'}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config.items()}
    return LAYER_TYPES[name](**kwargs)


class Summary:
    """What ``Sequential.summary`` returns: ``rows`` (dicts) and totals; prints as a table."""

    def __init__(self, input_shape, rows, dtype):
        self.input_shape = tuple(input_shape)
        self.rows = rows
        self.total_params = sum(r["params"] for r in rows)
        self.total_flops = sum(r["flops"] for r in rows)
        self.dtype = dtype

    def __str__(self):
        headers = ["#", "layer", "output shape", "params", "FLOPs"]
        cells = [[str(i), r["layer"], str(r["output_shape"]), f"{r['params']:,}", f"{r['flops']:,}"]
                 for i, r in enumerate(self.rows)]
        cells.insert(0, ["", "input", str(self.input_shape), "", ""])
        cells.append(["", "total", "", f"{self.total_params:,}", f"{self.total_flops:,}"])
        widths = [max(len(c[i]) for c in cells + [headers]) for i in range(len(headers))]
        right = {0, 3, 4}

        def line(row):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip()

        rule = "  ".join("-" * w for w in widths)
        body = [line(headers), rule] + [line(c) for c in cells[:-1]] + [rule, line(cells[-1])]
        size = self.total_params * np.dtype(self.dtype).itemsize
        body.append(f"FLOPs are per sample, forward pass; parameters take {size / 1024:,.1f} KiB"
                    f" ({np.dtype(self.dtype).name})")
        return "\n".join(body)

    __repr__ = __str__


class Sequential(Layer):
    """Layers applied in order. ``backend`` (name or object, None = default), ``seed`` for the
    host generator that draws initial weights and dropout masks, ``dtype`` float32 or float64.

    ``model(x)`` takes a host (NumPy) or backend array of the model's dtype and returns the
    backend's array; ``backward(dy)`` runs the layers in reverse and sets every ``grad``."""

    def __init__(self, *layers: Layer, backend=None, seed: int | None = 0, dtype="float32"):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer) or isinstance(layer, Sequential):
                raise TypeError(f"Sequential: item {i} must be a layer (e.g. pc.Conv2d), got {layer!r:.80}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer object appears twice; create a new one")
        self.layers = list(layers)
        _check_channels_chain(self.layers)
        if seed is not None and (isinstance(seed, (bool, np.bool_))
                                 or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"Sequential: seed must be an int >= 0 or None, got {seed!r}")
        if seed is not None and seed < 0:
            raise ValueError(f"Sequential: seed must be an int >= 0 or None, got {seed!r}")
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.build(backend, self.rng, dtype)

    def build(self, backend, rng, dtype):
        self.backend = get_backend(backend)
        self.dtype = _dtype(dtype)
        for layer in self.layers:
            layer.build(self.backend, rng, self.dtype)
        self.set_rng(rng)
        return self

    def set_rng(self, rng: np.random.Generator) -> None:
        """Use ``rng`` (a host ``numpy.random.Generator``) for dropout masks from now on."""
        self.rng = self._rng = rng
        for layer in self.layers:
            layer._rng = rng

    # ---- containers ---------------------------------------------------------------------
    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def named_arrays(self) -> dict:
        """Every parameter and buffer by a stable name, e.g. ``"0.weight"``: what checkpoints hold."""
        out = {}
        for i, layer in enumerate(self.layers):
            for name, p in layer._params.items():
                out[f"{i}.{name}"] = p.data
            for name, b in layer._buffers.items():
                out[f"{i}.{name}"] = b
        return out

    def load_arrays(self, arrays: dict) -> None:
        """Replace parameters and buffers by host arrays named as in ``named_arrays``."""
        expected = self.named_arrays()
        missing = sorted(set(expected) - set(arrays))
        extra = sorted(set(arrays) - set(expected))
        if missing or extra:
            raise ValueError(f"arrays do not match the model: missing {missing}, unexpected {extra}")
        for i, layer in enumerate(self.layers):
            for table in (layer._params, layer._buffers):
                for name in list(table):
                    key = f"{i}.{name}"
                    new = np.asarray(arrays[key])
                    old = table[name].data if isinstance(table[name], Parameter) else table[name]
                    if tuple(new.shape) != tuple(old.shape):
                        raise ValueError(f"{key}: shape {tuple(new.shape)} does not match the model's"
                                         f" {tuple(old.shape)}")
                    # NOTE: a copy the model owns: the caller's array may be read-only (a
                    # checkpoint's buffer) or theirs to change; training writes in place
                    arr = self.backend.asarray(new.astype(self.dtype, copy=True), dtype=self.dtype)
                    if isinstance(table[name], Parameter):
                        table[name].data = arr
                        table[name].grad = None
                    else:
                        table[name] = arr

    def train(self, mode: bool = True):
        self.training = flag(mode, "Sequential.train(mode)")
        for layer in self.layers:
            layer.train(mode)
        return self

    # ---- computing -----------------------------------------------------------------------
    def to_backend(self, x):
        """A host or backend array as this model's backend array, checking dtype and rank."""
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"input must be an array, got {type(x).__name__}")
        if np.dtype(x.dtype) != self.dtype:
            raise TypeError(f"input is {np.dtype(x.dtype).name} but the model is {self.dtype.name};"
                            f" convert it with x.astype(np.{self.dtype.name})")
        if isinstance(x, self.backend.array_type):
            return self.backend.xp.ascontiguousarray(x)
        return self.backend.asarray(x)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        x = self.to_backend(x)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy, input_grad: bool = True):
        """Gradients of every parameter from ``dy``, the gradient of the output; returns the
        gradient with respect to the input, or None with ``input_grad=False`` (what
        :func:`polycnn.fit` asks: then the first layer skips that work)."""
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
        if not self.layers:
            return dy if input_grad else None
        if input_grad:
            return self.layers[0].backward(dy)
        self.layers[0].backward_params(dy)
        return None

    def backward_params(self, dy) -> None:
        self.backward(dy, input_grad=False)

    # ---- description ---------------------------------------------------------------------
    def output_shape(self, in_shape):
        shape = tuple(in_shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ValueError as exc:
                raise _at_layer(i, layer, exc) from None
        return shape

    def flops(self, in_shape):
        return self.summary(in_shape).total_flops

    def summary(self, input_shape) -> Summary:
        """Per layer: output shape, parameters and forward FLOPs for one sample of ``input_shape``
        (e.g. ``(3, 32, 32)``); raises naming the layer if the shapes do not fit."""
        shape = tuple(int(v) for v in input_shape)
        rows = []
        for i, layer in enumerate(self.layers):
            try:
                flops = layer.flops(shape)
                out = layer.output_shape(shape)
            except ValueError as exc:
                raise _at_layer(i, layer, exc) from None
            rows.append({"layer": repr(layer), "output_shape": out,
                         "params": sum(p.size for p in layer.parameters()), "flops": int(flops)})
            shape = out
        return Summary(input_shape, rows, self.dtype)

    def spec(self) -> dict:
        """The architecture as JSON-ready data (checkpoints store it)."""
        return {"layers": [{"type": type(layer).__name__, "config": layer.config()}
                           for layer in self.layers],
                "dtype": self.dtype.name}

    @classmethod
    def from_spec(cls, spec: dict, backend=None, seed=0) -> "Sequential":
        if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
            raise ValueError("architecture spec must be a dict with a 'layers' list")
        extra = sorted(set(spec) - {"layers", "dtype"}, key=str)
        if extra:
            raise ValueError(f"architecture spec: unknown key(s) {', '.join(map(repr, extra))};"
                             " expected 'layers' and 'dtype'")
        return cls(*[layer_from_spec(s) for s in spec["layers"]], backend=backend, seed=seed,
                   dtype=spec.get("dtype", "float32"))

    def save(self, path, **extra):
        """Write a checkpoint (see :mod:`polycnn.checkpoint`); ``extra`` is stored as metadata."""
        from .checkpoint import save

        return save(path, self, **extra)

    def __repr__(self):
        inner = "".join(f"\n  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(backend={self.backend.name!r}, dtype={self.dtype.name}){inner}\n"


def _at_layer(i: int, layer: Layer, exc: Exception) -> ValueError:
    text = str(exc)
    return ValueError(f"layer {i} {text}" if text.startswith(repr(layer)) else f"layer {i} ({layer!r}): {text}")


def _check_channels_chain(layers) -> None:
    """At construction: consecutive channel counts must agree (Conv2d -> BatchNorm2d -> Conv2d),
    and features must agree between Linear layers."""
    channels, features = None, None
    for i, layer in enumerate(layers):
        if isinstance(layer, Conv2d):
            if channels is not None and channels[0] != layer.in_channels:
                raise ValueError(f"layer {i} {layer!r} expects {layer.in_channels} input channels but"
                                 f" layer {channels[1]} produces {channels[0]}")
            channels, features = (layer.out_channels, i), None
        elif isinstance(layer, BatchNorm2d):
            if channels is not None and channels[0] != layer.num_features:
                raise ValueError(f"layer {i} {layer!r} expects {layer.num_features} channels but"
                                 f" layer {channels[1]} produces {channels[0]}")
        elif isinstance(layer, Linear):
            if features is not None and features[0] != layer.in_features:
                raise ValueError(f"layer {i} {layer!r} expects {layer.in_features} input features but"
                                 f" layer {features[1]} produces {features[0]}")
            features, channels = (layer.out_features, i), None
        elif isinstance(layer, GlobalAvgPool2d) and channels is not None:
            features, channels = (channels[0], i), None
        elif isinstance(layer, Flatten):
            channels, features = None, None


__all__ = [
    "Parameter", "Layer", "Conv2d", "Linear", "ReLU", "LeakyReLU", "MaxPool2d", "AvgPool2d",
    "GlobalAvgPool2d", "BatchNorm2d", "Dropout", "Dropout2d", "Flatten", "Sequential", "Summary",
    "LAYER_TYPES", "layer_from_spec",
]
