"""Dropout layers: Dropout (elements) and Dropout2d (whole feature maps); the masks are made
on the backend from one key drawn from the model's generator."""

from __future__ import annotations

import math

import numpy as np

from .._args import owned_by, real
from ..hashing import GAMMA as _GAMMA
from .base import Layer, _image_shape


def _probability(p, name: str = "p") -> float:
    return real(p, name, 0.0, 1.0, hi_open=True)



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
