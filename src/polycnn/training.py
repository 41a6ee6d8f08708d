"""Training loop, evaluation and prediction, written once above the backend.

``fit`` shuffles each epoch, runs mini-batches (forward, softmax cross-entropy, backward,
optimiser step), evaluates the validation set, records a history and can save a checkpoint
after every epoch. Shuffling, augmentation and dropout-mask keys all draw from one host
``numpy.random.Generator``; its state is saved with the checkpoint, so a run resumed from epoch
k ends with exactly the weights of the uninterrupted run.

Ctrl-C (SIGINT) during ``fit`` stops it between two optimiser steps, never inside one: the first
SIGINT is noted and the current step finishes; the state after it (weights, optimiser, generator,
the position in the epoch) is saved to ``checkpoint`` and :class:`TrainingInterrupted` (a
``KeyboardInterrupt``) is raised. A run resumed from that file continues with the next step and
ends with exactly the weights of the uninterrupted run. A second Ctrl-C stops at once, saving
nothing new. (Only where ``fit`` runs in the main thread with Python's default SIGINT handler;
elsewhere a KeyboardInterrupt is not caught.)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import threading
import time

import numpy as np

from . import checkpoint as _checkpoint
from .augment import Augment
from . import metrics as _metrics
from .losses import check_labels, cross_entropy, softmax
from .optim import SGD, Optimizer, optimizer_from_spec

#: history keys; every one is a list with one entry per epoch
HISTORY_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_per_s",
                "seconds")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`fit` between two steps. ``path``: the checkpoint holding the state
    after the last finished step (None when ``fit`` had no checkpoint path); ``epoch``: the
    finished epochs; ``step``, ``steps``: the steps done of the next epoch, and its number of
    steps."""

    def __init__(self, path, epoch: int, step: int, steps: int):
        self.path, self.epoch, self.step, self.steps = path, epoch, step, steps
        where = (f"in epoch {epoch + 1} after step {step} of {steps}" if step
                 else f"after epoch {epoch}")
        saved = (f"the state after that {'step' if step else 'epoch'} is saved in {path}"
                 if path is not None else "nothing was saved (no checkpoint path)")
        super().__init__(f"interrupted {where}: {saved}")


class _DeferredInterrupt:
    """While active (main thread, Python's default SIGINT handler only), the first SIGINT sets
    ``requested``, read by ``fit`` between steps; a second raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = self.forced = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def defer(self):
        """A KeyboardInterrupt caught between steps (from a callback): stop at the next check,
        unless it was the second Ctrl-C's."""
        if self.forced:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _position_from(state: dict, n: int, batch_size: int, n_batches: int) -> dict | None:
    """The checked position inside an unfinished epoch of a resumed checkpoint, or None."""
    pos = state.get("position")
    if not pos:
        return None
    if (pos.get("n"), pos.get("batch_size"), pos.get("steps")) != (n, batch_size, n_batches):
        raise ValueError(f"{state.get('path')}: the run was interrupted at step {pos.get('step')}"
                         f" of {pos.get('steps')} in epoch {pos.get('epoch')}, training on"
                         f" {pos.get('n')} images in batches of {pos.get('batch_size')}; resume it"
                         f" with the same data and batch size (got {n} images in batches of"
                         f" {batch_size})")
    return pos


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
        """Epochs recorded after the best validation loss (0 when the last one is the best). A
        NaN or infinite validation loss is never an improvement: with no finite one yet, every
        recorded epoch counts."""
        if not self["epoch"]:
            return 0
        best = self.best_epoch()
        first = int(self["epoch"][0]) - 1
        return int(self["epoch"][-1]) - (first if best is None else best)


def _check_data(model, data, name: str, pixels: bool = False):
    """``data = (x, y)`` checked against ``model``: images (N, C, H, W) of the model's float
    dtype with no NaN or infinity, y integer labels in range; ``pixels`` (evaluate): uint8 x is
    converted as the model's training images were scaled, when the model says how."""
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
    if y.dtype.kind == "b" or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{name}: y must hold integer class labels, got {y.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    classes = model.output_shape(tuple(x.shape[1:]))
    if len(classes) != 1:
        raise ValueError(f"the model's output per sample has shape {classes}; a classifier must"
                         " end with (classes,)")
    x = _check_images(model, x, f"{name}: x", pixels)
    check_labels(y, y.shape[0], classes[0])
    return x, y


def _check_images(model, x, name: str, pixels: bool):
    """``x`` in the model's dtype, every value finite; see :func:`_input_dtype`."""
    x = _input_dtype(model, x, name, pixels)
    _check_finite(model, x, name)
    return x


def _input_dtype(model, x, name: str, pixels: bool):
    """Float input of the model's dtype passes unchanged. Complex, bool and other-float input
    raise. Integer input would be cast to the wrong scale (0..255 where the model learnt 0..1 or
    standardised values): with ``pixels`` (predict, evaluate), uint8 is converted as ``polycnn
    train`` scaled the model's training images (see :func:`_pixel_scaling`); anything else
    raises, saying how to convert it."""
    dt, want = np.dtype(x.dtype), model.dtype.name
    if dt.kind == "c":
        raise TypeError(f"{name} is complex ({dt.name}); the model takes real {want} images")
    if dt.kind == "b":
        raise TypeError(f"{name} is boolean; the model takes {want} images (a 0/1 mask meant as"
                        f" images: x.astype(np.{want}))")
    if dt.kind in "iu":
        scaling = _pixel_scaling(model) if pixels else None
        if scaling is not None and dt == np.uint8:
            return _from_pixels(model, x, name, scaling)
        if not pixels:
            how = ("fit trains on float images on the scale you choose: convert and scale them"
                   f" yourself, e.g. x.astype(np.{want}) / 255 for 8-bit pixels")
        elif scaling is None:
            how = ("this model does not say how its training images were scaled (only a checkpoint"
                   " written by `polycnn train` does): scale it as the training data was, e.g."
                   f" x.astype(np.{want}) / 255 for 8-bit pixels in 0..1")
        else:
            how = ("only uint8 (8-bit pixels 0..255) is converted with the model's stored"
                   f" scaling; pass uint8 pixels or {want} images scaled as the training data")
        raise TypeError(f"{name} is {dt.name} (integer pixels?) but the model takes {want}"
                        f" images; {how}")
    if dt.kind != "f":
        raise TypeError(f"{name} must hold {want} numbers, got {dt}")
    if dt != model.dtype:
        raise TypeError(f"{name} is {dt.name} but the model is {want};"
                        f" convert with x.astype(np.{want})")
    return x


def _pixel_scaling(model):
    """How the model's training images were made from 8-bit pixels, when the model knows: a
    checkpoint written by ``polycnn train`` (metadata ``run``) trained on pixels / 255, then
    standardised per channel with the run's ``normalize = (mean, std)`` when it has one.
    -> None (unknown) or (mean, std) (both None: pixels / 255 only)."""
    state = getattr(model, "training_state", None) or {}
    run = (state.get("metadata") or {}).get("run") if isinstance(state, dict) else None
    if not isinstance(run, dict) or "image_size" not in run:
        return None
    norm = run.get("normalize")
    if norm is None:
        return (None, None)
    try:
        mean, std = (np.asarray(v, dtype=np.float64) for v in norm)
    except (TypeError, ValueError):
        mean = std = None
    if mean is None or mean.ndim != 1 or mean.shape != std.shape or not np.isfinite(mean).all() \
            or not (np.isfinite(std) & (std > 0)).all():
        raise ValueError(f"{state.get('path', 'the model')}: the stored normalisation {norm!r:.80}"
                         " is not (mean, std) per channel with std > 0")
    return mean, std


def _from_pixels(model, x, name: str, scaling):
    """uint8 pixels -> the model's dtype as the training images: / 255, then (x - mean) / std
    (in the model's dtype, as the data loaders compute it)."""
    mean, std = scaling
    t = model.dtype.type
    if mean is not None and len(mean) != x.shape[1]:
        raise ValueError(f"{name} has {x.shape[1]} channels but the model's stored normalisation"
                         f" has {len(mean)} (shape {tuple(x.shape)})")
    host = x if isinstance(x, np.ndarray) else model.backend.to_numpy(x)
    out = host.astype(model.dtype) / t(255)
    if mean is not None:
        out = (out - mean.astype(model.dtype)[None, :, None, None]) / \
            std.astype(model.dtype)[None, :, None, None]
    return out


def _check_finite(model, x, name: str) -> None:
    """NaN or infinity anywhere in ``x`` (host or backend array) raises, saying how many and
    where the first is."""
    xp = np if isinstance(x, np.ndarray) else model.backend.xp
    # NOTE: in slices of about 4M values, so the mask stays small for a large data set
    step = max(1, (1 << 22) // max(1, int(np.prod(x.shape[1:]))))
    bad, first = 0, None
    for a in range(0, x.shape[0], step):
        ok = xp.isfinite(x[a:a + step])
        if bool(ok.all()):
            continue
        wrong = ~ok
        bad += int(wrong.sum())
        if first is None:
            at = [int(v) for v in xp.argwhere(wrong)[0]]
            first = (at[0] + a, *at[1:])
    if bad:
        value = x[first]
        raise ValueError(f"{name} holds {bad:,} NaN or infinite value(s) of {x.size:,}; the first"
                         f" is {float(value)} at index {first} (image {first[0]}); fix or drop"
                         " those images")


def _positive(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _fraction(value, name):
    """A finite number in [0, 1) (label smoothing); bools and strings are TypeErrors."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_optimizer(model, optimizer) -> None:
    """The optimiser must update exactly the model's parameters, each once, in the model's order
    (checkpoints store its state by that position): one made for another model, for a part of
    this one or with a parameter twice would train silently wrong."""
    mine, theirs = model.parameters(), list(optimizer.params)
    if len(theirs) == len(mine) and all(p is q for p, q in zip(theirs, mine)):
        return
    where = {}
    for i, layer in enumerate(model.layers):
        for pname, p in layer._params.items():
            where[id(p)] = f"layer {i} ({layer!r}) {pname}"
    counts = {}
    for p in theirs:
        counts[id(p)] = counts.get(id(p), 0) + 1
    foreign = [j for j, p in enumerate(theirs) if id(p) not in where]
    twice = [p for p in mine if counts.get(id(p), 0) > 1]
    missing = [p for p in mine if id(p) not in counts]
    if foreign:
        p = theirs[foreign[0]]
        what = (f"{len(foreign)} of them are not this model's (the first: optimiser parameter"
                f" {foreign[0]}, {p.name} of shape {tuple(p.data.shape)}; an optimiser made for"
                " another model or before the model was rebuilt?)")
    elif twice:
        what = f"it holds {where[id(twice[0])]} {counts[id(twice[0])]} times"
    elif missing:
        what = (f"it does not update {len(missing)} of them, the first {where[id(missing[0])]}"
                " (only what it holds is trained)")
    else:
        first = next(i for i, (p, q) in enumerate(zip(theirs, mine)) if p is not q)
        what = (f"it holds them in another order (at position {first}: {where[id(theirs[first])]},"
                f" where the model has {where[id(mine[first])]})")
    raise ValueError(f"optimizer: its parameters are not exactly this model's: {what}; it has"
                     f" {len(theirs)} parameters, the model {len(mine)}; create it with"
                     f" pc.{type(optimizer).__name__}(model.parameters(), ...)")


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


def fit(model, data, *, epochs: int = 1, batch_size: int = 64, optimizer: Optimizer | None = None,
        val=None, augment=None, seed: int | None = None, label_smoothing: float = 0.0,
        callback=None, checkpoint=None, resume: bool = False, metadata: dict | None = None,
        best_checkpoint=None, early_stopping: int | None = None, distributed=False,
        sync_bn: bool = False) -> History:
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
      generator, epoch, history and, after a Ctrl-C, the position in the epoch come from the
      checkpoint);
    - ``distributed``: True (or a :class:`polycnn.distributed.Communicator`) under ``mpiexec``:
      data-parallel training, see below; ``sync_bn``: BatchNorm statistics over the whole
      global batch instead of each rank's shard.

    A NaN or infinite loss raises :class:`TrainingDiverged`; the checkpoint of the last finished
    epoch is left as it was. Ctrl-C raises :class:`TrainingInterrupted` after saving the state
    after the last finished step to ``checkpoint`` (see the module doc).

    Data parallel (``distributed=True`` with several ranks): every rank calls ``fit`` with the
    same arguments and data. Rank 0's parameters are broadcast first; each global batch of
    ``batch_size`` images (divisible by the number of ranks) is split in rank order, and each
    rank reads, augments and runs only its shard, with the randomness (shuffle, augmentation,
    dropout keys) of the one-process run, so the run follows the one-process run up to
    rounding. Gradients are averaged in one packed buffer per step (in rank order unless the
    communicator is not deterministic); loss and accuracy are summed over the ranks; the
    validation set is split between the ranks. BatchNorm normalises with each rank's shard
    statistics unless ``sync_bn`` (the running statistics are averaged over the ranks after
    every epoch, so all ranks hold the same model). Only rank 0 calls ``callback`` and writes
    ``checkpoint`` and ``best_checkpoint``. An exception on one rank stops every rank (the
    others raise :class:`polycnn.distributed.RankFailed`); a checkpoint resumes on any number
    of ranks.
    """
    comm = _communicator(distributed)
    failure = None
    try:
        setup = _fit_setup(model, data, epochs, batch_size, optimizer, val, augment, seed,
                           label_smoothing, callback, checkpoint, resume, metadata,
                           best_checkpoint, early_stopping, sync_bn, comm)
    except Exception as exc:
        if comm is None:
            raise
        failure = exc
    if comm is not None:
        with comm.guard("fit's set-up"):
            if failure is not None:
                raise failure
        _same_run(comm, setup)
    x, y, optimizer, history, start, position, rng, n, n_batches, batch_size, epochs, \
        label_smoothing, early_stopping, state = setup
    be = model.backend
    if early_stopping is not None and start > 0 and \
            history.epochs_without_improvement() >= early_stopping:
        # NOTE: a resumed run that had already stopped early stays stopped
        history.stopped_early = start
        return history
    if comm is not None:
        comm.broadcast_arrays(be, [p.data for p in model.parameters()] + _buffers(model),
                              "the initial parameters")
    rank0 = comm is None or comm.rank == 0
    if not rank0:
        callback = None

    def save(path, **kw):
        # NOTE: the loss is checked before each update, so the last update of an epoch can make
        # the weights non-finite with every loss finite: such a state never replaces a checkpoint
        bad = [p.name for p in model.parameters() if not bool(be.xp.isfinite(p.data).all())]
        if bad:
            raise TrainingDiverged(
                f"the parameters {', '.join(bad)} became NaN or infinite (learning rate"
                f" {optimizer.current_lr:g}); {path} was not overwritten: lower the learning rate")
        if comm is None:
            _checkpoint.save(path, model, **kw)
            return
        with comm.guard(f"saving {path}"):
            if rank0:
                _checkpoint.save(path, model, **kw)

    with _DeferredInterrupt() as interrupt, _synced_batchnorm(model, comm if sync_bn else None):
        def stop_here(epoch, step, epoch_rng, lr, seen, loss_sum, correct, seconds):
            if checkpoint is not None and step:
                pos = {"epoch": epoch + 1, "step": step, "steps": n_batches, "n": n,
                       "batch_size": batch_size, "epoch_rng": epoch_rng, "lr": lr, "seen": seen,
                       "loss_sum": loss_sum, "correct": correct, "seconds": seconds}
                save(checkpoint, optimizer=optimizer, rng=rng, epoch=epoch, history=history,
                     metrics=history.last() or None, position=pos, **(metadata or {}))
            raise TrainingInterrupted(checkpoint, epoch, step, n_batches)

        run_t0 = time.perf_counter()
        steps_before = start * n_batches + (position["step"] if position else 0)
        model.train()
        for epoch in range(start, epochs):
            if position is not None:
                # NOTE: a run interrupted inside this epoch: its order from the generator's state
                # at the epoch's start, its sums so far; the generator itself is where it was
                epoch_rng = position["epoch_rng"]
                order = np.random.default_rng()
                order.bit_generator.state = epoch_rng
                order = order.permutation(n)
                lr, first = position["lr"], int(position["step"])
                seen, loss_sum, correct = int(position["seen"]), float(position["loss_sum"]), \
                    int(position["correct"])
                t0 = time.perf_counter() - float(position["seconds"])
                position = None
            else:
                epoch_rng = rng.bit_generator.state
                order = rng.permutation(n)
                lr, first = optimizer.current_lr, 0
                seen, loss_sum, correct = 0, 0.0, 0
                t0 = time.perf_counter()
            for bi, (a, b) in enumerate(_batches(n, batch_size)):
                if bi < first:
                    continue
                idx = order[a:b]
                if comm is None:
                    xb = x[idx]
                    if augment is not None:
                        xb = augment(xb, rng)
                    logits = model(xb)
                    loss, dlogits = cross_entropy(be, logits, y[idx], label_smoothing)
                    step_correct = None
                    stop_now = False
                else:
                    loss, step_correct, stop_now = _distributed_step(
                        model, comm, x, y, idx, augment, rng, label_smoothing,
                        interrupt.requested)
                if not math.isfinite(loss):
                    saved = checkpoint is not None and (epoch > start or resume)
                    kept = (f"; the last good checkpoint (epoch {epoch}) is kept at {checkpoint}"
                            if saved else "")
                    raise TrainingDiverged(
                        f"the loss became {loss} at epoch {epoch + 1}, batch {bi + 1}/{n_batches}"
                        f" (learning rate {optimizer.current_lr:g}); lower the learning rate{kept}")
                if comm is None:
                    # NOTE: counted before the backward pass: the loss has just waited for the
                    # device, and a copy to the host after the backward would wait for all of it
                    # (on a GPU the next batch's host work then overlaps this step's backward
                    # and update)
                    correct += int((be.to_numpy(logits.argmax(axis=1)) == y[idx]).sum())
                    model.backward(dlogits, input_grad=False)
                else:
                    correct += step_correct
                optimizer.step()
                seen += b - a
                loss_sum += loss * (b - a)
                if callback is not None:
                    now = time.perf_counter()
                    elapsed = now - t0
                    eta = (n_batches - bi - 1) * elapsed / (bi + 1)
                    per_batch = (now - run_t0) / (epoch * n_batches + bi + 1 - steps_before)
                    try:
                        callback({"kind": "batch", "epoch": epoch + 1, "epochs": epochs,
                                  "batch": bi + 1, "batches": n_batches, "loss": loss_sum / seen,
                                  "accuracy": correct / seen,
                                  "images_per_s": seen / elapsed if elapsed > 0 else float("nan"),
                                  "eta_s": eta,
                                  "run_eta_s": eta + (epochs - epoch - 1) * n_batches * per_batch})
                    except KeyboardInterrupt:
                        interrupt.defer()   # NOTE: the step is finished: stop as for SIGINT
                if (interrupt.requested if comm is None else stop_now):
                    stop_here(epoch, bi + 1, epoch_rng, lr, seen, loss_sum, correct,
                              time.perf_counter() - t0)
            be.synchronize()
            seconds = time.perf_counter() - t0
            entry = {"epoch": epoch + 1, "loss": loss_sum / seen, "accuracy": correct / seen,
                     "val_loss": float("nan"), "val_accuracy": float("nan"), "lr": lr,
                     "images_per_s": seen / seconds, "seconds": seconds}
            if comm is not None and not sync_bn:
                comm.allreduce_mean(be, _buffers(model), "BatchNorm statistics")
            if val is not None:
                if comm is None:
                    v = evaluate(model, val, label_smoothing=label_smoothing)
                else:
                    v = _evaluate_shared(model, val, label_smoothing, comm)
                entry["val_loss"], entry["val_accuracy"] = v["loss"], v["accuracy"]
            for k in HISTORY_KEYS:
                history[k].append(entry[k])
            best = val is not None and history.best_epoch() == epoch + 1
            stop = early_stopping is not None and epoch + 1 < epochs and \
                history.epochs_without_improvement() >= early_stopping
            saved = dict(optimizer=optimizer, rng=rng, epoch=epoch + 1, history=history,
                         metrics=entry, **(metadata or {}))
            if checkpoint is not None:
                save(checkpoint, **saved)
            if best and best_checkpoint is not None:
                save(best_checkpoint, **saved)
            if callback is not None:
                try:
                    callback({"kind": "epoch", "epochs": epochs, **entry, "best": best,
                              "stop": stop})
                except KeyboardInterrupt:
                    interrupt.defer()
            if stop:
                history.stopped_early = epoch + 1
                break
            requested = interrupt.requested if comm is None else \
                bool(comm.sum_host([float(interrupt.requested)], "Ctrl-C")[0])
            if requested and epoch + 1 < epochs:
                stop_here(epoch + 1, 0, None, None, 0, 0.0, 0, 0.0)   # saved above already
    return history


def _fit_setup(model, data, epochs, batch_size, optimizer, val, augment, seed, label_smoothing,
               callback, checkpoint, resume, metadata, best_checkpoint, early_stopping, sync_bn,
               comm):
    """fit's checks and resumed state, before any step (on every rank: see fit)."""
    x, y = _check_data(model, data, "data")
    if val is not None:
        _check_data(model, val, "val")
    label_smoothing = _fraction(label_smoothing, "label_smoothing")
    if seed is not None:
        if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int >= 0 or None, got {seed!r}")
        if seed < 0:
            raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
    if not isinstance(resume, (bool, np.bool_)):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if not isinstance(sync_bn, (bool, np.bool_)):
        raise TypeError(f"sync_bn must be True or False, got {sync_bn!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict of JSON-ready values, got {type(metadata).__name__}")
    for name, path in (("checkpoint", checkpoint), ("best_checkpoint", best_checkpoint)):
        # NOTE: checked now, not when the first epoch's work is done and the save fails
        if path is not None and not isinstance(path, (str, bytes)) and not hasattr(path, "__fspath__"):
            raise TypeError(f"{name} must be a file path (str or os.PathLike), got {path!r:.60}")
    if early_stopping is not None:
        early_stopping = _positive(early_stopping, "early_stopping")
    for name, wanted in (("early_stopping", early_stopping), ("best_checkpoint", best_checkpoint)):
        if wanted is not None and val is None:
            raise ValueError(f"{name} needs validation data: pass val=(x_val, y_val)")
    epochs = _positive(epochs, "epochs")
    batch_size = _positive(batch_size, "batch_size")
    if comm is not None and batch_size % comm.size:
        raise ValueError(f"batch_size {batch_size} is the global batch, split equally between the"
                         f" {comm.size} ranks: it must be a multiple of {comm.size}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r:.60}")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be a pc.Augment (or a callable (x, rng) -> x), got {augment!r:.60}")

    history, start, position, state = History(), 0, None, None
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
    _check_optimizer(model, optimizer)
    n = x.shape[0]
    n_batches = math.ceil(n / batch_size)
    if resume:
        position = _position_from(state, n, batch_size, n_batches)
    return (x, y, optimizer, history, start, position, model.rng, n, n_batches, batch_size, epochs,
            label_smoothing, early_stopping, state)


# ---- data parallel (see fit and polycnn.distributed) ----------------------------------------
def _communicator(distributed):
    """None for a one-process run; the communicator of a data-parallel run of several ranks."""
    if distributed is False or distributed is None:
        return None
    from . import distributed as _dist

    if distributed is True:
        comm = _dist.world()
    elif isinstance(distributed, _dist.Communicator):
        comm = distributed
    else:
        raise TypeError(f"distributed must be True, False or a pc.distributed.Communicator, got"
                        f" {distributed!r:.60}")
    return comm if comm.size > 1 else None


def _same_run(comm, setup) -> None:
    """Every rank must train the same run: same data size, batch, epochs, starting point and
    generator state; else each raises, naming what differs."""
    x, y, optimizer, history, start, position, rng, n, n_batches, batch_size, epochs = setup[:11]
    # NOTE: plain ints: the ranks exchange this as JSON
    mine = {"images": int(n), "image shape": [int(d) for d in x.shape[1:]],
            "batch_size": int(batch_size), "epochs": int(epochs), "first epoch": int(start),
            "step": int(position["step"]) if position else 0,
            "generator": hashlib.sha256(str(rng.bit_generator.state).encode()).hexdigest()[:16],
            "parameters": [[int(d) for d in p.shape] for p in optimizer.params]}
    every = comm.allgather_objects(mine, "comparing the ranks' runs")
    for key in mine:
        values = [m[key] for m in every]
        if any(v != values[0] for v in values):
            raise ValueError(f"the {comm.size} ranks were given different runs: {key} is "
                             + ", ".join(f"{v!r:.40} on rank {r}" for r, v in enumerate(values))
                             + "; start every rank with the same arguments and data")


def _buffers(model) -> list:
    """Non-trained state (BatchNorm running statistics), updated in place."""
    return [a for layer in model.layers for a in getattr(layer, "_buffers", {}).values()]


def _dropout_layers(model) -> list:
    from .layers import Dropout

    return [layer for layer in model.layers if isinstance(layer, Dropout)]


def _distributed_step(model, comm, x, y, idx, augment, rng, label_smoothing, interrupted):
    """This rank's shard of one global batch: forward and backward on its rows, with the
    augmentation and dropout draws the whole batch gets in a one-process run; then one
    exchange of (failed, loss, correct, Ctrl-C) and the mean of the gradients.
    -> (the global batch's mean loss, its correct predictions, whether to stop here)."""
    be = model.backend
    m = idx.shape[0]
    lo, hi = m * comm.rank // comm.size, m * (comm.rank + 1) // comm.size
    params = model.parameters()
    failure, loss, correct = None, 0.0, 0
    try:
        sidx = idx[lo:hi]
        xb = x[sidx]
        if augment is None:
            pass
        elif isinstance(augment, Augment):
            xb = augment(xb, rng, rows=slice(lo, hi), batch=m)
        else:   # NOTE: a callable of its own: the whole batch, so its draws are the same
            xb = augment(x[idx], rng)[lo:hi]
        dropouts = _dropout_layers(model)
        if hi > lo:
            for layer in dropouts:
                layer.sample_offset = lo
            try:
                logits = model(xb)
            finally:
                for layer in dropouts:
                    layer.sample_offset = 0
            loss, dlogits = cross_entropy(be, logits, y[sidx], label_smoothing)
            correct = int((be.to_numpy(logits.argmax(axis=1)) == y[sidx]).sum())
            if m % comm.size:
                # NOTE: unequal shards (the last batch): each rank's mean loss weighted by its
                # share, before the backward pass, so synchronised BatchNorm sees it too
                dlogits = dlogits * dlogits.dtype.type((hi - lo) * comm.size / m)
            model.backward(dlogits, input_grad=False)
        else:
            # NOTE: an empty shard (a last batch smaller than the ranks): the draws of the
            # dropout keys the forward pass would make, and no gradient
            for layer in dropouts:
                if layer.p:
                    rng.integers(0, 1 << 64, dtype=np.uint64)
            for p in params:
                p.grad = be.xp.zeros(p.data.shape, dtype=p.data.dtype)
    except Exception as exc:
        failure = exc
    rows = comm.gather_host([failure is not None, loss * (hi - lo), correct, bool(interrupted)],
                            "a training step")
    if rows[:, 0].any():
        comm.raise_failure(failure, "a training step")
        raise failure
    total = rows[0].copy()
    for r in range(1, rows.shape[0]):
        total += rows[r]
    mean_loss = float(total[1]) / m
    if not math.isfinite(mean_loss):
        return mean_loss, int(total[2]), False
    buf = comm.pack(be, [p.grad for p in params])
    comm.reduce_packed(be, buf)
    at = 0
    for p in params:
        p.grad = buf[at:at + p.data.size].reshape(p.data.shape)
        at += p.data.size
    return mean_loss, int(total[2]), bool(total[3])


def _evaluate_shared(model, val, label_smoothing, comm) -> dict:
    """Validation loss and accuracy with the set split between the ranks."""
    xv, yv = val
    n = len(yv)
    lo, hi = n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size
    with comm.guard("evaluating the validation set"):
        part = [0.0, 0.0]
        if hi > lo:
            v = evaluate(model, (xv[lo:hi], yv[lo:hi]), label_smoothing=label_smoothing)
            part = [v["loss"] * (hi - lo), round(v["accuracy"] * (hi - lo))]
    total = comm.sum_host(part, "validation metrics")
    return {"loss": float(total[0]) / n, "accuracy": float(total[1]) / n}


@contextlib.contextmanager
def _synced_batchnorm(model, comm):
    """With a communicator: the model's BatchNorm2d layers normalise with the statistics of the
    whole global batch while the block runs (see polycnn.distributed.sync_batchnorm)."""
    if comm is None:
        yield
        return
    from . import distributed as _dist
    from .layers import BatchNorm2d

    layers = [layer for layer in model.layers if isinstance(layer, BatchNorm2d)]
    for layer in layers:
        _dist.sync_batchnorm(layer, comm)
    try:
        yield
    finally:
        for layer in layers:
            _dist.sync_batchnorm(layer, None)


__all__ = ["fit", "evaluate", "predict", "History", "TrainingDiverged", "TrainingInterrupted",
           "HISTORY_KEYS"]
