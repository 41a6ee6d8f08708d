"""Argument checks of the backend ops that geometry does not cover: the labels of
cross-entropy and the glue ops' arrays. They live here, at the bottom layer, and run once, in the
public op of base.Backend; the model layer (losses, training) imports them from here."""

from __future__ import annotations

import numpy as np

from ..geometry import check_array


def check_labels(labels, n: int, classes: int) -> np.ndarray:
    """Integer class labels on the host, shape (n,), each in [0, classes); -> int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be {n} integer classes, shape ({n},), to match the logits,"
                         f" got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes}), got values from {labels.min()}"
                         f" to {labels.max()}")
    return labels.astype(np.int64, copy=False)


def check_float_array(x, name: str, array_type) -> None:
    """``x`` is an array of ``array_type``, float32 or float64, of any rank."""
    check_array(x, name, getattr(x, "ndim", None), array_type)


def check_like(a, name: str, shape, dtype, op: str) -> None:
    """``a`` has ``shape`` and ``dtype`` (those of the array it goes with in ``op``)."""
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    if np.dtype(a.dtype) != np.dtype(dtype):
        raise TypeError(f"{op}: {name} is {a.dtype}, expected {np.dtype(dtype)}")


def check_mask(keep, x_shape, array_type) -> None:
    """A dropout mask: a bool array of ``array_type`` of x's rank whose every axis is x's or 1
    (it broadcasts to x)."""
    if array_type is not None and not isinstance(keep, array_type):
        check_array(keep, "keep", None, array_type)  # raises the array-type error
    if np.dtype(keep.dtype) != np.bool_:
        raise TypeError(f"dropout_apply: keep must be a bool mask, got {keep.dtype}")
    if keep.ndim != len(x_shape) or any(k not in (1, s) for k, s in zip(keep.shape, x_shape)):
        raise ValueError(f"dropout_apply: keep has shape {tuple(keep.shape)}, which does not"
                         f" broadcast to x's {tuple(x_shape)} (each axis x's or 1)")


def check_in_place(a, name: str, op: str) -> None:
    """An array an op updates in place must be C-contiguous (a copy would be updated instead)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: {name} is updated in place and must be C-contiguous")


__all__ = ["check_float_array", "check_in_place", "check_labels", "check_like", "check_mask"]
