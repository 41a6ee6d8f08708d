"""Inputs to classify, read from files: ``.npy`` arrays shaped like the training images and
PNG/JPEG pictures, each checked (a regular file, its header, its size) before it is read."""

from __future__ import annotations

import os

import numpy as np

from . import limits
from .datasets_real import read_image

#: file types :func:`read_input` takes
INPUT_EXTENSIONS = (".npy", ".png", ".jpg", ".jpeg")


def read_npy_images(path, channels: int, size: int) -> np.ndarray:
    """A ``.npy`` array of images (H, W) when ``channels`` is 1, (C, H, W) or (N, C, H, W) as
    float64 (N, C, H, W). The header's shape and dtype are checked against the expected image
    shape and the memory limit before the data is read; a cut-off file raises ``ValueError``."""
    path = os.fspath(path)
    limits.regular_file(path, "input")
    image = (channels, size, size)
    with open(path, "rb") as f:
        shape, fortran, dtype = limits.npy_header(f, path, "the input")
        if dtype.kind not in "iuf":
            raise TypeError(f"{path}: array of {dtype}, expected numbers")
        if len(shape) == 2 and channels == 1:
            full = (1, 1, *shape)
        elif len(shape) == 3:
            full = (1, *shape)
        else:
            full = shape
        if len(full) != 4 or full[1:] != image:
            raise ValueError(f"{path}: array of shape {shape}, expected ({channels}, {size}, {size})"
                             f" or (N, {channels}, {size}, {size}) like the training images")
        # NOTE: the file's values, their float64 copy and the model's float32 copy
        need = limits.images_bytes(full[0], image, dtype.itemsize + 8 + 4)
        limits.check_memory(path, f"a header of shape {shape} ({dtype})", need)
        a = limits.read_npy_data(f, shape, fortran, dtype, path, f"the {shape} array")
    return a.reshape(full).astype(np.float64)


def read_input(path, channels: int, size: int) -> np.ndarray:
    """One input file (see the module doc) as float64 (k, channels, size, size) in 0..1 scale."""
    path = os.fspath(path)
    limits.regular_file(path, "input")
    ext = os.path.splitext(path)[1].lower()
    if ext not in INPUT_EXTENSIONS:
        raise ValueError(f"{path}: unsupported input type {ext or '(none)'}; use .npy, .png or .jpg")
    if ext == ".npy":
        return read_npy_images(path, channels, size)
    return (read_image(path, size, channels).astype(np.float64) / 255.0)[None]


__all__ = ["INPUT_EXTENSIONS", "read_npy_images", "read_input"]
