"""Inputs to classify, read from files: ``.npy`` arrays shaped like the training images and
PNG/JPEG pictures, each checked (a regular file, its header, its size) before it is read."""

from __future__ import annotations

import os

import numpy as np

from . import limits
from .datasets.folders import read_image

#: file types :func:`read_input` takes
INPUT_EXTENSIONS = (".npy", ".png", ".jpg", ".jpeg")


def read_npy_images(path, channels: int | None, size: int | None, what: str = "input") -> np.ndarray:
    """A ``.npy`` array of images (H, W) when ``channels`` is 1, (C, H, W) or (N, C, H, W) as
    (N, C, H, W): float arrays as float64; integer, bool and complex arrays as stored, for
    :func:`polycnn.predict`'s rule (uint8 pixels converted with the model's stored scaling, the
    rest refused: a cast here would hand 0..255 values to a model that learnt 0..1). The
    header's shape and dtype are checked against the expected image shape (``channels`` or
    ``size`` None: any) and the memory limit before the data is read; a cut-off file raises
    ``ValueError``. ``what`` names the file in messages (e.g. "--input")."""
    path = os.fspath(path)
    limits.regular_file(path, what)
    with open(path, "rb") as f:
        shape, fortran, dtype = limits.npy_header(f, path, f"the {what}")
        if dtype.kind not in "biufc":
            raise TypeError(f"{path}: array of {dtype}, expected numbers")
        if len(shape) == 2 and channels in (1, None):
            full = (1, 1, *shape)
        elif len(shape) == 3:
            full = (1, *shape)
        else:
            full = shape
        want = tuple("CHW"[i] if v is None else v for i, v in enumerate((channels, size, size)))
        if len(full) != 4 or any(isinstance(w, int) and w != v for w, v in zip(want, full[1:])):
            image = ", ".join(map(str, want))
            raise ValueError(f"{path}: array of shape {shape}, expected ({image}) or (N, {image})"
                             " like the training images")
        # NOTE: the file's values, their float64 copy and the model's float32 copy
        need = limits.images_bytes(full[0], full[1:], dtype.itemsize + 8 + 4)
        limits.check_memory(path, f"a header of shape {shape} ({dtype})", need)
        a = limits.read_npy_data(f, shape, fortran, dtype, path, f"the {shape} array")
    a = a.reshape(full)
    return a.astype(np.float64) if dtype.kind == "f" else a


def read_input(path, channels: int, size: int) -> np.ndarray:
    """One input file (see the module doc) as (k, channels, size, size): float64 in 0..1 scale,
    or a ``.npy`` file's integer, bool or complex values as stored (see
    :func:`read_npy_images`)."""
    path = os.fspath(path)
    limits.regular_file(path, "input")
    ext = os.path.splitext(path)[1].lower()
    if ext not in INPUT_EXTENSIONS:
        raise ValueError(f"{path}: unsupported input type {ext or '(none)'}; use .npy, .png or .jpg")
    if ext == ".npy":
        return read_npy_images(path, channels, size)
    return (read_image(path, size, channels).astype(np.float64) / 255.0)[None]


__all__ = ["INPUT_EXTENSIONS", "read_npy_images", "read_input"]
