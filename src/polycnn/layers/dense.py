"""Fully connected and elementwise layers: Linear, ReLU, LeakyReLU, Flatten."""

from __future__ import annotations

import numpy as np

from .. import init as _init
from .._args import flag, integer, owned_by, real
from .base import Layer, _init_scheme, _Weighted


class Linear(_Weighted):
    """Fully connected: y = x @ weight.T + bias, weight (out_features, in_features)."""

    _op = "linear"

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
        return self._apply(x)

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
