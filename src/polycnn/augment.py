"""Data augmentation on the host, per batch, vectorised, reproducible from the seed.

``Augment(hflip=0.5, vflip=0.5, shear=0.2)`` mirrors left-right with probability 0.5, flips
upside down with probability 0.5 and, with probability ``shear_p``, skews by a factor drawn from
U(-0.2, 0.2). Rotation (degrees) and translation (a fraction of the image size) work the same way.
Every draw comes from the ``numpy.random.Generator`` passed in, in a fixed order, so a seeded
run is reproducible on every backend.

The affine part (shear, rotation, translation) samples each output pixel bilinearly from the
input at the inverse-transformed position, with the border replicated, for the whole batch at
once (no loop over samples).
"""

from __future__ import annotations

import numpy as np

from ._args import owned_by, real


def _prob(value, name):
    return real(value, name, 0.0, 1.0, what="a probability")


def _magnitude(value, name, hi):
    return real(value, name, 0.0, hi)


class Augment:
    """Random flips, skew, rotation and translation of NCHW host batches; see the module doc."""

    def __init__(self, hflip: float = 0.5, vflip: float = 0.5, shear: float = 0.0,
                 rotate: float = 0.0, translate: float = 0.0, shear_p: float = 0.5,
                 rotate_p: float = 0.5, translate_p: float = 0.5):
        with owned_by("Augment"):
            self.hflip = _prob(hflip, "hflip")
            self.vflip = _prob(vflip, "vflip")
            self.shear = _magnitude(shear, "shear", 1.0)
            self.rotate = _magnitude(rotate, "rotate (degrees)", 180.0)
            self.translate = _magnitude(translate, "translate (fraction of the size)", 0.5)
            self.shear_p = _prob(shear_p, "shear_p")
            self.rotate_p = _prob(rotate_p, "rotate_p")
            self.translate_p = _prob(translate_p, "translate_p")

    def config(self) -> dict:
        return dict(self.__dict__)

    def __repr__(self):
        return "Augment(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    def _draw(self, rng, n, magnitude, p):
        """A value in U(-magnitude, magnitude) for each sample, 0 where not applied (prob 1-p).
        Both draws happen even when unused, so the stream does not depend on the outcome."""
        value = rng.uniform(-magnitude, magnitude, size=n) if magnitude else np.zeros(n)
        on = rng.random(n) < p
        return np.where(on, value, 0.0)

    def __call__(self, x: np.ndarray, rng: np.random.Generator, rows: slice | None = None,
                 batch: int | None = None) -> np.ndarray:
        """A new augmented copy of the host batch ``x`` (N, C, H, W). With ``rows`` and ``batch``
        (data-parallel training), ``x`` is the rows ``rows`` of a batch of ``batch`` images: the
        draws are made for the whole batch and ``x`` gets its rows' share of them."""
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"Augment expects a batch (N, C, H, W), got shape {x.shape}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        n = x.shape[0] if batch is None else batch
        hf = rng.random(n) < self.hflip
        vf = rng.random(n) < self.vflip
        shear = self._draw(rng, n, self.shear, self.shear_p)
        angle = np.deg2rad(self._draw(rng, n, self.rotate, self.rotate_p))
        shift = np.stack([self._draw(rng, n, self.translate, self.translate_p) for _ in range(2)], 1)
        if rows is not None:
            hf, vf, shear, angle, shift = hf[rows], vf[rows], shear[rows], angle[rows], shift[rows]
            if hf.shape[0] != x.shape[0]:
                raise ValueError(f"Augment: rows {rows} of a batch of {n} are {hf.shape[0]} images,"
                                 f" but x holds {x.shape[0]}")

        out = x.copy()
        out[hf] = out[hf][..., ::-1]
        out[vf] = out[vf][..., ::-1, :]
        active = np.flatnonzero((shear != 0) | (angle != 0) | (shift != 0).any(axis=1))
        if active.size:
            out[active] = _affine(out[active], shear[active], angle[active],
                                  shift[active] * np.array(x.shape[2:])[None, ::-1])
        return out


def _affine(x, shear, angle, shift):
    """Apply, about the image centre, p -> R(angle) @ [[1, shear], [0, 1]] @ p + shift
    (shift as (dx, dy) pixels) to each image, sampling bilinearly with the border replicated."""
    m, C, H, W = x.shape
    c, s = np.cos(angle), np.sin(angle)
    # forward matrix A = R @ Sh; inverse maps output pixels back to the input
    a11, a12, a21, a22 = c, c * shear - s, s, s * shear + c
    det = a11 * a22 - a12 * a21
    i11, i12, i21, i22 = a22 / det, -a12 / det, -a21 / det, a11 / det
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    ys, xs = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    px = xs[None] - cx - shift[:, 0, None, None]
    py = ys[None] - cy - shift[:, 1, None, None]
    sx = i11[:, None, None] * px + i12[:, None, None] * py + cx
    sy = i21[:, None, None] * px + i22[:, None, None] * py + cy
    sx = np.clip(sx, 0, W - 1)
    sy = np.clip(sy, 0, H - 1)
    x0 = np.minimum(np.floor(sx).astype(np.int64), W - 2) if W > 1 else np.zeros_like(sx, np.int64)
    y0 = np.minimum(np.floor(sy).astype(np.int64), H - 2) if H > 1 else np.zeros_like(sy, np.int64)
    fx = (sx - x0)[:, None].astype(x.dtype)
    fy = (sy - y0)[:, None].astype(x.dtype)
    x1 = np.minimum(x0 + 1, W - 1)
    y1 = np.minimum(y0 + 1, H - 1)
    flat = x.reshape(m, C, H * W)

    def gather(yi, xi):
        idx = (yi * W + xi).reshape(m, 1, H * W)
        return np.take_along_axis(flat, np.broadcast_to(idx, (m, C, H * W)), axis=2).reshape(m, C, H, W)

    top = gather(y0, x0) * (1 - fx) + gather(y0, x1) * fx
    bottom = gather(y1, x0) * (1 - fx) + gather(y1, x1) * fx
    return (top * (1 - fy) + bottom * fy).astype(x.dtype, copy=False)


__all__ = ["Augment"]
