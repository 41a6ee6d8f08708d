"""Softmax cross-entropy on logits, checked here and computed by the backend.

The backend's ``cross_entropy`` shifts each row by its maximum before ``exp`` (stable for large
logits) and returns the mean loss as a Python float and d(loss)/d(logits) on the backend.
"""

from __future__ import annotations

import numpy as np


def check_labels(labels, n: int, classes: int) -> np.ndarray:
    """Integer class labels on the host, shape (n,), each in [0, classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the logits, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be in [0, {classes}), got values from {labels.min()}"
                         f" to {labels.max()}")
    return labels.astype(np.int64, copy=False)


def cross_entropy(backend, logits, labels, label_smoothing: float = 0.0):
    """-> (mean loss as a float, dlogits on the backend). ``label_smoothing`` in [0, 1) moves
    that much of the target's mass uniformly over all classes."""
    if getattr(logits, "ndim", None) != 2:
        raise ValueError(f"logits must be 2-D (N, classes), got shape {tuple(getattr(logits, 'shape', ()))}")
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    n, k = logits.shape
    labels = check_labels(labels, n, k)
    return backend.cross_entropy(logits, labels, float(label_smoothing))


def softmax(backend, logits):
    """Row-wise softmax on the backend (shifted by the row maximum)."""
    xp = backend.xp
    e = xp.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


__all__ = ["cross_entropy", "softmax", "check_labels"]
