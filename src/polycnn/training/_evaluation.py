"""evaluate and predict: eval mode, in batches, on checked inputs."""

from __future__ import annotations

import numpy as np

from .. import metrics as _metrics
from ..losses import cross_entropy, softmax
from ._inputs import _check_data, _check_images, _fraction, _positive


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def _restore_mode(model, was_training):
    model.train(was_training)


def evaluate(model, data, batch_size: int = 256, label_smoothing: float = 0.0) -> dict:
    """Loss and accuracy of ``model`` on ``data = (x, y)`` in eval mode, plus the confusion
    matrix (rows: true class) and per-class accuracy, as plain Python values. ``x`` holds the
    model's float dtype; uint8 pixels are converted as the training images were scaled when the
    model says how (a checkpoint written by ``polycnn train``), refused otherwise; NaN, infinite,
    complex and bool input is refused."""
    x, y = _check_data(model, data, "data", pixels=True)
    batch_size = _positive(batch_size, "batch_size")
    label_smoothing = _fraction(label_smoothing, "label_smoothing")
    be = model.backend
    was_training = model.training
    model.eval()
    total_loss, preds = 0.0, []
    try:
        for a, b in _batches(x.shape[0], batch_size):
            logits = model(x[a:b])
            loss, _ = cross_entropy(be, logits, y[a:b], label_smoothing)
            total_loss += loss * (b - a)
            preds.append(be.to_numpy(logits.argmax(axis=1)))
    finally:
        _restore_mode(model, was_training)
    pred = np.concatenate(preds)
    classes = model.output_shape(tuple(x.shape[1:]))[0]
    confusion = _metrics.confusion_matrix(pred, y, classes)
    return {"loss": total_loss / x.shape[0], "accuracy": _metrics.accuracy(pred, y),
            "n": int(x.shape[0]), "per_class_accuracy": _metrics.per_class_accuracy(confusion).tolist(),
            "confusion_matrix": confusion.tolist()}


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, classes) as a host array, in eval mode. ``x``: images of the
    model's float dtype; uint8 pixels are converted as the training images were scaled when the
    model says how (a checkpoint written by ``polycnn train``), refused otherwise; NaN, infinite,
    complex and bool input is refused."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"x must be an array of images (N, C, H, W), got {type(x).__name__}")
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x must be images (N, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
    batch_size = _positive(batch_size, "batch_size")
    x = _check_images(model, x, "x", pixels=True)
    be = model.backend
    was_training = model.training
    model.eval()
    out = []
    try:
        for a, b in _batches(x.shape[0], batch_size):
            out.append(be.to_numpy(softmax(be, model(x[a:b]))))
    finally:
        _restore_mode(model, was_training)
    return np.concatenate(out)
