"""Convolution and pooling layers: Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d."""

from __future__ import annotations

import numpy as np

from .. import init as _init
from .._args import flag, integer, owned_by
from ..geometry import conv_geometry, pair, pool_geometry, resolve_padding
from .base import Layer, _image_shape, _init_scheme, _short, _Weighted


class Conv2d(_Weighted):
    """2-D convolution (cross-correlation), weight (out, in, kh, kw), He or Glorot init, zero bias."""

    _op = "conv2d"

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
        return self._apply(x, self.stride, self.padding, self.dilation)

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
