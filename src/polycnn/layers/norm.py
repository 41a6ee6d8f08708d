"""Batch normalisation: BatchNorm2d (its synchronised form over ranks is
:func:`polycnn.distributed.sync_batchnorm`)."""

from __future__ import annotations

import math

import numpy as np

from .._args import integer, owned_by, real
from .base import Layer, _image_shape


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
