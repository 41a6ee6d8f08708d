"""Softmax cross-entropy on logits, checked and computed by the backend.

The backend's ``cross_entropy`` shifts each row by its maximum before ``exp`` (stable for large
logits) and returns the mean loss as a Python float and d(loss)/d(logits) on the backend.
"""

from __future__ import annotations

from .backends._checks import check_labels


def cross_entropy(backend, logits, labels, label_smoothing: float = 0.0):
    """-> (mean loss as a float, dlogits on the backend). ``label_smoothing`` in [0, 1) moves
    that much of the target's mass uniformly over all classes. The backend checks the logits,
    the labels (:func:`check_labels`, here for the model layer's own checks) and the smoothing."""
    return backend.cross_entropy(logits, labels, label_smoothing)


def softmax(backend, logits):
    """Row-wise softmax on the backend (shifted by the row maximum)."""
    xp = backend.xp
    e = xp.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


__all__ = ["cross_entropy", "softmax", "check_labels"]
