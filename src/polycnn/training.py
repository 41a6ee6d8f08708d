"""Training loop, evaluation and prediction, written once above the backend.

``fit`` shuffles each epoch, runs mini-batches (forward, softmax cross-entropy, backward,
optimiser step), evaluates the validation set, records a history and can save a checkpoint
after every epoch. Shuffling, augmentation and dropout-mask keys all draw from one host
``numpy.random.Generator``; its state is saved with the checkpoint, so a run resumed from epoch
k ends with exactly the weights of the uninterrupted run.
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import checkpoint as _checkpoint
from . import metrics as _metrics
from .losses import check_labels, cross_entropy, softmax
from .optim import SGD, Optimizer, optimizer_from_spec

#: history keys; every one is a list with one entry per epoch
HISTORY_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s",
                "seconds")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class History(dict):
    """Per-epoch lists: epoch, loss, accuracy, val_loss, val_accuracy, lr, images_per_s, seconds
    (val_* are NaN without validation data; images_per_s and seconds are timings, the rest is
    determined by the seed). ``stopped_early`` is the epoch after which early stopping ended the
    run (None when it ran to the end)."""

    def __init__(self, data=None):
        super().__init__({k: [] for k in HISTORY_KEYS})
        self.stopped_early = None
        if data:
            for k in HISTORY_KEYS:
                self[k] = [float("nan") if v is None else v for v in data.get(k, [])]

    def last(self) -> dict:
        return {k: v[-1] for k, v in self.items() if v}

    def best_epoch(self):
        """The epoch with the lowest validation loss (the first of equals), or None."""
        losses = np.asarray(self["val_loss"], dtype=float)
        if not np.isfinite(losses).any():
            return None
        return int(self["epoch"][int(np.nanargmin(np.where(np.isfinite(losses), losses, np.nan)))])

    def epochs_without_improvement(self) -> int:
        """Epochs recorded after the best validation loss (0 when the last one is the best)."""
        best = self.best_epoch()
        return 0 if best is None else int(self["epoch"][-1]) - best


def _check_data(model, data, name: str):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a pair (x, y) of arrays, got {type(data).__name__}")
    x, y = data
    x = np.asarray(x) if not hasattr(x, "shape") else x
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name}: x must be images (N, C, H, W), got shape {tuple(x.shape)}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: y must have shape ({x.shape[0]},) to match x {tuple(x.shape)},"
                         f" got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name}: y must hold integer class labels, got {y.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if np.dtype(x.dtype) != model.dtype:
        raise TypeError(f"{name}: x is {np.dtype(x.dtype).name} but the model is {model.dtype.name};"
                        f" convert with x.astype(np.{model.dtype.name})")
    classes = model.output_shape(tuple(x.shape[1:]))
    if len(classes) != 1:
        raise ValueError(f"the model's output per sample has shape {classes}; a classifier must"
                         " end with (classes,)")
    check_labels(y, y.shape[0], classes[0])
    return x, y


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def _restore_mode(model, was_training):
    model.train(was_training)


def evaluate(model, data, batch_size: int = 256, label_smoothing: float = 0.0) -> dict:
    """Loss and accuracy of ``model`` on ``data = (x, y)`` in eval mode, plus the confusion
    matrix (rows: true class) and per-class accuracy, as plain Python values."""
    x, y = _check_data(model, data, "data")
    batch_size = _positive(batch_size, "batch_size")
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
    """Class probabilities (N, classes) as a host array, in eval mode."""
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x must be images (N, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
    batch_size = _positive(batch_size, "batch_size")
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


def fit(model, data, *, epochs: int = 1, batch_size: int = 64, optimizer: Optimizer | None = None,
        val=None, augment=None, seed: int | None = None, label_smoothing: float = 0.0,
        callback=None, checkpoint=None, resume: bool = False, metadata: dict | None = None,
        best_checkpoint=None, early_stopping: int | None = None) -> History:
    """Train ``model`` on ``data = (x, y)`` (host arrays) until ``epochs`` epochs are done.

    - ``optimizer``: default ``SGD(lr=0.01, momentum=0.9)``;
    - ``val``: (x, y) evaluated after each epoch; ``augment``: a :class:`~polycnn.Augment`;
    - ``seed``: reseeds the generator for shuffling, augmentation and dropout (None: keep the
      model's generator);
    - ``callback(event)``: called with a dict after every batch (``event["kind"] == "batch"``,
      with ``eta_s``, the seconds this epoch still needs at its rate so far, and ``run_eta_s``,
      the same for the whole run) and every epoch (``"epoch"``, with the history entry, ``best``:
      whether its validation loss is the lowest so far, and ``stop``: whether early stopping
      ends the run after it);
    - ``checkpoint``: a path written after every epoch (with ``metadata``);
    - ``best_checkpoint``: a path written after every epoch whose validation loss is the lowest
      so far (needs ``val``);
    - ``early_stopping``: a patience: stop when the validation loss has not improved for that
      many epochs in a row (needs ``val``; None: run every epoch). ``history.stopped_early``
      then holds the last epoch;
    - ``resume``: continue the run stored in a model from :func:`polycnn.load` (optimiser,
      generator, epoch and history come from the checkpoint).

    A NaN or infinite loss raises :class:`TrainingDiverged`; the checkpoint of the last finished
    epoch is left as it was.
    """
    x, y = _check_data(model, data, "data")
    if val is not None:
        _check_data(model, val, "val")
    if early_stopping is not None:
        early_stopping = _positive(early_stopping, "early_stopping")
    for name, wanted in (("early_stopping", early_stopping), ("best_checkpoint", best_checkpoint)):
        if wanted is not None and val is None:
            raise ValueError(f"{name} needs validation data: pass val=(x_val, y_val)")
    epochs = _positive(epochs, "epochs")
    batch_size = _positive(batch_size, "batch_size")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r:.60}")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a pc.Augment (or a callable (x, rng) -> x), got {augment!r:.60}")

    history, start = History(), 0
    if resume:
        state = getattr(model, "training_state", None)
        if not state or state.get("epoch") is None:
            raise ValueError("resume=True needs a model loaded with pc.load() from a checkpoint"
                             " that fit() wrote")
        if state.get("optimizer") is None:
            raise ValueError(f"{state.get('path')}: the checkpoint has no optimiser state to resume")
        if optimizer is None:
            optimizer = optimizer_from_spec(state["optimizer"], model.parameters())
        optimizer.load_state(state["optimizer"], state["optimizer_arrays"], model.backend)
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        model.set_rng(rng)
        start = int(state["epoch"])
        history = History(state.get("history"))
        if start >= epochs:
            raise ValueError(f"the checkpoint already has {start} epochs; ask for more than"
                             f" {start} (got epochs={epochs})")
    else:
        if optimizer is None:
            optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
        if seed is not None:
            model.set_rng(np.random.default_rng(seed))
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a pc.SGD, pc.Adam or pc.AdamW, got {optimizer!r:.60}")
    rng = model.rng
    be = model.backend
    n = x.shape[0]
    n_batches = math.ceil(n / batch_size)

    if early_stopping is not None and start > 0 and \
            history.epochs_without_improvement() >= early_stopping:
        # NOTE: a resumed run that had already stopped early stays stopped
        history.stopped_early = start
        return history
    run_t0 = time.perf_counter()
    model.train()
    for epoch in range(start, epochs):
        order = rng.permutation(n)
        lr = optimizer.current_lr
        seen, loss_sum, correct = 0, 0.0, 0
        t0 = time.perf_counter()
        for bi, (a, b) in enumerate(_batches(n, batch_size)):
            idx = order[a:b]
            xb = x[idx]
            if augment is not None:
                xb = augment(xb, rng)
            logits = model(xb)
            loss, dlogits = cross_entropy(be, logits, y[idx], label_smoothing)
            if not math.isfinite(loss):
                saved = checkpoint is not None and (epoch > start or resume)
                kept = f"; the last good checkpoint (epoch {epoch}) is kept at {checkpoint}" if saved else ""
                raise TrainingDiverged(
                    f"the loss became {loss} at epoch {epoch + 1}, batch {bi + 1}/{n_batches}"
                    f" (learning rate {optimizer.current_lr:g}); lower the learning rate{kept}")
            # NOTE: counted before the backward pass: the loss has just waited for the device,
            # and a copy to the host after the backward would wait for all of it (on a GPU the
            # next batch's host work then overlaps this step's backward and update)
            correct += int((be.to_numpy(logits.argmax(axis=1)) == y[idx]).sum())
            model.backward(dlogits, input_grad=False)
            optimizer.step()
            seen += b - a
            loss_sum += loss * (b - a)
            if callback is not None:
                now = time.perf_counter()
                elapsed = now - t0
                eta = (n_batches - bi - 1) * elapsed / (bi + 1)
                per_batch = (now - run_t0) / ((epoch - start) * n_batches + bi + 1)
                callback({"kind": "batch", "epoch": epoch + 1, "epochs": epochs, "batch": bi + 1,
                          "batches": n_batches, "loss": loss_sum / seen, "accuracy": correct / seen,
                          "images_per_s": seen / elapsed if elapsed > 0 else float("nan"),
                          "eta_s": eta, "run_eta_s": eta + (epochs - epoch - 1) * n_batches * per_batch})
        be.synchronize()
        seconds = time.perf_counter() - t0
        entry = {"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen,
                 "val_loss": float("nan"), "val_accuracy": float("nan"), "lr": lr,
                 "images_per_s": seen / seconds, "seconds": seconds}
        if val is not None:
            v = evaluate(model, val, label_smoothing=label_smoothing)
            entry["val_loss"], entry["val_accuracy"] = v["loss"], v["accuracy"]
        for k in HISTORY_KEYS:
            history[k].append(entry[k])
        best = val is not None and history.best_epoch() == epoch + 1
        stop = early_stopping is not None and epoch + 1 < epochs and \
            history.epochs_without_improvement() >= early_stopping
        saved = dict(optimizer=optimizer, rng=rng, epoch=epoch + 1, history=history, metrics=entry,
                     **(metadata or {}))
        if checkpoint is not None:
            _checkpoint.save(checkpoint, model, **saved)
        if best and best_checkpoint is not None:
            _checkpoint.save(best_checkpoint, model, **saved)
        if callback is not None:
            callback({"kind": "epoch", "epochs": epochs, **entry, "best": best, "stop": stop})
        if stop:
            history.stopped_early = epoch + 1
            break
    return history


__all__ = ["fit", "evaluate", "predict", "History", "TrainingDiverged", "HISTORY_KEYS"]
