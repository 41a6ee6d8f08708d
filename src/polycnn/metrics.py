"""Classification metrics on host arrays: accuracy, confusion matrix, per-class accuracy."""

from __future__ import annotations

import numpy as np


def _pair(pred, labels):
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 1:
        raise ValueError(f"predictions {pred.shape} and labels {labels.shape} must be 1-D and equal")
    return pred, labels


def accuracy(pred, labels) -> float:
    pred, labels = _pair(pred, labels)
    return float((pred == labels).mean()) if labels.size else float("nan")


def confusion_matrix(pred, labels, classes: int) -> np.ndarray:
    """``m[i, j]`` = how many samples of true class i were predicted as j."""
    pred, labels = _pair(pred, labels)
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (labels.astype(np.int64), pred.astype(np.int64)), 1)
    return m


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each true class (NaN for a class with no samples)."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(confusion) / totals


__all__ = ["accuracy", "confusion_matrix", "per_class_accuracy"]
