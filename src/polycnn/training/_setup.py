"""fit's checks of its arguments and the state of a resumed run, before any step."""

from __future__ import annotations

import math

import numpy as np

from ..optim import SGD, Optimizer, optimizer_from_spec
from ._inputs import _check_data, _check_optimizer, _fraction, _positive
from ._state import History, _position_from


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
